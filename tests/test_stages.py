"""Multi-stage training (init stage, then main stage, resume) and gradient taps."""

import json
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras.methods import KD, Method, register_method
from kdkeras.stages import Stage, run_stages
from tests.helpers import StageSpy, all_changed, same, tiny_cnn, tiny_data


@register_method("test_connector_l2")
class ConnectorL2(Method):
    """Test-only: a Dense connector maps the student's embedding to the teacher's."""

    def build_parts(self, teacher_shapes, student_shapes):
        self.connector = keras.layers.Dense(teacher_shapes["embedding"][-1], name="connector")
        self.connector.build(student_shapes["embedding"])

    def compute_loss(self, teacher, student, y, context=None):
        return keras.ops.mean((self.connector(student["embedding"]) - teacher["embedding"]) ** 2)


def _weights(ws):
    return [w.numpy().copy() for w in ws]


def _changed(before, ws):
    return [not np.array_equal(b, w.numpy()) for b, w in zip(before, ws)]


def test_init_stage_trains_parts_only_then_main_stage_trains_student(tmp_path):
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    conn = ConnectorL2(teacher_layers=["embedding"], student_layers=["embedding"])
    x, y = tiny_data(32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    s0 = _weights(student.trainable_weights)
    stages = [
        Stage("init", [conn], epochs=1, student_loss_weight=0.0, train_student=False),
        Stage("main", [conn, KD()], epochs=1, student_loss_weight=0.1, frozen=[conn]),
    ]
    spy = StageSpy(lambda: (_weights(student.trainable_weights), _weights(conn.weights)))
    seen = spy.seen
    t0 = _weights(teacher.weights)
    hist = run_stages(teacher, student, stages, ds, optimizer_fn=lambda s: keras.optimizers.Adam(1e-2),
                      output_dir=str(tmp_path), callbacks=[spy], verbose=0)
    assert set(hist) == {"init", "main"} and "test_connector_l2" in hist["init"]
    s_init, c_init = seen["stage_init"]
    s_main, c_main = seen["stage_main"]
    assert not any(_changed(s0, [keras.Variable(v) for v in s_init]))  # student frozen in init
    assert all(not np.array_equal(a, b) for a, b in zip(s_init, s_main))  # trained in main
    assert all(np.array_equal(a, b) for a, b in zip(c_init, c_main))  # connector frozen in main
    for a, w in zip(t0, teacher.weights):
        np.testing.assert_array_equal(a, w.numpy())
    assert student.trainable and conn.trainable  # restored for the caller

    # A rerun skips finished stages and restores their weights into fresh objects.
    student2 = tiny_cnn(width=4, name="student")
    conn2 = ConnectorL2(teacher_layers=["embedding"], student_layers=["embedding"])
    stages2 = [
        Stage("init", [conn2], epochs=1, student_loss_weight=0.0, train_student=False),
        Stage("main", [conn2, KD()], epochs=1, student_loss_weight=0.1, frozen=[conn2]),
    ]
    seen.clear()
    run_stages(teacher, student2, stages2, ds, output_dir=str(tmp_path), callbacks=[spy], verbose=0)
    assert not seen  # nothing trained again
    for a, w in zip(s_main, student2.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())


def test_stage_with_nothing_to_train_is_refused():
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    x, y = tiny_data(8)
    with pytest.raises(ValueError, match="nothing to train"):
        run_stages(teacher, student, [Stage("kd_only", [KD()], 1, train_student=False)], (x, y))


@register_method("test_input_grad")
class InputGradL2(Method):
    """Test-only: squared difference of the input gradients of both networks."""

    gradient_keys = ("input",)

    def compute_loss(self, teacher, student, y, context=None):
        return keras.ops.sum((teacher["grad:input"] - student["grad:input"]) ** 2)


def test_gradient_taps_match_an_independent_tape_and_train_second_order():
    teacher, student = tiny_cnn(width=8, name="teacher", batchnorm=False), tiny_cnn(width=4, name="student", batchnorm=False)
    d = kdkeras.Distiller(teacher, student, [InputGradL2()], student_loss_weight=0.0)
    x, y = tiny_data(8)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    def input_grad(net):
        xt = tf.constant(x)
        with tf.GradientTape() as t:
            t.watch(xt)
            loss = ce(y, net(xt, training=False))
        return t.gradient(loss, xt).numpy()

    expected = np.sum((input_grad(teacher) - input_grad(student)) ** 2)
    d.compile(optimizer=keras.optimizers.SGD(1.0))
    logs = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["test_input_grad"], expected, rtol=1e-4)
    before = _weights(student.trainable_weights)
    d.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert all(_changed(before, student.trainable_weights))  # a second-order gradient reached them
    after = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)["test_input_grad"]
    assert after < logs["test_input_grad"]


def test_default_stages_follow_the_papers():
    from kdkeras.methods import AB, FT, KD
    from kdkeras.stages import default_stages

    ft, ab, kd = FT(), AB(), KD()
    stages = default_stages([ft, ab, kd], init_epochs=2, epochs=5, student_loss_weight=0.1)
    assert [s.name for s in stages] == ["ft_paraphraser", "init", "main"]
    para, init, main = stages
    assert para.methods == [ft.paraphraser_term] and not para.train_student
    assert para.student_loss_weight == 0.0 and para.epochs == 2
    assert init.methods == [ab] and init.train_student and init.epochs == 2 and init.student_loss_weight == 0.0
    assert main.methods == [ft, kd] and main.epochs == 5 and main.student_loss_weight == 0.1
    assert {id(m) for m in main.frozen} == {id(ft.paraphraser_term), id(ab)}  # what the init stages trained


def test_ft_paraphraser_trains_in_its_stage_then_stays_fixed_while_the_translator_trains(tmp_path):
    from kdkeras.methods import FT
    from kdkeras.stages import default_stages

    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    ft = FT(teacher_layers=["relu2"], student_layers=["relu2"])
    x, y = tiny_data(16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def parts():
        translators = [w for t in ft.translators for w in t.trainable_weights]
        return _weights(ft.paraphraser_term.weights), _weights(translators), _weights(student.trainable_weights)

    spy = StageSpy(parts)
    seen = spy.seen
    stages = default_stages([ft], init_epochs=1, epochs=1, student_loss_weight=1.0)
    hist = run_stages(teacher, student, stages, ds, optimizer_fn=lambda s: keras.optimizers.Adam(1e-2),
                      output_dir=str(tmp_path), callbacks=[spy], verbose=0)
    assert set(hist["ft_paraphraser"]) >= {"ft", "loss"}  # the term logged under FT's name
    p0, _, s0 = seen["stage_ft_paraphraser_begin"]
    p1, _, s1 = seen["stage_ft_paraphraser"]
    assert all_changed(p0, p1) and same(s0, s1)  # the paraphraser trained, the student not
    p2, t2, s2 = seen["stage_main_begin"]
    p3, t3, s3 = seen["stage_main"]
    assert same(p1, p2) and same(p2, p3)  # FT read it frozen
    assert all_changed(t2, t3) and all_changed(s2, s3)  # and trained its translator and the student
    assert all(v.trainable for v in ft.paraphrasers[0].weights)  # flags restored for the caller


class _CrashIn(keras.callbacks.Callback):
    """Raise when epoch `at` of the stage named `stage` begins (its earlier epochs backed up)."""

    def __init__(self, stage, at):
        super().__init__()
        self.stage, self.at = stage, at

    def on_epoch_begin(self, epoch, logs=None):
        if self.model.name == f"stage_{self.stage}" and epoch == self.at:
            raise KeyboardInterrupt(f"simulated crash in {self.stage}, epoch {epoch}")


class _Clock:
    """`time.perf_counter` as the runs read it, pushed forward by `jump` seconds
    at the end of each stage's first epoch (`_JumpFirstEpoch`), not slept."""

    def __init__(self):
        self.real, self.offset = time.perf_counter, 0.0

    def __call__(self):
        return self.real() + self.offset


class _JumpFirstEpoch(keras.callbacks.Callback):
    """Push `clock` forward by `seconds` at the end of each stage's first epoch,
    before its time is recorded (the callbacks given run before the recorder)."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.clock.offset += self.seconds


def _ft_run(output_dir, callbacks=()):
    """FT (a paraphraser stage of 2 epochs, then 2 main epochs with KD) on fresh
    tiny networks of fixed initial weights and one fixed batch order."""
    from kdkeras.methods import FT
    from kdkeras.stages import default_stages

    keras.utils.set_random_seed(0)
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    methods = [FT(teacher_layers=["relu2"], student_layers=["relu2"]), KD()]
    stages = default_stages(methods, init_epochs=2, epochs=2, student_loss_weight=0.5)
    x, y = tiny_data(32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    histories = run_stages(teacher, student, stages, ds, ds, lambda s: keras.optimizers.SGD(0.05, momentum=0.9),
                           str(output_dir), callbacks=list(callbacks), verbose=0)
    return histories, [w.numpy() for w in student.weights]


@pytest.fixture(scope="module")
def uninterrupted_ft_run(tmp_path_factory):
    """One uninterrupted FT run, the reference of every resumed one."""
    return _ft_run(tmp_path_factory.mktemp("ft_whole"))


#: seconds the crashed process's clock jumps in each stage's first epoch
JUMP = 1000.0


@pytest.mark.parametrize("stage, at", [("ft_paraphraser", 1), ("main", 1)])
def test_a_run_resumed_mid_stage_reports_each_stages_whole_history(tmp_path, uninterrupted_ft_run, stage,
                                                                    at, monkeypatch):
    whole, weights = uninterrupted_ft_run
    assert set(whole) == {"ft_paraphraser", "main"}
    clock = _Clock()
    monkeypatch.setattr(time, "perf_counter", clock)  # what run_stages and its history recorder read
    with pytest.raises(KeyboardInterrupt):
        _ft_run(tmp_path / "crashed", [_JumpFirstEpoch(clock, JUMP), _CrashIn(stage, at)])
    assert (tmp_path / "crashed" / "stages").exists()
    resumed, resumed_weights = _ft_run(tmp_path / "crashed")
    for name, epochs in (("ft_paraphraser", 2), ("main", 2)):
        assert set(resumed[name]) == set(whole[name])
        for key, values in whole[name].items():
            assert len(values) == epochs and len(resumed[name][key]) == epochs, (name, key)
            np.testing.assert_allclose(resumed[name][key], values, rtol=1e-5, err_msg=f"{name}.{key}")
    # the crashed process's time counts: its stages' first epochs took JUMP s more, the resumed one's none
    ran_before = ["ft_paraphraser"] + (["main"] if stage == "main" else [])
    for name in ("ft_paraphraser", "main"):
        low = JUMP if name in ran_before else 0.0
        assert low < resumed.seconds[name] < low + 120, (name, resumed.seconds)
    assert resumed.total_seconds == pytest.approx(sum(resumed.seconds.values()))
    for a, b in zip(weights, resumed_weights):  # the finished stage kept, the running one resumed
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    done = json.loads((tmp_path / "crashed" / "stages" / "01_main" / "done.json").read_text())
    assert len(done["history"]["loss"]) == 2  # the record a rerun reads back
    assert not list((tmp_path / "crashed" / "stages").rglob("history.json"))  # records merged, then dropped
