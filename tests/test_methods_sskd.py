"""SSKD: each part of the term against NumPy on fixed tensors, the rotated copies,
where gradients go in each stage, the Distiller's row split, a two-stage fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras import batch_copies
from kdkeras.cache import CacheError, check_cacheable
from kdkeras.methods import KD, SSKD, StepContext
from kdkeras.methods.self_supervised import kept_rows, rotations
from kdkeras.stages import default_stages, run_stages
from tests.helpers import TINY, StageSpy, all_changed, needs_fashion_mnist, run_recipe, same, tiny_cnn, tiny_data

B, K, D_T, D_S = 4, 5, 6, 3


# -- NumPy, following the reference's steps (rows: B upright, then 3B rotated, copy after copy) --
def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_kl_batchmean(log_q, p):
    """PyTorch's `kl_div(log_q, p, reduction="batchmean")` (NaN for no rows)."""
    return float(np.sum(p * (np.log(p) - log_q)) / len(p)) if len(p) else float("nan")


def np_kept(scores, target, ratio):
    """The reference's error-level ranking: the target's position in the descending sort,
    the rows sorted by it, the correct ones plus int(wrong * ratio) kept, in row order."""
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argmax(order == target[:, None], axis=1)
    wrong = np.count_nonzero(rank)
    keep = len(rank) - wrong + int(wrong * ratio)
    return np.sort(np.argsort(rank, kind="stable")[:keep])


def np_head(x, head):
    w1, b1, w2, b2 = (np.asarray(v, "float64") for v in head.weights)
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def np_cos(aug, upright):
    a = aug / np.linalg.norm(aug, axis=1, keepdims=True)
    u = upright / np.linalg.norm(upright, axis=1, keepdims=True)
    return a @ u.T


def np_sskd(z_t, z_s, v_t, v_s, y, m):
    """(kd, tf, ss) unweighted, with the kept row counts of tf and ss."""
    up, rot = slice(0, B), slice(B, None)
    kd_t, tf_t, ss_t = m.temperature, m.tf_temperature, m.ss_temperature
    kd = np_kl_batchmean(np_log_softmax(z_s[up] / kd_t), np.exp(np_log_softmax(z_t[up] / kd_t))) * kd_t ** 2
    labels = np.tile(y, 3)
    aug_p = np.exp(np_log_softmax(z_t[rot] / tf_t))
    tf_rows = np_kept(aug_p, labels, m.tf_ratio)
    tf_ = np_kl_batchmean(np_log_softmax(z_s[rot] / tf_t)[tf_rows], aug_p[tf_rows]) * tf_t ** 2
    sim_t, sim_s = np_cos(v_t[rot], v_t[up]), np_cos(v_s[rot], v_s[up])
    ss_rows = np_kept(sim_t, np.tile(np.arange(B), 3), m.ss_ratio)
    ss = np_kl_batchmean(np_log_softmax(sim_s / ss_t)[ss_rows],
                         np.exp(np_log_softmax(sim_t / ss_t))[ss_rows]) * ss_t ** 2
    return kd, tf_, ss, len(tf_rows), len(ss_rows)


def fixed_sskd(**kwargs):
    m = SSKD(teacher_layers=["embedding"], student_layers=["embedding"], **kwargs)
    m.build_from_taps({"logits": (None, K), "embedding": (None, D_T)},
                      {"logits": (None, K), "embedding": (None, D_S)})
    rng = np.random.default_rng(3)
    tensors = dict(z_t=rng.normal(size=(4 * B, K)) * 2, z_s=rng.normal(size=(4 * B, K)),
                   f_t=rng.normal(size=(4 * B, D_T)), f_s=rng.normal(size=(4 * B, D_S)))
    y = rng.integers(0, K, B).astype("int32")
    return m, {k: v.astype("float32") for k, v in tensors.items()}, y


@pytest.mark.parametrize("ratios", [(1.0, 0.75), (0.5, 0.5), (0.0, 0.0)])
def test_each_part_equals_numpy_with_the_wrong_rows_filtered(ratios):
    m, t, y = fixed_sskd(temperature=3.0, tf_temperature=2.0, ss_temperature=0.5, kd_weight=0.9,
                         tf_weight=2.7, ss_weight=10.0, tf_ratio=ratios[0], ss_ratio=ratios[1])
    out = m.compute_loss({"logits": t["z_t"], "embedding": t["f_t"]}, {"logits": t["z_s"], "embedding": t["f_s"]}, y)
    v_t, v_s = np_head(t["f_t"].astype("float64"), m.teacher_head), np_head(t["f_s"].astype("float64"), m.student_head)
    kd, tf_, ss, n_tf, n_ss = np_sskd(t["z_t"].astype("float64"), t["z_s"].astype("float64"), v_t, v_s, y, m)
    if ratios[0] < 1:
        assert n_tf < 3 * B and n_ss < 3 * B  # the filter drops rows here
    if ratios[0] == 0.5:
        assert n_tf and n_ss
    np.testing.assert_allclose(float(out["kd"]), 0.9 * kd, rtol=1e-5)
    # no row kept: the reference's batch mean of nothing is NaN, kdkeras' term 0
    np.testing.assert_allclose(float(out["tf"]), 2.7 * tf_ if n_tf else 0.0, rtol=1e-5)
    np.testing.assert_allclose(float(out["ss"]), 10.0 * ss if n_ss else 0.0, rtol=1e-4)


def test_the_teacher_head_term_is_the_ce_of_the_raw_similarities():
    m, t, y = fixed_sskd()
    term = m.teacher_head_term
    assert term.head is m.teacher_head and term.name == m.name
    v = np_head(t["f_t"].astype("float64"), term.head)
    sim = np_cos(v[B:], v[:B])
    want = -np.mean(np_log_softmax(sim)[np.arange(3 * B), np.tile(np.arange(B), 3)])
    got = term.compute_loss({"logits": t["z_t"], "embedding": t["f_t"]}, {}, y)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_kept_rows_keep_the_best_ranked_wrong_rows_first():
    z = np.array([[3, 1, 0], [0, 1, 3], [0, 3, 1], [1, 0, 3], [0, 2, 1]], "float32")
    target = np.zeros(5, "int32")  # ranks 0, 2, 2, 1, 2: four wrong rows
    for ratio, want in [(1.0, [0, 1, 2, 3, 4]), (0.75, [0, 3, 1, 2]), (0.5, [0, 3, 1]), (0.0, [0])]:
        got = np.flatnonzero(np.asarray(kept_rows(z, target, ratio)))
        np.testing.assert_array_equal(got, sorted(want))
        np.testing.assert_array_equal(got, np_kept(z, target, ratio))


def test_rotations_are_np_rot90_of_each_image_and_need_square_images():
    x = np.arange(2 * 3 * 3 * 2, dtype="float32").reshape(2, 3, 3, 2)
    for k, copy in enumerate(rotations(x), start=1):
        np.testing.assert_array_equal(np.asarray(copy), np.stack([np.rot90(img, k) for img in x]))
    stacked = batch_copies.stack(x, SSKD())
    assert stacked.shape == (8, 3, 3, 2)
    np.testing.assert_array_equal(np.asarray(stacked[2:4]), np.rot90(x, 1, axes=(1, 2)))
    with pytest.raises(ValueError, match=r"square NHWC images; got a batch of shape \(2, 3, 4, 1\)"):
        rotations(np.zeros((2, 3, 4, 1), "float32"))


def _grads(loss_fn, groups):
    variables = [v for g in groups for v in g]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([v.value for v in variables])
        loss = loss_fn()
    grads = tape.gradient(loss, [v.value for v in variables])
    out, i = [], 0
    for g in groups:
        out.append(grads[i:i + len(g)])
        i += len(g)
    return out


def _nonzero(grads):
    return grads and all(g is not None and np.any(np.asarray(g) != 0) for g in grads)


def test_init_stage_gradients_reach_the_teacher_head_only_and_main_stage_the_student_side_only():
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    sskd = SSKD()
    init, main = default_stages([sskd], init_epochs=1, epochs=1, student_loss_weight=0.1)
    assert (init.name, init.methods, init.train_student, init.student_loss_weight) == \
        ("sskd_teacher_head", [sskd.teacher_head_term], False, 0.0)
    assert main.methods == [sskd] and list(main.frozen) == [sskd.teacher_head_term]
    x, y = tiny_data(8)
    d0 = kdkeras.Distiller(teacher, student, init.methods, student_loss_weight=0.0)
    term = sskd.teacher_head_term
    stacked = batch_copies.stack(x, term)

    def init_loss():
        return term.compute_loss(d0.teacher_outputs(stacked), d0._student_tap(stacked, training=True), y)

    g_teacher, g_student, g_head = _grads(init_loss, [teacher.weights, student.weights, term.head.weights])
    assert all(g is None for g in g_teacher + g_student) and _nonzero(g_head)

    d1 = kdkeras.Distiller(teacher, student, [sskd], student_loss_weight=0.1)
    assert sskd.teacher_head is term.head and not sskd.teacher_head.trainable
    trainable = {id(v) for v in d1.trainable_variables}
    assert not trainable & {id(v) for v in [*teacher.weights, *term.head.weights]}
    assert {id(v) for v in sskd.student_head.weights} <= trainable

    def main_loss():
        out = sskd.compute_loss(d1.teacher_outputs(stacked), d1._student_tap(stacked, training=True), y,
                                StepContext(training=True))
        return sum(out.values())

    g_teacher, g_head, g_student, g_s_head = _grads(
        main_loss, [teacher.weights, term.head.weights, student.trainable_weights, sskd.student_head.weights])
    assert all(g is None for g in g_teacher + g_head)
    assert _nonzero(g_s_head) and any(g is not None and np.any(np.asarray(g) != 0) for g in g_student)


def test_ce_metrics_and_other_methods_read_the_upright_rows_and_each_network_runs_once():
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    kd, sskd = KD(), SSKD()
    d = kdkeras.Distiller(teacher, student, [kd, sskd], student_loss_weight=0.1)
    d.compile(optimizer="sgd", metrics=["accuracy"])
    x, y = tiny_data(8)
    logs = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    z_t, z_s = np.asarray(teacher(x), "float64"), np.asarray(student(x), "float64")
    ce = -np.mean(np_log_softmax(z_s)[np.arange(8), y])
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    kd_np = np_kl_batchmean(np_log_softmax(z_s / 4), np.exp(np_log_softmax(z_t / 4))) * 16
    np.testing.assert_allclose(logs["kd"], kd_np, rtol=1e-4)
    np.testing.assert_allclose(logs["sskd_kd"], 0.9 * kd_np, rtol=1e-4)
    np.testing.assert_allclose(logs["accuracy"], np.mean(z_s.argmax(1) == y), rtol=1e-6)
    # the student's tap model is traced once per step, on the stack of 4 x 8 rows
    seen = []
    tap = d._student_tap
    object.__setattr__(d, "_student_tap", lambda images, **kw: seen.append(images.shape[0]) or tap(images, **kw))
    d.compile(optimizer="sgd", run_eagerly=True)
    d.train_on_batch(x, y)
    assert seen == [32]


def test_refused_mixes_a_teacher_cache_and_bad_arguments():
    with pytest.raises(CacheError, match=r"'sskd' reads the teacher on copies of each batch"):
        check_cacheable([SSKD()])
    with pytest.raises(ValueError, match="copies of each batch.*teacher cache"):
        batch_copies.copying_method([SSKD()], teacher_cache=object())
    with pytest.raises(ValueError, match=r"\['sskd', 'b'\] each make copies"):
        batch_copies.copying_method([SSKD(), SSKD(name="b")])
    with pytest.raises(ValueError, match="CE gradients"):
        batch_copies.copying_method([SSKD()], gradient_keys=("input",))
    assert batch_copies.copying_method([KD()]) is None
    for bad, match in [({"ss_ratio": 1.5}, "ss_ratio must be in \\[0, 1\\]"),
                       ({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
                       ({"tf_weight": -1.0}, "tf_weight must be a finite number >= 0")]:
        with pytest.raises(ValueError, match=match):
            SSKD(**bad)
    with pytest.raises(ValueError, match="exactly one layer per network"):
        kdkeras.Distiller(tiny_cnn(8, name="t"), tiny_cnn(4, name="s"),
                          [SSKD(teacher_layers=["relu1", "embedding"], student_layers=["relu1", "embedding"])])


def test_defaults_config_and_save_load(tmp_path):
    m = SSKD()
    assert (m.weight, m.default_student_loss_weight, m.temperature, m.tf_temperature, m.ss_temperature) == \
        (1.0, 0.1, 4.0, 4.0, 0.5)
    assert (m.kd_weight, m.tf_weight, m.ss_weight, m.tf_ratio, m.ss_ratio) == (0.9, 2.7, 10.0, 1.0, 0.75)
    assert SSKD.has_init_stage and SSKD.has_batch_copies and not KD.has_batch_copies
    again = SSKD.from_config(SSKD(ss_ratio=0.5, tf_temperature=3.0).get_config())
    assert (again.ss_ratio, again.tf_temperature, again.temperature) == (0.5, 3.0, 4.0)
    d = kdkeras.Distiller(tiny_cnn(8, name="t"), tiny_cnn(4, name="s"), [SSKD()], student_loss_weight=0.1)
    d.compile(optimizer="sgd")
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    (a,), (b,) = d.methods, loaded.methods
    assert len(a.weights) == len(b.weights) == 8
    for v, w in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(w))
    x, y = tiny_data(8)
    want = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    loaded.compile(optimizer="sgd")
    got = loaded.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    np.testing.assert_allclose(got["sskd"], want["sskd"], rtol=1e-5)


def _weights(ws):
    return [np.array(w) for w in ws]


def test_a_tiny_two_stage_fit_trains_the_teacher_head_then_the_student_and_its_head(tmp_path):
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    sskd = SSKD()
    x, y = tiny_data(16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def parts():
        s_head = sskd.student_head.weights if sskd.student_head is not None else []
        return (_weights(sskd.teacher_head_term.head.weights), _weights(s_head),
                _weights(student.weights), _weights(teacher.weights))

    spy = StageSpy(parts)
    seen = spy.seen
    stages = default_stages([sskd], init_epochs=2, epochs=2, student_loss_weight=0.1)
    hist = run_stages(teacher, student, stages, ds, val_ds=ds, output_dir=str(tmp_path), callbacks=[spy],
                      optimizer_fn=lambda s: keras.optimizers.Adam(1e-2), verbose=0)
    assert {"sskd", "val_sskd"} <= set(hist["sskd_teacher_head"])
    assert {"sskd_kd", "sskd_tf", "sskd_ss", "val_sskd_ss"} <= set(hist["main"])
    assert all(np.isfinite(v).all() for v in hist["main"].values())
    h0, _, s0, t0 = seen["stage_sskd_teacher_head_begin"]
    h1, _, s1, t1 = seen["stage_sskd_teacher_head"]
    assert all_changed(h0, h1) and same(s0, s1)  # the teacher head trained, the student not
    h2, sh2, s2, _ = seen["stage_main_begin"]
    h3, sh3, s3, t3 = seen["stage_main"]
    assert same(h1, h2) and same(h2, h3)  # read frozen in the main stage
    assert all_changed(sh2, sh3) and all_changed(s2, s3)  # the student and its head trained
    assert same(t0, t1) and same(t1, t3)  # the teacher never moved


@pytest.mark.e2e
@needs_fashion_mnist
def test_the_distill_recipe_trains_the_teacher_head_stage_then_sskd(tiny_teacher, tmp_path):
    m = run_recipe("distill", f"--teacher={tiny_teacher.path}", "--method=sskd", "--init_epochs=1",
                   f"--output_dir={tmp_path}", *TINY).metrics
    assert m["method"] == "sskd" and m["student_loss_weight"] == 0.1
    assert list(m["history"]["stages"]) == ["sskd_teacher_head"]
    assert all(np.isfinite(m["history"]["stages"]["sskd_teacher_head"]["sskd"]))
    assert {"sskd_kd", "sskd_tf", "sskd_ss"} <= set(m["history"])
    assert (tmp_path / "stages" / "00_sskd_teacher_head" / "done.json").exists()


def test_tuning_sskd_runs_its_trials_without_a_teacher_cache(tmp_path):
    from kdkeras.experiment import DistillSpec, RunConfig
    from kdkeras.tune import TuneOptions, trial_inputs

    config = RunConfig(output_dir=str(tmp_path), epochs=4)
    options = TuneOptions(trials=2, trial_epochs=1, retrain=False, pruner="none")
    for candidates, cached in [(["kd"], True), (["sskd"], False), (["kd", "sskd+kd"], False)]:
        spec = DistillSpec(teacher="t.keras", method=",".join(candidates))
        _, trial_spec = trial_inputs(config, spec, options, candidates, candidates[0], {}, 0)
        assert (trial_spec.teacher_cache is not None) == cached, candidates


def test_under_two_replicas_the_per_row_parts_give_one_devices_step():
    """The KD parts are per-row means (all rotated rows kept), so two replicas give one device's
    step; the similarity part compares each replica's own rows (see docs), so it is left out."""
    from tests.test_distribute import run_check

    out = run_check([["sskd", {"ss_weight": 0.0, "tf_ratio": 1.0}]])
    assert out["replicas"] == 2 and out["max_weight_change"] > 1e-3
    assert abs(out["single_loss"] - out["mirrored_loss"]) < 1e-5 * max(1.0, abs(out["single_loss"]))
    assert out["max_weight_diff"] < 1e-5
    assert out["terms"]["sskd_tf"][0] > 0
