"""Logit methods against independent NumPy computations."""

import numpy as np
import pytest

import kdkeras
from kdkeras.methods import KD


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kd(zt, zs, t):
    lpt, lps = np_log_softmax(zt / t), np_log_softmax(zs / t)
    return (t * t) * np.mean(np.sum(np.exp(lpt) * (lpt - lps), axis=-1))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_matches_numpy(temperature):
    rng = np.random.default_rng(1)
    zt = rng.normal(0, 3, (6, 5)).astype("float32")
    zs = rng.normal(0, 3, (6, 5)).astype("float32")
    got = float(KD(temperature=temperature).compute_loss({"logits": zt}, {"logits": zs}, None))
    np.testing.assert_allclose(got, np_kd(zt.astype("float64"), zs.astype("float64"), temperature), rtol=1e-5)


def test_kd_zero_for_identical_logits_and_positive_otherwise():
    z = np.array([[1.0, -2.0, 0.5]], "float32")
    kd = KD()
    assert abs(float(kd.compute_loss({"logits": z}, {"logits": z}, None))) < 1e-7
    assert float(kd.compute_loss({"logits": z}, {"logits": z[:, ::-1].copy()}, None)) > 0


def test_kd_defaults_and_config_round_trip():
    kd = KD()
    assert kd.weight == 0.9 and kd.temperature == 4.0 and kd.name == "kd"
    clone = KD.from_config(KD(temperature=2.0, weight=0.5).get_config())
    assert clone.temperature == 2.0 and clone.weight == 0.5


def test_bad_temperature_is_named():
    with pytest.raises(ValueError, match="-1"):
        KD(temperature=-1)


def test_get_by_name_and_unknown_name():
    assert isinstance(kdkeras.methods.get("KD", temperature=3.0), KD)
    with pytest.raises(ValueError, match="'kdd'.*Accepted"):
        kdkeras.methods.get("kdd")
