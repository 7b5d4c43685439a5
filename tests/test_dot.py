"""DOT: its update against a NumPy two-momentum step, the Distiller handing it the task
and distillation gradients apart (and ordinary optimisers the sum, as before),
mixed precision, MirroredStrategy, save/load and the --optimizer=dot setting."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras import settings, training
from kdkeras.methods import KD, FitNet
from kdkeras.methods.base import StepContext
from kdkeras.split_gradients import split_packer
from kdkeras.training import DOT
from tests.helpers import TINY, needs_fashion_mnist, run_recipe, tiny_cnn, tiny_data
from tests.test_distribute import run_check

LR, M, DELTA, WD = 0.1, 0.9, 0.075, 0.01


def reference_dot(params, task_grads, distill_grads, lrs, weight_decay, exclude=()):
    """mdistiller's `dot()` in NumPy, steps in a row: per step, a parameter's task
    buffer starts as a copy of (g_t + wd p) and then decays with m - delta when the
    distillation gradient also reaches it, m otherwise; its distillation buffer
    decays with m + delta, or m (with the weight decay) when only that part
    reaches it; p -= lr * task_buf, then p -= lr * distill_buf."""
    m_task, m_kd = M - DELTA, M + DELTA
    params = [p.astype("float64").copy() for p in params]
    task_buf, kd_buf = [None] * len(params), [None] * len(params)
    for step, lr in enumerate(lrs):
        for i, p in enumerate(params):
            gt, gd = task_grads[step][i], distill_grads[step][i]
            wd = 0.0 if i in exclude else weight_decay
            if gt is not None:
                d_p = gt + wd * p
                if task_buf[i] is None:
                    task_buf[i] = d_p.copy()
                else:
                    task_buf[i] = (m_task if gd is not None else (m_task + m_kd) / 2) * task_buf[i] + d_p
                p -= lr * task_buf[i]
        for i, p in enumerate(params):
            gt, gd = task_grads[step][i], distill_grads[step][i]
            wd = 0.0 if i in exclude else weight_decay
            if gd is not None:
                d_p = gd if gt is not None else gd + wd * p
                if kd_buf[i] is None:
                    kd_buf[i] = d_p.copy()
                else:
                    kd_buf[i] = (m_kd if gt is not None else (m_task + m_kd) / 2) * kd_buf[i] + d_p
                p -= lr * kd_buf[i]
    return params


def test_update_equals_the_reference_two_momentum_step_over_several_steps():
    rng = np.random.default_rng(0)
    shapes = [(3, 2), (4,), (2, 2), (3,), (2,)]  # both, task only, distill only, neither, both (no decay)
    reach = [(True, True), (True, False), (False, True), (False, False), (True, True)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    steps = 4
    task = [[rng.normal(size=s).astype("float32") if r[0] else None for s, r in zip(shapes, reach)]
            for _ in range(steps)]
    distill = [[rng.normal(size=s).astype("float32") if r[1] else None for s, r in zip(shapes, reach)]
               for _ in range(steps)]
    # the rate changes after two steps: it scales the update, not what the buffers hold
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [LR, LR / 4])
    opt = DOT(schedule, momentum=M, delta=DELTA, weight_decay=WD, decay="l2")
    variables = [keras.Variable(p) for p in start]
    opt.exclude_from_weight_decay(var_list=[variables[4]])
    for step in range(steps):
        packed = opt.pack_split_gradients(task[step], distill[step], variables)
        opt.apply_gradients(zip(packed, variables))
    want = reference_dot(start, task, distill, [LR, LR, LR / 4, LR / 4], WD, exclude=(4,))
    for i, (v, w) in enumerate(zip(variables, want)):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-6, err_msg=f"variable {i}")
    np.testing.assert_array_equal(variables[3].numpy(), start[3])  # no gradient: untouched
    assert int(opt.iterations) == steps
    # the two parts differ from their sum given to SGD-like momentum: the split matters
    summed = DOT(schedule, momentum=M, delta=DELTA, weight_decay=WD, decay="l2")
    twin = [keras.Variable(p) for p in start[:1]]
    for step in range(steps):
        summed.apply_gradients([(task[step][0] + distill[step][0], twin[0])])
    assert np.abs(twin[0].numpy() - variables[0].numpy()).max() > 1e-3


def test_an_ordinary_gradient_is_sgd_with_l2_decay_in_the_momentum():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(5,)).astype("float32")
    grads = [rng.normal(size=(5,)).astype("float32") for _ in range(3)]
    var = keras.Variable(start)
    opt = DOT(LR, momentum=M, delta=DELTA, weight_decay=WD, decay="l2")
    for g in grads:
        opt.apply_gradients([(g, var)])
    p, buf = start.astype("float64"), np.zeros(5)
    for g in grads:  # torch.optim.SGD(momentum=M, weight_decay=WD)
        buf = M * buf + g + WD * p
        p = p - LR * buf
    np.testing.assert_allclose(var.numpy(), p, rtol=1e-5)


def test_decoupled_decay_on_an_ordinary_gradient_equals_keras_sgd():
    # the default: --optimizer=dot differs from the SGD run it replaces in its momenta only
    rng = np.random.default_rng(2)
    start = rng.normal(size=(6,)).astype("float32")
    grads = [rng.normal(size=(6,)).astype("float32") for _ in range(4)]
    dot_var, sgd_var = keras.Variable(start), keras.Variable(start)
    dot, sgd = DOT(LR, momentum=M, delta=DELTA, weight_decay=0.05), keras.optimizers.SGD(LR, momentum=M, weight_decay=0.05)
    for g in grads:
        dot.apply_gradients([(g, dot_var)])
        sgd.apply_gradients([(g, sgd_var)])
    np.testing.assert_allclose(dot_var.numpy(), sgd_var.numpy(), rtol=1e-5, atol=1e-6)
    p, buf = start.astype("float64"), np.zeros(6)
    for g in grads:  # decay first, outside the momentum
        p = p - LR * 0.05 * p
        buf = M * buf + g
        p = p - LR * buf
    np.testing.assert_allclose(dot_var.numpy(), p, rtol=1e-5)


def test_decoupled_decay_with_both_parts_stays_out_of_the_momenta():
    rng = np.random.default_rng(3)
    start = rng.normal(size=(3,)).astype("float32")
    parts = [(rng.normal(size=(3,)).astype("float32"), rng.normal(size=(3,)).astype("float32")) for _ in range(3)]
    var = keras.Variable(start)
    opt = DOT(LR, momentum=M, delta=DELTA, weight_decay=0.05)
    opt.build([var])
    for gt, gd in parts:
        opt.apply_gradients(list(zip(opt.pack_split_gradients([gt], [gd], [var]), [var])))
    p, bt, bd = start.astype("float64"), np.zeros(3), np.zeros(3)
    for gt, gd in parts:
        p = p - LR * 0.05 * p
        bt, bd = (M - DELTA) * bt + gt, (M + DELTA) * bd + gd
        p = p - LR * (bt + bd)
    np.testing.assert_allclose(var.numpy(), p, rtol=1e-5)
    assert DOT.from_config(opt.get_config()).decay == "decoupled"


@pytest.mark.parametrize("kwargs, match", [
    ({"decay": "coupled"}, "decay.*'decoupled', 'l2'.*'coupled'"),
    ({"delta": 0.2, "momentum": 0.9}, r"delta.*\[0.0, 0.09999.*0.2"),
    ({"momentum": 1.5}, "momentum.*1.5"),
    ({"delta": "big"}, "'big'"),
    ({"clipnorm": 1.0}, "clipnorm=1.0"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2"),
])
def test_bad_settings_are_refused_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DOT(0.1, **kwargs)


def test_config_round_trip_and_momenta():
    opt = DOT(0.2, momentum=0.8, delta=0.05, weight_decay=1e-4)
    assert opt.task_momentum == pytest.approx(0.75) and opt.distill_momentum == pytest.approx(0.85)
    back = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(back) is DOT
    assert (back.momentum, back.delta, back.weight_decay) == (0.8, 0.05, pytest.approx(1e-4))


# ------------------------------------------------------------------ the Distiller's side

def make(student_loss_weight=0.5, methods=None):
    keras.utils.set_random_seed(0)
    teacher = tiny_cnn(width=8, name="teacher", batchnorm=False)
    student = tiny_cnn(width=4, name="student", batchnorm=False)
    methods = methods if methods is not None else [
        FitNet(teacher_layers=["relu2"], student_layers=["relu2"], weight=2.0)]
    return kdkeras.Distiller(teacher, student, methods, student_loss_weight=student_loss_weight)


def separate_gradients(d, x, y):
    """The task and distillation parts' gradients, each from its own tape."""
    t_out = {k: tf.stop_gradient(v) for k, v in d._teacher_tap(x, training=False).items()}
    context = StepContext(training=True, index=None, epoch=d.epoch, epochs=d._fit_epochs)
    variables = d.trainable_variables
    grads = []
    for part in ("task", "distill"):
        with tf.GradientTape() as tape:
            s_out = d._student_tap(x, training=True)
            if part == "task":
                ce = keras.losses.sparse_categorical_crossentropy(y, s_out["logits"], from_logits=True)
                loss = d.student_loss_weight * tf.reduce_mean(ce)
            else:
                loss = sum(m.weight * m.compute_loss(t_out, s_out, y, context) for m in d.methods)
        grads.append([None if g is None else g.numpy() for g in tape.gradient(loss, variables)])
    return variables, grads[0], grads[1]


class SplitSpy(keras.optimizers.SGD):
    """Records the two gradients the Distiller hands over; applies their sum."""

    def pack_split_gradients(self, task, distill, variables):
        self.seen = ([None if g is None else g.numpy() for g in task],
                     [None if g is None else g.numpy() for g in distill])
        return [b if a is None else a if b is None else a + b for a, b in zip(task, distill)]


def test_the_distiller_hands_the_task_and_distillation_gradients_apart():
    d = make()
    x, y = tiny_data(8)
    variables, want_task, want_distill = separate_gradients(d, x, y)
    d.compile(optimizer=SplitSpy(0.1), run_eagerly=True)
    assert split_packer(d.optimizer) is not None
    d.train_on_batch(x, y)
    task, distill = d.optimizer.seen
    regressor = {id(v) for v in d.methods[0].regressors[0].trainable_variables}
    head = {id(v) for v in d.student.get_layer("logits").trainable_variables}
    assert regressor and head
    for v, gt, gd, wt, wdist in zip(variables, task, distill, want_task, want_distill):
        if id(v) in regressor:  # a connector: the distillation's alone
            assert gt is None and wt is None and gd is not None, v.path
        elif id(v) in head:  # after FitNet's tap: the task's alone
            assert gd is None and wdist is None and gt is not None, v.path
        else:
            assert gt is not None and gd is not None, v.path
        for got, want in ((gt, wt), (gd, wdist)):
            if want is not None:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=v.path)
    assert not any(id(v) in {id(w) for w in d.teacher.weights} for v in variables)


def test_an_ordinary_optimiser_gets_the_summed_gradient_as_before():
    d = make()
    x, y = tiny_data(8)
    variables, task, distill = separate_gradients(d, x, y)
    before = [v.numpy().copy() for v in variables]
    opt = keras.optimizers.SGD(0.1)
    assert split_packer(opt) is None
    d.compile(optimizer=opt)
    d.train_on_batch(x, y)
    for v, b, gt, gd in zip(variables, before, task, distill):
        g = (0 if gt is None else gt) + (0 if gd is None else gd)
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g, rtol=1e-4, atol=1e-6, err_msg=v.path)


def test_dot_through_the_distiller_equals_the_reference_over_steps():
    d = make()
    x, y = tiny_data(8)
    d.compile(optimizer=DOT(LR, momentum=M, delta=DELTA, weight_decay=WD, decay="l2"))
    start = [v.numpy().copy() for v in d.trainable_variables]
    tasks, distills = [], []
    for _ in range(3):
        _, task, distill = separate_gradients(d, x, y)
        tasks.append(task)
        distills.append(distill)
        d.train_on_batch(x, y)
        # the reference from the same start and the gradients at each step's weights
        want = reference_dot(start, tasks, distills, [LR] * len(tasks), WD)
        for v, w in zip(d.trainable_variables, want):
            np.testing.assert_allclose(v.numpy(), w, rtol=1e-4, atol=1e-5, err_msg=v.path)


def test_mixed_precision_goes_through_the_loss_scale_wrapper():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        d = make(methods=[KD(temperature=4.0),
                          FitNet(teacher_layers=["relu2"], student_layers=["relu2"], weight=2.0)])
        d.compile(optimizer=DOT(0.05, weight_decay=WD))
        assert isinstance(d.optimizer, keras.optimizers.LossScaleOptimizer)
        assert split_packer(d.optimizer) is not None
        x, y = tiny_data(16)
        logs = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0])
        dot = d.optimizer.inner_optimizer
        regressor = d.methods[1].regressors[0].trainable_variables[0]
        index = dot._get_variable_index(regressor)
        assert np.abs(dot.distill_momentums[index].numpy()).max() > 0  # the connector's buffer
        assert np.abs(dot.task_momentums[index].numpy()).max() == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_save_and_load_a_distiller_compiled_with_dot(tmp_path):
    d = make()
    x, y = tiny_data(8)
    d.compile(optimizer=DOT(0.05, momentum=0.8, delta=0.1, weight_decay=WD))
    d.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "d.keras")
    d.save(path)
    back = keras.models.load_model(path)
    assert type(back.optimizer) is DOT
    assert (back.optimizer.momentum, back.optimizer.delta) == (0.8, 0.1)
    for a, b in zip(d.optimizer.variables, back.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # both go on alike from the restored buffers
    d.train_on_batch(x, y)
    back.train_on_batch(x, y)
    for a, b in zip(d.trainable_variables, back.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_mirrored_dot_steps_match_one_device():
    # VID's regressors reach only the distillation loss; two steps, so the momenta count
    out = run_check([["kd", {"temperature": 4.0, "weight": 0.7}], ["vid", {"weight": 0.5}]], "dot")
    assert out["replicas"] == 2 and out["max_weight_change"] > 1e-3
    assert abs(out["single_loss"] - out["mirrored_loss"]) < 1e-5 * max(1.0, abs(out["single_loss"]))
    assert out["max_weight_diff"] < 1e-5 * max(1.0, out["max_weight_change"])
    assert out["max_weight_diff_online"] < 1e-5 * max(1.0, out["max_weight_change"])
    for name, (a, b) in out["terms"].items():
        assert abs(a - b) < 1e-5 * max(1.0, abs(a)), name


# ------------------------------------------------------------------ the recipes' setting

def test_optimizer_dot_with_its_delta_setting():
    opt = training.make_optimizer("dot", 0.1, total_steps=10, schedule="constant", momentum=0.9,
                                  weight_decay=5e-4, dot_delta=0.05)
    assert type(opt) is DOT and opt.delta == 0.05 and opt.weight_decay == pytest.approx(5e-4)
    assert training.make_optimizer("dot", 0.1).delta == training.dot.DEFAULT_DELTA
    names = [f.name for f, _ in settings.flag_fields(training.TrainConfig, "train")]
    assert "dot_delta" in names and "dot" in training.OPTIMIZERS
    assert training.TrainConfig(optimizer="dot", dot_delta=0.05).dot_delta == 0.05
    with pytest.raises(ValueError, match="dot_delta=0.05 applies to optimizer='dot' only.*'sgd'"):
        training.TrainConfig(optimizer="sgd", dot_delta=0.05)


@pytest.fixture
def made_optimizers(monkeypatch) -> list:
    """Every optimiser the recipes' `make_optimizer` builds, in order."""
    from kdkeras.training import fitting

    made, make_optimizer = [], fitting.make_optimizer

    def spy(*args, **kwargs):
        made.append(make_optimizer(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fitting, "make_optimizer", spy)
    return made


@pytest.mark.e2e
@needs_fashion_mnist
def test_the_distill_recipe_trains_with_optimizer_dot(tmp_path, made_optimizers):
    made = made_optimizers
    m = run_recipe("distill", "--teacher=none", "--method=lsr", "--optimizer=dot", "--dot_delta=0.05",
                   f"--output_dir={tmp_path}", *TINY).metrics
    assert np.isfinite(m["history"]["loss"][0])
    (opt,) = made
    assert type(opt) is DOT and opt.delta == 0.05 and int(opt.iterations) == 2
    assert all(np.abs(b.numpy()).max() > 0 for b in opt.distill_momentums)  # LSR reaches every weight
    recorded = json.loads((tmp_path / "run_config.json").read_text())
    assert (recorded["optimizer"], recorded["dot_delta"]) == ("dot", 0.05)


def test_the_student_alone_trains_with_sgd_under_optimizer_dot(tmp_path, made_optimizers):
    """One loss has no distillation gradient for DOT to keep apart: --baseline's student
    alone (and any plain model) trains with SGD at the same momentum and weight decay."""
    made = made_optimizers
    config = training.TrainConfig(optimizer="dot", dot_delta=0.05, momentum=0.8, weight_decay=1e-3)
    alone = config.one_loss()
    assert (alone.optimizer, alone.dot_delta, alone.momentum, alone.weight_decay) == ("sgd", None, 0.8, 1e-3)
    assert training.TrainConfig(optimizer="adamw").one_loss().optimizer == "adamw"
    m = run_recipe("distill", "--teacher=none", "--method=lsr", "--optimizer=dot", "--dot_delta=0.05",
                   "--baseline", f"--output_dir={tmp_path}", *TINY).metrics
    dot, alone = made
    assert type(dot) is DOT and type(alone) is keras.optimizers.SGD and m["baseline_optimizer"] == "sgd"
    assert alone.momentum == pytest.approx(0.9) and alone.weight_decay == pytest.approx(dot.weight_decay)


def _own_methods():
    from kdkeras.methods.registry import method_class, registered_methods

    return [n for n in registered_methods() if method_class(n).__module__.startswith("kdkeras.")]


@pytest.mark.parametrize("name", _own_methods())
def test_one_dot_step_with_every_method(name):
    """Any method: the step runs, every trained weight moves and stays finite. Eager
    (a traced step costs seconds per method, ~3 minutes over the registry): the traced
    DOT step is the tests' above (train_on_batch against the reference, mixed
    precision, save/load, MirroredStrategy) and each method's own tests trace it."""
    keras.utils.set_random_seed(0)
    # FSP and KDSVD compare equal widths; OFD reads the margins of the teacher's BN before its tap
    teacher = tiny_cnn(width=4 if name in ("fsp", "kdsvd") else 8, name="teacher", batchnorm=name == "ofd")
    student = tiny_cnn(width=4, name="student")
    if name == "deit":  # a student with a distillation token
        student = kdkeras.models.build_vit((8, 8, 1), 3, dim=8, depth=1, heads=2, distillation_token=True,
                                           name="student")
    kwargs = {"crd": {"num_examples": 16}, "ofd": {"teacher_layers": ["bn1"], "student_layers": ["bn1"]}}.get(name, {})
    d = kdkeras.Distiller(teacher, student, [kdkeras.methods.get(name, **kwargs)], student_loss_weight=0.5)
    d.compile(optimizer=DOT(0.05, weight_decay=WD), run_eagerly=True)
    x, y = tiny_data(16)
    before = [v.numpy().copy() for v in d.trainable_variables]
    inputs = {"image": x, "index": np.arange(16)}
    if d.methods[0].requires_strong_view:  # MLKD: a second view of each image
        inputs["image_strong"] = x[:, :, ::-1]
    d.fit(inputs, y, batch_size=8, epochs=1, verbose=0)
    for v, b in zip(d.trainable_variables, before):
        assert np.all(np.isfinite(v.numpy())), v.path
    moved = [not np.array_equal(v.numpy(), b) for v, b in zip(d.trainable_variables, before)]
    assert sum(moved) >= len(d.student.trainable_variables), name
