"""Round trips Keras -> .tflite -> LiteRT for every quantisation variant."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from kdkeras.export import (compare_with_keras, evaluate_tflite, export_saved_model, export_tflite,
                            strip_tensor_names, tflite_size_breakdown)
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
    assert 0 < f32["tensor_name_bytes"] < f32["other_bytes"]


def _tensor_names(path):
    return [t["name"] for t in Interpreter(model_path=path).get_tensor_details()]


def test_strip_names_keeps_outputs_and_signature(trained, dataset, files, tmp_path):
    x, _ = _data(7)
    for q in ("float32", "int8"):
        path = str(tmp_path / f"{q}.tflite")
        export_tflite(trained, path, q, representative_data=dataset if q == "int8" else None,
                      num_representative=48, strip_names=True)
        full = tflite_size_breakdown(files[q])
        stripped = tflite_size_breakdown(path)
        assert stripped["tensor_name_bytes"] == 0
        assert any(_tensor_names(files[q])) and not any(_tensor_names(path))
        # Only the names went: same weights, same parameters, a file smaller by at least them.
        assert stripped["tensor_data_bytes"] == full["tensor_data_bytes"]
        assert stripped["quant_param_bytes"] == full["quant_param_bytes"]
        assert os.path.getsize(path) <= os.path.getsize(files[q]) - full["tensor_name_bytes"]
        np.testing.assert_array_equal(_Runner(path, 1, batched=False).run(x),
                                      _Runner(files[q], 1, batched=False).run(x))
        runner = Interpreter(model_path=path).get_signature_runner()  # signatures survive
        (name, detail), = runner.get_input_details().items()
        feed = x[:1] if q == "float32" else np.zeros(detail["shape"], np.int8)
        assert list(runner(**{name: feed}).values())[0].shape == (1, NUM_CLASSES)
    # The bytes-level function is idempotent on a stripped file.
    with open(path, "rb") as f:
        data = f.read()
    assert len(strip_tensor_names(data)) <= len(data)


def test_variants_share_one_saved_model(trained, files, tmp_path):
    saved = export_saved_model(trained, str(tmp_path / "sm"))
    assert os.path.isfile(os.path.join(saved, "saved_model.pb"))
    x, _ = _data(7)
    for q in ("float32", "dynamic"):
        path = export_tflite(trained, str(tmp_path / f"{q}.tflite"), q, saved_model_dir=saved)
        np.testing.assert_allclose(_Runner(path, 1, batched=False).run(x),
                                   _Runner(files[q], 1, batched=False).run(x), atol=1e-6)
    with pytest.raises(ValueError, match="saved_model.pb") as err:
        export_tflite(trained, str(tmp_path / "m.tflite"), saved_model_dir=str(tmp_path))
    assert repr(str(tmp_path)) in str(err.value)
    assert not (tmp_path / "m.tflite").exists()


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


# ---------------------------------------------------------- mixed int8 granularity
def _schema_model(path):
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        return schema, schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(f.read(), 0))


def _weight_tensors(path):
    """{op kind: [(filter tensor, bias tensor, input tensor, model)]} of conv/dense ops."""
    schema, model = _schema_model(path)
    op = schema.BuiltinOperator
    names = {op.CONV_2D: "conv", op.DEPTHWISE_CONV_2D: "depthwise", op.FULLY_CONNECTED: "dense"}
    found = {}
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if kind is None:
                continue
            w = subgraph.tensors[operator.inputs[1]]
            if kind == "conv":
                kind = "conv1x1" if list(w.shape[1:3]) == [1, 1] else "conv3x3"
            b = subgraph.tensors[operator.inputs[2]]
            found.setdefault(kind, []).append((w, b, subgraph.tensors[operator.inputs[0]], model))
    return found


def _values(model, tensor, dtype):
    return np.frombuffer(bytes(bytearray(model.buffers[tensor.buffer].data)), dtype)


@pytest.fixture(scope="module")
def mobile_block():
    """conv3x3 -> depthwise -> 1x1 conv -> dense, each with BN, trained a little."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.7)(h))
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.7)(h))
    h = keras.layers.Conv2D(16, 1, use_bias=False)(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.7)(h))
    outputs = keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(64, seed=2)
    model.fit(x, y, batch_size=16, epochs=4, verbose=0)
    return model


def test_mixed_granularity_per_tensor_pointwise_only(mobile_block, dataset, tmp_path):
    saved = export_saved_model(mobile_block, str(tmp_path / "sm"))
    paths = {}
    for granularity in ("per_channel", "mixed"):
        paths[granularity] = export_tflite(
            mobile_block, str(tmp_path / f"{granularity}.tflite"), "int8",
            representative_data=dataset, num_representative=48, saved_model_dir=saved,
            weight_granularity=granularity)
    full, mixed = _weight_tensors(paths["per_channel"]), _weight_tensors(paths["mixed"])
    assert sorted(mixed) == ["conv1x1", "conv3x3", "dense", "depthwise"]
    for kind, channels in (("conv3x3", 8), ("depthwise", 8)):  # untouched: per channel
        (w, b, _, _), = mixed[kind]
        assert len(w.quantization.scale) == len(b.quantization.scale) == channels
    for kind, channels in (("conv1x1", 16), ("dense", NUM_CLASSES)):
        (w0, b0, x0, m0), = full[kind]
        (w1, b1, x1, m1), = mixed[kind]
        assert len(w0.quantization.scale) == channels and len(w1.quantization.scale) == 1
        s_c = np.asarray(w0.quantization.scale, np.float64)
        s = w1.quantization.scale[0]
        assert s == pytest.approx(s_c.max())
        # Dequantised weights move by at most half a step of the new scale.
        shape = [channels, -1]
        before = _values(m0, w0, np.int8).reshape(shape) * s_c[:, None]
        after = _values(m1, w1, np.int8).reshape(shape).astype(np.float64) * s
        assert np.max(np.abs(after - before)) <= 0.5 * s + 1e-9
        # Bias in input_scale * s, the scale the integer kernel adds it in.
        in_scale = x1.quantization.scale[0]
        assert b1.quantization.scale[0] == pytest.approx(in_scale * s, rel=1e-6)
        bias_before = _values(m0, b0, np.int32) * np.asarray(b0.quantization.scale, np.float64)
        bias_after = _values(m1, b1, np.int32) * (in_scale * s)
        assert np.max(np.abs(bias_after - bias_before)) <= 0.5 * in_scale * s + 1e-9
    # 2 x (16 - 1) + 2 x (4 - 1) per-channel entries fewer, 12 bytes each.
    b0, b1 = tflite_size_breakdown(paths["per_channel"]), tflite_size_breakdown(paths["mixed"])
    assert b0["quantized_channels"] - b1["quantized_channels"] == 36
    assert b0["quant_param_bytes"] - b1["quant_param_bytes"] == 36 * 12
    assert os.path.getsize(paths["mixed"]) < os.path.getsize(paths["per_channel"])
    # The rewritten model still computes the same function, up to quantisation.
    cmp = compare_with_keras(mobile_block, paths["mixed"], dataset)
    ref = compare_with_keras(mobile_block, paths["per_channel"], dataset)
    scale = np.abs(_keras_logits(mobile_block, dataset)).max()
    assert cmp["max_abs_logit_diff"] < 0.1 * max(1.0, scale)
    assert cmp["top1_agreement"] >= ref["top1_agreement"] - 0.1


def test_weight_granularity_is_checked(trained, tmp_path):
    with pytest.raises(ValueError, match="'per_tensor'.*'per_channel', 'mixed'"):
        export_tflite(trained, str(tmp_path / "a.tflite"), "int8", representative_data=_data(8)[0],
                      weight_granularity="per_tensor")
    with pytest.raises(ValueError, match="int8.*'float16'"):
        export_tflite(trained, str(tmp_path / "b.tflite"), "float16", weight_granularity="mixed")
    assert not list(tmp_path.iterdir())
