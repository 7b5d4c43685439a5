"""The bias-variance decomposition: the identity, the terms, regularisation samples."""

import numpy as np
import pytest

from kdkeras.analysis import (
    cross_entropy_per_sample,
    decompose,
    regularization_samples,
    regularization_share,
    split_by_mask,
)


def synthetic(m=5, n=40, k=4, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    center = rng.normal(0, 2, (n, k))
    center[np.arange(n), labels] += 1.5
    logits = center[None] + rng.normal(0, spread, (m, n, k))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs, labels


def test_terms_add_up_to_measured_expected_ce():
    probs, labels = synthetic()
    d = decompose(probs, labels)
    # the expected CE measured directly, independently of the decomposition
    p = probs.astype("float64")
    measured = np.mean([-np.log(p[i, np.arange(len(labels)), labels]).mean() for i in range(len(p))])
    np.testing.assert_allclose(d.expected_ce, measured, rtol=1e-6)
    assert d.noise == 0.0
    np.testing.assert_allclose(d.noise + d.bias + d.variance, measured, rtol=1e-9)
    np.testing.assert_allclose(d.error, measured, rtol=1e-9)
    assert d.bias > 0 and d.variance > 0
    # float32 predictions (rows off 1 by rounding) keep the identity to 1e-6
    d32 = decompose(probs.astype("float32"), labels)
    np.testing.assert_allclose(d32.error, measured, rtol=1e-6)


def test_terms_match_the_definitions():
    probs, labels = synthetic(m=3, n=6, k=3, seed=1)
    d = decompose(probs, labels)
    p = probs.astype("float64")
    for n, label in enumerate(labels):
        geo = np.exp(np.log(p[:, n]).mean(0))
        y_bar = geo / geo.sum()
        np.testing.assert_allclose(d.y_bar[n], y_bar, rtol=1e-9)
        np.testing.assert_allclose(d.bias_per_sample[n], -np.log(y_bar[label]), rtol=1e-9)
        var = np.mean([np.sum(y_bar * np.log(y_bar / p[i, n])) for i in range(len(p))])
        np.testing.assert_allclose(d.variance_per_sample[n], var, rtol=1e-9, atol=1e-12)


def test_identical_models_have_zero_variance_and_more_spread_more_variance():
    probs, labels = synthetic(m=1)
    same = np.repeat(probs, 4, axis=0)
    d = decompose(same, labels)
    assert abs(d.variance) < 1e-12
    np.testing.assert_allclose(d.bias, d.expected_ce, rtol=1e-9)
    low = decompose(synthetic(spread=0.2, seed=3)[0], synthetic(spread=0.2, seed=3)[1])
    high = decompose(synthetic(spread=2.0, seed=3)[0], synthetic(spread=2.0, seed=3)[1])
    assert high.variance > low.variance


def test_soft_labels_add_noise_and_logits_input():
    probs, labels = synthetic(m=4, n=10, k=3, seed=2)
    logits = np.log(probs)
    d_logits = decompose(logits, labels, from_logits=True)
    d_probs = decompose(probs, labels)
    np.testing.assert_allclose(d_logits.expected_ce, d_probs.expected_ce, rtol=1e-5)
    soft = np.full((10, 3), 0.1)
    soft[np.arange(10), labels] = 0.8
    d = decompose(probs, soft)
    entropy = -(0.8 * np.log(0.8) + 2 * 0.1 * np.log(0.1))
    np.testing.assert_allclose(d.noise, entropy, rtol=1e-9)
    ce = np.mean(-(soft[None] * np.log(probs.astype("float64"))).sum(-1))
    np.testing.assert_allclose(d.error, ce, rtol=1e-9)


def test_top1_and_ensemble_top1():
    labels = np.array([0, 1])
    probs = np.array([
        [[0.9, 0.1], [0.6, 0.4]],
        [[0.8, 0.2], [0.3, 0.7]],
    ])
    d = decompose(probs, labels)
    assert d.top1 == 0.75  # 3 of 4 model-sample pairs right
    assert d.ensemble_top1 == 1.0  # geometric mean on sample 1: sqrt(.4*.7) > sqrt(.6*.3)
    assert set(d.summary()) >= {"noise", "bias", "variance", "error", "expected_ce", "top1"}


def test_regularization_samples_and_share():
    labels = np.array([0, 0, 1])
    teacher = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    student = np.array([[0.8, 0.2], [0.7, 0.3], [0.2, 0.8]])
    mask = regularization_samples(teacher, student, labels)
    np.testing.assert_array_equal(mask, [False, True, True])
    assert regularization_share(teacher, student, labels) == pytest.approx(2 / 3)
    students = np.stack([student, teacher])
    assert regularization_samples(teacher, students, labels).shape == (2, 3)
    np.testing.assert_allclose(cross_entropy_per_sample(teacher, labels), -np.log([0.9, 0.4, 0.5]))
    d = decompose(students, labels)
    parts = split_by_mask(d, mask)
    assert parts["in"]["count"] == 2 and parts["out"]["count"] == 1
    np.testing.assert_allclose(parts["out"]["bias"], d.bias_per_sample[0])


def test_bad_inputs_are_named():
    probs, labels = synthetic(m=2, n=5, k=3)
    with pytest.raises(ValueError, match=r"\(M, N, K\)"):
        decompose(probs[0], labels)
    with pytest.raises(ValueError, match="labels"):
        decompose(probs, labels[:3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        decompose(probs, labels + 5)
    with pytest.raises(ValueError, match="from_logits"):
        decompose(probs - 1.0, labels)
