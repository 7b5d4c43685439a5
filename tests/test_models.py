"""Tests for the model zoo (kdkeras.models): shapes, names, sizes, serialization."""

import keras
import numpy as np
import pytest

from kdkeras import models

VIT_NAMES = ["vit_micro", "vit_tiny", "deit_micro", "deit_tiny", "hub_deit_micro"]
CIFAR_NAMES = [n for n in models.available() if n not in ("resnet50", "mobilenetv2", *VIT_NAMES)]


def _forward(model: keras.Model, shape, batch: int = 2) -> np.ndarray:
    x = np.random.rand(batch, *shape).astype("float32")
    return keras.ops.convert_to_numpy(model(x, training=False))


def _layer_names(model: keras.Model) -> set:
    return {layer.name for layer in model.layers}


def test_available_lists_every_documented_name():
    expected = {
        "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
        "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2",
        "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "resnet50", "mobilenetv2",
        *VIT_NAMES,
    }  # fmt: skip
    assert set(models.available()) == expected
    assert len(models.available()) == len(expected)


@pytest.mark.parametrize("index,name", list(enumerate(CIFAR_NAMES)))
def test_cifar_models_forward(index, name):
    shape = (16, 16, 3) if index % 2 == 0 else (28, 28, 1)
    model = models.get(name, shape, 10)
    assert model.name == name
    assert model.get_layer("logits").activation is keras.activations.linear
    logits = _forward(model, shape)
    assert logits.shape == (2, 10)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


def test_published_parameter_counts_and_ordering():
    n = {
        name: models.get(name, (32, 32, 3), 100).count_params()
        for name in ["resnet8x4", "resnet32x4", "resnet20", "resnet56",
                     "wrn_16_2", "wrn_40_2", "vgg8", "vgg13"]
    }  # fmt: skip
    assert n["resnet8x4"] < n["resnet32x4"]
    assert n["resnet20"] < n["resnet56"]
    assert n["wrn_16_2"] < n["wrn_40_2"]
    assert n["vgg8"] < n["vgg13"]
    for name, published in [
        ("resnet56", 0.86e6), ("resnet20", 0.27e6), ("wrn_40_2", 2.2e6),
        ("resnet8x4", 1.2e6), ("resnet32x4", 7.4e6),
    ]:  # fmt: skip
        assert abs(n[name] - published) / published < 0.05, (name, n[name])


def test_resnet_layer_names():
    model = models.get("ResNet20", (16, 16, 3), 10)  # case-insensitive
    names = _layer_names(model)
    assert model.name == "resnet20"
    for s in (1, 2, 3):
        for b in (1, 2, 3):
            assert f"stage{s}_block{b}_out" in names
            assert f"stage{s}_block{b}_preact" in names
    assert "stage3_block4_out" not in names
    assert {"stem_relu", "embedding", "logits"} <= names
    assert isinstance(model.get_layer("stage1_block1_preact"), keras.layers.Add)
    assert isinstance(model.get_layer("embedding"), keras.layers.GlobalAveragePooling2D)
    # Stage outputs sit at three spatial resolutions (16 -> 8 -> 4).
    sizes = [model.get_layer(f"stage{s}_block3_out").output.shape[1] for s in (1, 2, 3)]
    assert sizes == [16, 8, 4]


def test_resnet_x4_stem_and_widths():
    model = models.get("resnet8x4", (16, 16, 3), 10)
    assert model.get_layer("stem_relu").output.shape[-1] == 32
    widths = [model.get_layer(f"stage{s}_block1_out").output.shape[-1] for s in (1, 2, 3)]
    assert widths == [64, 128, 256]


def test_wrn_layer_names():
    model = models.get("wrn_16_2", (16, 16, 3), 10)
    names = _layer_names(model)
    assert {"stem_conv", "final_bn", "final_relu", "embedding", "logits"} <= names
    for s in (1, 2, 3):
        assert isinstance(model.get_layer(f"stage{s}_block2_out"), keras.layers.Add)
    widths = [model.get_layer(f"stage{s}_block1_out").output.shape[-1] for s in (1, 2, 3)]
    assert widths == [32, 64, 128]


def test_vgg_layer_names_and_tiny_input_pooling():
    model = models.get("vgg8", (8, 8, 1), 10)  # 8 -> 4 -> 2 -> 1, then pools skipped
    names = _layer_names(model)
    for s in range(1, 6):
        assert f"stage{s}_out" in names and f"stage{s}_preact" in names
        assert isinstance(model.get_layer(f"stage{s}_preact"), keras.layers.BatchNormalization)
        assert model.get_layer(f"stage{s}_out").output.shape[1] >= 1
    assert model.get_layer("stage5_out").output.shape[1:] == (1, 1, 512)
    assert _forward(model, (8, 8, 1)).shape == (2, 10)
    odd = models.get("vgg8", (9, 13, 2), 3)  # non-square, odd sizes
    assert _forward(odd, (9, 13, 2)).shape == (2, 3)


def test_resnet50_application():
    model = models.get("resnet50", (32, 32, 3), 10)
    names = _layer_names(model)
    assert {"conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
            "conv5_block3_out", "embedding", "logits"} <= names  # fmt: skip
    # The backbone layers live in the model's own graph, not in a nested Model.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert _forward(model, (32, 32, 3)).shape == (2, 10)


def test_mobilenetv2_small_gray_input_and_alpha():
    model = models.get("mobilenetv2", (28, 28, 1), 10, alpha=0.35)
    names = _layer_names(model)
    assert {"resize", "block_2_add", "block_5_add", "block_12_add", "out_relu"} <= names
    assert model.get_layer("resize").output.shape[1:3] == (32, 32)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    full = models.get("mobilenetv2", (32, 32, 3), 10)
    assert "resize" not in _layer_names(full)
    assert model.count_params() < full.count_params()
    assert _forward(full, (32, 32, 3)).shape == (2, 10)


def test_application_bn_momentum():
    def momenta(model):
        return {layer.momentum for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization)}

    assert momenta(models.get("mobilenetv2", (32, 32, 3), 10, alpha=0.35)) == {0.9}
    assert momenta(models.get("resnet50", (32, 32, 3), 10, bn_momentum=0.8)) == {0.8}
    # None keeps keras.applications' own value.
    assert momenta(models.get("mobilenetv2", (32, 32, 3), 10, alpha=0.35, bn_momentum=None)) == {0.999}
    with pytest.raises(ValueError, match=r"bn_momentum must be .*\[0, 1\).*1\.5"):
        models.get("mobilenetv2", (32, 32, 3), 10, alpha=0.35, bn_momentum=1.5)
    nested = keras.Sequential([models.get("resnet8", (8, 8, 3), 2)])
    assert momenta(models.set_bn_momentum(nested, 0.5).layers[0]) == {0.5}


def test_unknown_name_error_mentions_name_and_suggestion():
    with pytest.raises(ValueError) as err:
        models.get("resnet_56", (16, 16, 3), 10)
    message = str(err.value)
    assert "resnet_56" in message
    assert "Did you mean 'resnet56'" in message
    assert "wrn_40_2" in message  # lists the accepted names


def test_bad_arguments():
    with pytest.raises(ValueError):
        models.get("resnet8", (16, 16), 10)
    with pytest.raises(ValueError):
        models.get("resnet8", (16, 16, 3), 0)
    with pytest.raises(TypeError):
        models.get("resnet8", (16, 16, 3), 10, not_an_option=1)


def test_options_dropout_weight_decay_width():
    model = models.get(
        "resnet8", (16, 16, 3), 10, dropout=0.5, weight_decay=5e-4, width_multiplier=0.5
    )
    assert isinstance(model.get_layer("dropout"), keras.layers.Dropout)
    assert model.get_layer("stage1_block1_out").output.shape[-1] == 8
    assert len(model.losses) > 0
    plain = models.get("resnet8", (16, 16, 3), 10)
    assert len(plain.losses) == 0
    assert "dropout" not in _layer_names(plain)


def test_save_load_round_trip(tmp_path):
    model = models.get("resnet8", (16, 16, 3), 10, weight_decay=5e-4)
    x = np.random.rand(2, 16, 16, 3).astype("float32")
    model.predict(x, verbose=0)
    path = tmp_path / "resnet8.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == "resnet8"
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    )
    assert len(loaded.losses) == len(model.losses) > 0


def test_save_load_application_with_resize(tmp_path):
    model = models.get("mobilenetv2", (16, 16, 1), 4, alpha=0.35, weight_decay=1e-4)
    x = np.random.rand(2, 16, 16, 1).astype("float32")
    path = tmp_path / "mnv2.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=0, atol=0
    )
    assert len(loaded.losses) == len(model.losses) > 0
    assert "block_12_add" in _layer_names(loaded)
