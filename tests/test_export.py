"""Round trips Keras -> .tflite -> LiteRT for every quantisation variant."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from kdkeras.export import compare_with_keras, evaluate_tflite, export_tflite, tflite_size_breakdown
from kdkeras.export.litert_eval import _Runner

NUM_CLASSES = 4


def _data(n=50, seed=0):
    """Colour-coded 16x16 images: classes 0-2 brighten one channel, class 3 the top half."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    x = 0.6 * rng.random((n, 16, 16, 3))
    for i, c in enumerate(y):
        if c < 3:
            x[i, ..., c] += 0.4
        else:
            x[i, :8] += 0.4
    return np.clip(x, 0, 1).astype("float32"), y.astype("int64")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(32, 5, padding="same", use_bias=False)(inputs)  # > 1024 weights
    h = keras.layers.BatchNormalization(momentum=0.7)(h)  # moving stats move in a few steps
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(NUM_CLASSES)(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(64, seed=1)
    model.fit(x, y, batch_size=16, epochs=4, verbose=0)
    bn = model.layers[2]
    assert np.abs(bn.moving_mean.numpy()).max() > 0.05  # BN statistics are non-trivial
    assert np.abs(bn.moving_variance.numpy() - 1).max() > 0.05
    return model


@pytest.fixture(scope="module")
def dataset():
    x, y = _data(50)  # 50 = 3 x 16 + 2: the last batch exercises a tensor resize
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


@pytest.fixture(scope="module")
def files(trained, dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    out = {}
    for q in ("float32", "float16", "dynamic", "int8"):
        path = str(root / q / "nested" / "model.tflite")  # parent dirs are created
        rep = dataset if q == "int8" else None
        assert export_tflite(trained, path, q, representative_data=rep,
                             num_representative=48) == path
        out[q] = path
    return out


def _keras_logits(model, dataset):
    return np.concatenate([model(x, training=False).numpy() for x, _ in dataset])


def _io_dtypes(path):
    it = Interpreter(model_path=path)
    return it.get_input_details()[0]["dtype"], it.get_output_details()[0]["dtype"]


def test_float32_matches_keras(trained, dataset, files):
    res = evaluate_tflite(files["float32"], dataset, num_threads=1, latency_runs=20)
    ref = _keras_logits(trained, dataset)
    assert res["num_examples"] == 50
    assert res["logits"].shape == (50, NUM_CLASSES)
    assert np.max(np.abs(res["logits"] - ref)) < 1e-4
    np.testing.assert_array_equal(res["logits"].argmax(-1), ref.argmax(-1))
    labels = np.concatenate([y for _, y in dataset])
    assert res["top1"] == pytest.approx(np.mean(ref.argmax(-1) == labels))
    assert res["top1"] > 0.5  # the toy task was learnt, so agreement below is meaningful
    assert res["size_bytes"] == os.path.getsize(files["float32"])
    assert res["latency_ms"] > 0 and res["latency_ms_all_threads"] > 0
    assert _io_dtypes(files["float32"]) == (np.float32, np.float32)


def test_float16_close(trained, dataset, files):
    cmp = compare_with_keras(trained, files["float16"], dataset)
    scale = np.abs(_keras_logits(trained, dataset)).max()
    assert cmp["max_abs_logit_diff"] < 5e-3 * max(1.0, scale)
    assert cmp["top1_agreement"] == 1.0
    assert os.path.getsize(files["float16"]) < os.path.getsize(files["float32"])
    assert _io_dtypes(files["float16"]) == (np.float32, np.float32)


def test_dynamic_close(trained, dataset, files):
    cmp = compare_with_keras(trained, files["dynamic"], dataset)
    scale = np.abs(_keras_logits(trained, dataset)).max()
    assert cmp["max_abs_logit_diff"] < 3e-2 * max(1.0, scale)
    assert cmp["top1_agreement"] >= 0.95
    assert os.path.getsize(files["dynamic"]) < os.path.getsize(files["float32"])


def test_int8_full_integer(trained, dataset, files):
    it = Interpreter(model_path=files["int8"])
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] > 0 and out["quantization"][0] > 0
    assert os.path.getsize(files["int8"]) < os.path.getsize(files["float32"])

    cmp = compare_with_keras(trained, files["int8"], dataset)
    scale = np.abs(_keras_logits(trained, dataset)).max()
    assert cmp["top1_agreement"] >= 0.9
    assert cmp["max_abs_logit_diff"] < 0.1 * max(1.0, scale)
    assert abs(cmp["tflite_top1"] - cmp["keras_top1"]) <= 0.1

    res = evaluate_tflite(files["int8"], dataset, max_batches=2, latency_runs=20)
    assert res["num_examples"] == 32
    assert res["logits"].dtype == np.float32  # dequantised


def test_size_breakdown_accounts_for_every_byte(files):
    # Weights of the fixture: conv 5x5x3x32 (+ the BN folded into a 32-bias), dense 32x4 + 4.
    n_weights = 5 * 5 * 3 * 32 + 32 + 32 * 4 + 4
    f32 = tflite_size_breakdown(files["float32"])
    i8 = tflite_size_breakdown(files["int8"])
    for b, path in ((f32, files["float32"]), (i8, files["int8"])):
        assert b["file_bytes"] == os.path.getsize(path)
        assert b["tensor_data_bytes"] + b["quant_param_bytes"] + b["other_bytes"] == b["file_bytes"]
        assert b["other_bytes"] > 0
    assert f32["quant_param_bytes"] == f32["quantized_channels"] == 0
    assert 4 * n_weights <= f32["tensor_data_bytes"] < 4 * n_weights + 1024
    # int8: 1-byte weights, int32 biases; a float32 scale and an int64 zero point
    # per channel, at least one per conv output channel for its weights and bias.
    assert n_weights <= i8["tensor_data_bytes"] < 4 * n_weights
    assert i8["quantized_channels"] >= 2 * 32
    assert i8["quant_param_bytes"] == 12 * i8["quantized_channels"]


def test_batched_run_matches_per_example(files):
    x, _ = _data(7)
    for path in files.values():
        batched, single = _Runner(path, 1, batched=True), _Runner(path, 1, batched=False)
        assert batched.batched
        np.testing.assert_array_equal(batched.run(x), single.run(x))


def test_int8_from_numpy_and_dict_inputs(trained, tmp_path):
    x, y = _data(24)
    path = export_tflite(trained, str(tmp_path / "np.tflite"), "int8",
                         representative_data=x, num_representative=16)
    dict_ds = tf.data.Dataset.from_tensor_slices(({"image": x, "index": np.arange(24)}, y)).batch(8)
    res = evaluate_tflite(path, dict_ds, num_threads=1, latency_runs=5, warmup_runs=1)
    assert res["num_examples"] == 24 and 0.0 <= res["top1"] <= 1.0
    assert evaluate_tflite(path, (x, y), latency_runs=5)["num_examples"] == 24


def test_int8_without_representative_data(trained, tmp_path):
    with pytest.raises(ValueError, match="representative_data") as err:
        export_tflite(trained, str(tmp_path / "m.tflite"), "int8")
    assert "dynamic" in str(err.value)  # points at the calibration-free alternative
    assert not (tmp_path / "m.tflite").exists()


def test_bad_quantization_names_value(trained, tmp_path):
    with pytest.raises(ValueError) as err:
        export_tflite(trained, str(tmp_path / "m.tflite"), "int4")
    msg = str(err.value)
    assert "'int4'" in msg
    for q in ("float32", "float16", "dynamic", "int8"):
        assert q in msg
