"""CRD: NCE loss and bank update against NumPy, negative sampling, save/load, fit."""

import os

import keras
import numpy as np
import pytest

import kdkeras
from kdkeras.methods import KD
from kdkeras.methods import registry as methods_registry
from kdkeras.methods import contrastive
from kdkeras.methods.contrastive import CRD, ContrastMemory, embedding_layer_name
from tests.helpers import CallCounter, counted_cnn, tiny_cnn, tiny_data


def np_nce(out, n_data, eps=1e-7):
    """RepDistiller's ContrastLoss on `out` (B, K+1): column 0 the positive."""
    m = out.shape[1] - 1
    pn = 1.0 / n_data
    log_d1 = np.log(out[:, 0] / (out[:, 0] + m * pn + eps))
    log_d0 = np.log(m * pn / (out[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / out.shape[0]


def np_crd(v_s, v_t, bank_s, bank_t, idx, neg, t, z=None):
    """RepDistiller's ContrastMemory + both losses, per-sample negatives (B, K)."""
    n = bank_s.shape[0]
    slots = np.concatenate([idx[:, None], neg], axis=1)
    out_s = np.exp(np.einsum("bkd,bd->bk", bank_t[slots], v_s) / t)  # student anchor
    out_t = np.exp(np.einsum("bkd,bd->bk", bank_s[slots], v_t) / t)
    z_s = out_s.mean() * n if z is None else z[0]
    z_t = out_t.mean() * n if z is None else z[1]
    return np_nce(out_s / z_s, n), np_nce(out_t / z_t, n), (z_s, z_t)


def unit(rng, *shape):
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def fixed_inputs(b=4, k=6, n=20, d=8, seed=1):
    rng = np.random.default_rng(seed)
    v_s, v_t = unit(rng, b, d), unit(rng, b, d)
    bank_s, bank_t = unit(rng, n, d), unit(rng, n, d)
    idx = rng.choice(n, b, replace=False)
    neg = rng.integers(0, n, (b, k))
    return v_s, v_t, bank_s, bank_t, idx, neg


def f32(*arrays):
    return [a.astype("float32") if a.dtype.kind == "f" else a.astype("int32") for a in arrays]


@pytest.mark.parametrize("score_all", [False, True])  # gather B x K x D rows / score all N
@pytest.mark.parametrize("z", [None, (3.0, 5.0)])
def test_nce_loss_matches_numpy_reference(z, score_all, monkeypatch):
    monkeypatch.setattr(contrastive, "_SCORE_ALL_FACTOR", 0 if score_all else 10**9)
    v_s, v_t, bank_s, bank_t, idx, neg = fixed_inputs()
    crd = CRD(num_examples=20, num_negatives=6, mode="exact", temperature=0.5)
    log_z = None if z is None else np.log(z)
    losses, log_z_used = crd.nce_loss(*f32(v_s, v_t, bank_s, bank_t, idx, neg), log_z=log_z)
    ls, lt, zs = np_crd(v_s, v_t, bank_s, bank_t, idx, neg, 0.5, z)
    np.testing.assert_allclose(float(losses["student"]), ls, rtol=1e-4)
    np.testing.assert_allclose(float(losses["teacher"]), lt, rtol=1e-4)
    np.testing.assert_allclose(np.exp(log_z_used.numpy()), zs, rtol=1e-4)


def test_shared_negatives_equal_exact_on_the_same_set_and_masking_rescales():
    v_s, v_t, bank_s, bank_t, idx, neg = fixed_inputs()
    shared = CRD(num_examples=20, num_negatives=6, mode="shared", temperature=0.5)
    args = f32(v_s, v_t, bank_s, bank_t, idx)
    one_set = neg[0]
    log_z = np.log([3.0, 5.0])
    got, _ = shared.nce_loss(*args, one_set.astype("int32"), log_z=log_z)
    ls, lt, _ = np_crd(v_s, v_t, bank_s, bank_t, idx, np.tile(one_set, (4, 1)), 0.5, (3.0, 5.0))
    np.testing.assert_allclose([float(got["student"]), float(got["teacher"])], [ls, lt], rtol=1e-4)
    # A masked negative drops out; the kept ones' sum is scaled back to K terms.
    valid = np.ones((4, 6), "float32")
    valid[:, :3] = 0.0
    got, _ = shared.nce_loss(*args, one_set.astype("int32"), valid=valid, log_z=log_z)
    kept = np.tile(one_set[3:], (4, 1))
    out = np.exp(np.einsum("bkd,bd->bk", bank_t[np.concatenate([idx[:, None], kept], 1)], v_s) / 0.5) / 3.0
    c = 6 / 20
    expect = -np.mean(np.log(out[:, 0] / (out[:, 0] + c + 1e-7))
                      + 2.0 * np.log(c / (out[:, 1:] + c + 1e-7)).sum(1))
    np.testing.assert_allclose(float(got["student"]), expect, rtol=1e-4)


@pytest.mark.parametrize("score_all", [False, True])
@pytest.mark.parametrize("mode", ["shared", "exact"])
def test_empty_bank_slots_give_way_to_the_live_pair_and_are_never_negatives(mode, score_all, monkeypatch):
    """bank_init="empty": an empty (zero) positive slot scores the live pair, an
    empty negative slot is masked; on a fully filled bank it is the reference."""
    monkeypatch.setattr(contrastive, "_SCORE_ALL_FACTOR", 0 if score_all else 10**9)
    v_s, v_t, bank_s, bank_t, idx, neg = fixed_inputs()
    neg = neg[0] if mode == "shared" else neg
    per_sample = np.tile(neg, (4, 1)) if mode == "shared" else neg
    empty = CRD(num_examples=20, num_negatives=6, mode=mode, temperature=0.5, bank_init="empty")
    log_z = np.log([3.0, 5.0])
    full, _ = empty.nce_loss(*f32(v_s, v_t, bank_s, bank_t, idx, neg), log_z=log_z)
    ls, lt, _ = np_crd(v_s, v_t, bank_s, bank_t, idx, per_sample, 0.5, (3.0, 5.0))
    np.testing.assert_allclose([float(full["student"]), float(full["teacher"])], [ls, lt], rtol=1e-4)
    # empty the positive slot of sample 0 and every slot sample 1's first two negatives point at
    holes = {int(idx[0])} | set(per_sample[1, :2].tolist())
    bank_s0, bank_t0 = bank_s.copy(), bank_t.copy()
    bank_s0[sorted(holes)] = 0.0
    bank_t0[sorted(holes)] = 0.0
    got, _ = empty.nce_loss(*f32(v_s, v_t, bank_s0, bank_t0, idx, neg), log_z=log_z)
    c = 6 / 20
    expect = []
    for anchor, partner, bank, z in ((v_s, v_t, bank_t0, 3.0), (v_t, v_s, bank_s0, 5.0)):
        total = 0.0
        for b in range(4):
            pos_key = partner[b] if int(idx[b]) in holes else bank[idx[b]]
            p_pos = np.exp(anchor[b] @ pos_key / 0.5) / z
            kept = [j for j in per_sample[b] if int(j) not in holes]
            p_neg = np.exp(bank[kept] @ anchor[b] / 0.5) / z
            total += np.log(p_pos / (p_pos + c + 1e-7)) + 6 / len(kept) * np.log(c / (p_neg + c + 1e-7)).sum()
        expect.append(-total / 4)
    np.testing.assert_allclose([float(got["student"]), float(got["teacher"])], expect, rtol=1e-4)


def test_an_empty_bank_takes_each_first_embedding_as_it_is():
    rng = np.random.default_rng(0)
    mem = ContrastMemory(10, 4, momentum=0.5, init="empty")
    mem.build()
    assert not mem.bank_student.numpy().any() and not mem.bank_teacher.numpy().any()
    idx = np.array([7, 2], "int32")
    v_s, v_t = unit(rng, 2, 4).astype("float32"), unit(rng, 2, 4).astype("float32")
    mem.update(idx, v_s, v_t)
    np.testing.assert_allclose(mem.bank_student.numpy()[idx], v_s, rtol=1e-5)
    np.testing.assert_allclose(mem.bank_teacher.numpy()[idx], v_t, rtol=1e-5)
    assert not np.delete(mem.bank_student.numpy(), idx, axis=0).any()  # the others stay empty
    with pytest.raises(ValueError, match="'random', 'empty'.*'zeros'"):
        ContrastMemory(10, 4, init="zeros")
    with pytest.raises(ValueError, match="bank_init.*'random', 'empty'.*'zero'"):
        CRD(num_examples=10, bank_init="zero")


def test_momentum_update_matches_numpy():
    rng = np.random.default_rng(0)
    mem = ContrastMemory(10, 4, momentum=0.5)
    mem.build()
    bank_s, bank_t = mem.bank_student.numpy().copy(), mem.bank_teacher.numpy().copy()
    stdv = 1.0 / np.sqrt(4 / 3)
    assert np.abs(bank_s).max() <= stdv and not np.allclose(bank_s, bank_t)
    idx = np.array([7, 2, 5], "int32")
    v_s, v_t = unit(rng, 3, 4).astype("float32"), unit(rng, 3, 4).astype("float32")
    mem.update(idx, v_s, v_t)
    for before, v, var in ((bank_s, v_s, mem.bank_student), (bank_t, v_t, mem.bank_teacher)):
        expect = before.copy()
        slot = 0.5 * before[idx] + 0.5 * v
        expect[idx] = slot / np.linalg.norm(slot, axis=1, keepdims=True)
        np.testing.assert_allclose(var.numpy(), expect, rtol=1e-5, atol=1e-6)
    assert mem.bank_bytes == 10 * (2 * 4 * 4 + 4)


def sampler(mode, negatives, n=40, k=64, labels=None):
    crd = CRD(num_examples=n, num_negatives=k, mode=mode, negatives=negatives, labels=labels)
    crd.memory = ContrastMemory(n, 4)
    crd.memory.build()
    if labels is not None:
        crd.memory.labels.assign(labels)
    return crd


@pytest.mark.parametrize("mode", ["shared", "exact"])
@pytest.mark.parametrize("negatives", ["other_classes", "uniform"])
def test_negatives_never_positive_nor_its_class(mode, negatives):
    n, classes = 40, 4
    labels = np.arange(n, dtype="int32") % classes
    crd = sampler(mode, negatives, n=n, labels=labels)
    idx = np.array([0, 5, 13, 39], "int32")
    y = labels[idx]
    seen = np.zeros((4, n), bool)
    for _ in range(50):
        neg, valid = crd.sample_negatives(y, idx)
        neg = np.broadcast_to(neg.numpy(), (4, 64))
        kept = np.ones((4, 64), bool) if valid is None else valid.numpy() > 0
        if mode == "exact":
            assert kept.mean() > 0.97  # exclusions are redrawn, not dropped
        for b in range(4):
            chosen = neg[b][kept[b]]
            assert idx[b] not in chosen
            if negatives == "other_classes":
                assert not np.any(labels[chosen] == y[b])
            seen[b, chosen] = True
    for b in range(4):  # every allowed slot is drawn: the sampler is not too strict
        allowed = np.arange(n) != idx[b]
        if negatives == "other_classes":
            allowed &= labels != y[b]
        assert np.array_equal(seen[b], allowed)


@pytest.mark.parametrize("mode", ["shared", "exact"])
def test_draws_are_keyed_by_the_saved_draw_count(mode):
    """What makes a resumed run draw the uninterrupted run's negatives: the draws
    depend only on (seed, count), count is a saved variable, and evaluation draws
    advance nothing."""
    labels = np.arange(40, dtype="int32") % 4
    idx, y = np.array([0, 5, 13], "int32"), labels[[0, 5, 13]]
    a, b = sampler(mode, "other_classes", labels=labels), sampler(mode, "other_classes", labels=labels)
    b.memory.draws.assign(a.memory.draws.numpy())  # b: a "restarted process" with a's state
    first = [a.sample_negatives(y, idx)[0].numpy() for _ in range(3)]
    np.testing.assert_array_equal(a.memory.draws.numpy()[1], 3)
    assert not np.array_equal(first[0], first[1])  # each training draw is fresh
    b.memory.draws.assign([a.memory.draws.numpy()[0], 1])  # restored after one step
    np.testing.assert_array_equal(b.sample_negatives(y, idx)[0].numpy(), first[1])
    count = a.memory.draws.numpy().copy()
    evaluation = [a.sample_negatives(y, None, training=False)[0].numpy() for _ in range(2)]
    np.testing.assert_array_equal(a.memory.draws.numpy(), count)
    np.testing.assert_array_equal(evaluation[0], evaluation[1])
    assert sampler(mode, "other_classes", labels=labels).memory.seed != a.memory.seed  # seeds differ by default


def test_label_bank_fills_as_samples_are_seen():
    crd = sampler("exact", "other_classes", n=12, k=200)
    labels = np.arange(12, dtype="int32") % 3
    assert np.all(crd.memory.labels.numpy() == -1)
    crd.memory.write_labels(np.arange(12, dtype="int32"), labels)
    np.testing.assert_array_equal(crd.memory.labels.numpy(), labels)
    neg, valid = crd.sample_negatives(labels[:2], np.array([0, 1], "int32"))
    kept = neg.numpy()[valid.numpy() > 0]
    assert kept.size > 0.9 * neg.shape[0] * neg.shape[1]
    assert not np.any((labels[neg.numpy()] == labels[:2, None]) & (valid.numpy() > 0))


def make(methods, counted=False):
    if counted:
        teacher, student = counted_cnn("teacher", width=6), counted_cnn("student")
    else:
        teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    return kdkeras.Distiller(teacher, student, methods, student_loss_weight=1.0)


def test_banks_survive_save_and_load(tmp_path):
    x, y = tiny_data(24)
    d = make([CRD(num_examples=24, num_negatives=16, feat_dim=8)])
    d.compile(optimizer="sgd")
    crd = d.methods[0]
    assert np.all(np.isnan(crd.memory.log_normalizers.numpy()))
    for start in (0, 8, 16):
        batch = slice(start, start + 8)
        d.train_on_batch({"image": x[batch], "index": np.arange(24)[batch]}, y[batch])
        if start == 0:
            log_z = crd.memory.log_normalizers.numpy().copy()
            assert np.all(np.isfinite(log_z))  # Z set by the first batch, then fixed
    np.testing.assert_array_equal(crd.memory.log_normalizers.numpy(), log_z)
    np.testing.assert_array_equal(crd.memory.labels.numpy(), y)
    before = [v.numpy().copy() for v in crd.memory.weights]
    logs = d.test_on_batch({"image": x, "index": np.arange(24)}, y, return_dict=True)
    assert np.isfinite(logs["crd"]) and logs["crd"] > 0
    for a, b in zip(before, crd.memory.weights):  # evaluation writes nothing
        np.testing.assert_array_equal(a, b.numpy())
    path = os.path.join(tmp_path, "d.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    got = loaded.methods[0]
    assert got.get_config() == crd.get_config()
    for a, b in zip(crd.memory.weights + crd.embed_student.weights, got.memory.weights + got.embed_student.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_registered_names_that_saved_distillers_refer_to_stay():
    """A saved Distiller names its layers by registered name: moving a class to
    another module must keep them, or files saved before no longer load."""
    assert keras.saving.get_registered_name(CRD) == "kdkeras>CRD"
    assert keras.saving.get_registered_name(ContrastMemory) == "kdkeras>ContrastMemory"
    assert keras.saving.get_registered_object("kdkeras>ContrastMemory") is kdkeras.methods.ContrastMemory


def test_short_fit_lowers_the_crd_term():
    x, y = tiny_data(32, num_classes=3)
    crd = CRD(num_examples=32, num_negatives=64, feat_dim=16, negatives="uniform", weight=1.0)
    d = make([crd])
    d.compile(optimizer=keras.optimizers.Adam(3e-3))
    inputs = {"image": x, "index": np.arange(32)}
    terms = [d.train_on_batch(inputs, y, return_dict=True)["crd"] for _ in range(30)]
    # the term is noisy step to step (fresh negatives, Z fixed at step 1): compare the last
    # steps' median with the start (0.56-0.78 over global seeds 0-9; 0.85 leaves a margin)
    assert np.median(terms[-10:]) < 0.85 * np.mean(terms[:2]), terms


def test_kd_plus_crd_runs_each_network_once_per_step():
    methods = kdkeras.methods.get("kd"), methods_registry.get("crd", num_examples=8, num_negatives=4)
    d = make(list(methods), counted=True)
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = tiny_data(8)
    CallCounter.counts.clear()
    logs = d.train_on_batch({"image": x, "index": np.arange(8)}, y, return_dict=True)
    assert CallCounter.counts == {"teacher_counter": 1, "student_counter": 1}
    assert {"kd", "crd", "crd_student", "crd_teacher"} <= set(logs)
    np.testing.assert_allclose(logs["crd"], logs["crd_student"] + logs["crd_teacher"], rtol=1e-5)


def test_clear_errors_without_num_examples_or_index():
    with pytest.raises(ValueError, match="num_examples"):
        make([CRD()])
    d = make([KD(), CRD(num_examples=8)])
    d.compile(optimizer="sgd")
    x, y = tiny_data(8)
    with pytest.raises(ValueError, match="index"):
        d.train_on_batch(x, y)


def test_default_tap_is_the_input_of_the_logits_dense():
    inp = keras.Input((6,))
    h = keras.layers.Dense(5, name="hidden")(inp)
    out = keras.layers.Dense(3, name="head")(keras.layers.ReLU(name="feat")(h))
    model = keras.Model(inp, out)
    assert embedding_layer_name(model) == "feat"
    assert embedding_layer_name(tiny_cnn()) == "embedding"
