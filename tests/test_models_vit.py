"""The zoo's vision transformers: shapes, sizes, names, DeiT's averaged output,
save/load, and a float32 LiteRT export that matches Keras."""

import keras
import numpy as np
import pytest

from kdkeras import keys, models
from tests.helpers import assert_float32_litert_matches_keras

X28 = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")


def _heads(model):
    return keras.Model(model.input, [model.get_layer(keys.CLS_HEAD).output,
                                     model.get_layer(keys.DIST_HEAD).output, model.output])


def tiny_deit(**kwargs):
    return models.build_vit((8, 8, 1), 3, patch=4, dim=8, depth=1, heads=2, distillation_token=True,
                            name="tiny_deit", **kwargs)


@pytest.mark.parametrize("name, low, high", [("vit_micro", 1e5, 2e5), ("deit_micro", 1e5, 2e5),
                                             ("vit_tiny", 3e5, 6e5), ("deit_tiny", 3e5, 6e5)])
def test_zoo_vits_build_for_28_and_32_px_with_a_few_hundred_k_params(name, low, high):
    model = models.get(name, (28, 28, 1), 10)
    assert model.name == name and low < model.count_params() < high
    assert model.get_layer("patch_tokens").output.shape[1:] == (49, model.get_layer("patch_embed").filters)
    logits = np.asarray(model(X28, training=False))
    assert logits.shape == (4, 10) and logits.dtype == np.float32 and np.all(np.isfinite(logits))
    assert models.get(name, (32, 32, 3), 10).get_layer("patch_tokens").output.shape[1] == 64
    tokens = model.get_layer("tokens")
    assert tokens.num_tokens == (2 if name.startswith("deit") else 1)
    assert tokens.position.shape[1] == 49 + tokens.num_tokens


def test_deit_output_is_the_mean_of_its_two_heads_and_vit_has_one():
    z_cls, z_dist, out = (np.asarray(z) for z in _heads(models.get("deit_micro", (28, 28, 1), 10))(X28))
    np.testing.assert_allclose(out, (z_cls + z_dist) / 2, rtol=1e-6, atol=1e-6)
    assert not np.allclose(z_cls, z_dist)  # two heads on two tokens
    vit = models.get("vit_micro", (28, 28, 1), 10)
    assert isinstance(vit.get_layer("logits"), keras.layers.Dense)
    assert keys.DIST_HEAD not in {layer.name for layer in vit.layers}


def test_options_and_errors():
    model = models.get("deit_micro", (16, 16, 3), 10, dropout=0.1, weight_decay=1e-4, width_multiplier=0.5)
    assert model.get_layer("patch_embed").filters == 32 and len(model.losses) > 0
    assert isinstance(model.get_layer("dropout"), keras.layers.Dropout)
    with pytest.raises(ValueError, match=r"multiples of the patch size 4, got \(30, 30\)"):
        models.get("vit_micro", (30, 30, 3), 10)
    with pytest.raises(ValueError, match=r"depth must be an int >= 1, got 0"):
        models.build_vit((8, 8, 1), 3, depth=0)
    with pytest.raises(TypeError):
        models.get("vit_micro", (28, 28, 1), 10, alpha=0.5)


def test_save_load_round_trip(tmp_path):
    model = tiny_deit(weight_decay=1e-4)
    x = np.random.default_rng(1).random((3, 8, 8, 1)).astype("float32")
    path = tmp_path / "deit.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for a, b in zip(_heads(model)(x), _heads(loaded)(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(loaded.get_layer("tokens")) is models.ClassTokens and loaded.get_layer("tokens").num_tokens == 2
    assert loaded.get_layer("dist_embedding").index == 1 and len(loaded.losses) == len(model.losses) > 0


def test_float32_litert_export_matches_keras(tmp_path):
    assert_float32_litert_matches_keras(tiny_deit(), tmp_path / "deit.tflite")
