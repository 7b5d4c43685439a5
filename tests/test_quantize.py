"""Quantisation-aware training (kdkeras.quantize): fake-quant arithmetic against
NumPy, BN folding, straight-through gradients, int8 export parity with LiteRT,
bad input, save/load, and distillation of a QAT student."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import kdkeras
from kdkeras import quantize as q
from kdkeras.export import evaluate_tflite
from kdkeras.export.flatbuffer import read_model
from kdkeras.tap_detection import embedding_layer, stage_outputs


def _mobile_block(input_shape=(16, 16, 3), num_classes=5, name="mobile"):
    """conv-BN-ReLU6, depthwise-BN-ReLU, 1x1 conv-BN (linear), Add, GAP, Dense."""
    inp = keras.Input(input_shape, name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = layers.BatchNormalization(name="dw_bn")(y)
    y = layers.ReLU(name="dw_relu")(y)
    y = layers.Conv2D(8, 1, use_bias=False, name="project")(y)
    y = layers.BatchNormalization(name="project_bn")(y)
    x = layers.Add(name="block_add")([x, y])
    x = layers.ReLU(name="block_out")(x)
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inp, layers.Dense(num_classes, name="logits")(x), name=name)


def _randomise_bn(model, seed=0):
    """Moving statistics and affine parameters far from the identity, so folding matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, c), rng.normal(0, 0.3, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])
    return model


def _images(n=256, shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def _numpy_int8_symmetric(w, axis):
    """Independent reference: scale = max|w| / 127 per channel, round half up, -127..127."""
    if axis is None:
        m = np.abs(w).max()
    else:
        m = np.abs(np.moveaxis(w, axis, -1)).reshape(-1, w.shape[axis]).max(0)
        shape = [1] * w.ndim
        shape[axis] = -1
        m = m.reshape(shape)
    scale = m / 127.0
    return np.clip(np.floor(w / scale + 0.5), -127, 127) * scale, scale


@pytest.mark.parametrize("axis", [-1, None])
def test_weight_fake_quant_is_symmetric_int8(axis):
    w = np.random.default_rng(1).normal(0, 1, (3, 3, 4, 6)).astype("float32")
    w[..., 2] *= 0.01  # one narrow channel: per-channel scales must differ
    expected, scale = _numpy_int8_symmetric(w.astype(np.float64), axis)
    got = keras.ops.convert_to_numpy(q.fake_quant_weights(w, axis))
    np.testing.assert_allclose(got, expected, atol=1e-6 * np.max(scale) * 127)
    levels = got / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # on the int8 grid
    assert np.abs(np.round(levels)).max() == 127


def test_bn_folding_equals_float_model_without_fake_quant():
    model = _randomise_bn(_mobile_block())
    qat = q.prepare_qat(model)
    x = _images(32)
    q.set_fake_quant(qat, False)
    np.testing.assert_allclose(qat(x).numpy(), model(x, training=False).numpy(), atol=1e-4)
    # The folded kernel and bias, recomputed with NumPy from the float layers.
    bn, conv = model.get_layer("dw_bn"), model.get_layer("dw")
    gamma, beta, mean, var = [np.asarray(v, np.float64) for v in bn.get_weights()]
    scale = gamma / np.sqrt(var + bn.epsilon)
    kernel = np.asarray(conv.get_weights()[0], np.float64) * scale.reshape(-1, 1)
    folded_kernel, folded_bias = qat.get_layer("dw").folded_kernel_and_bias()
    np.testing.assert_allclose(folded_kernel.numpy(), kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded_bias.numpy(), beta - mean * scale, atol=1e-6)
    # The statistics are frozen; gamma, beta and the float kernel are what trains.
    dw = qat.get_layer("dw")
    assert {id(v) for v in dw.trainable_weights} == {id(dw.kernel), id(dw.bn_gamma), id(dw.bn_beta)}


def test_prepare_keeps_names_and_drops_folded_bn():
    model = _mobile_block()
    plan = q.plan_qat(model, {"pointwise": "per_tensor"})
    qat = q.prepare_qat(model, {"pointwise": "per_tensor"})
    names = {layer.name for layer in qat.layers}
    assert plan.removed == ["dw_bn", "project_bn", "stem_bn"]
    assert names == {layer.name for layer in model.layers} - set(plan.removed) | {"input_quant"}
    assert qat.get_layer("project").weight_quant == "per_tensor"
    assert qat.get_layer("stem").weight_quant == "per_channel"
    assert qat.get_layer("logits").weight_quant == "per_tensor"
    # ReLU6/ReLU after a conv quantise for it (TFLite fuses them); the linear 1x1 does not.
    assert not qat.get_layer("stem").quantize_output and qat.get_layer("project").quantize_output
    assert not qat.get_layer("block_add").quantize_output  # fused with block_out
    # No variable is shared with the float model.
    assert not {id(v) for v in qat.weights} & {id(v) for v in model.weights}
    stem = model.get_layer("stem").kernel.numpy().copy()
    qat.get_layer("stem").kernel.assign(np.zeros_like(stem))
    np.testing.assert_array_equal(model.get_layer("stem").kernel.numpy(), stem)


def _levels_numpy(kernel, gamma, variance, eps, depthwise):
    """Independent reference of `channel_levels`: fold the BN scale per output
    channel, then 127 * channel max |w| / tensor max |w|."""
    scale = gamma / np.sqrt(variance + eps)
    if depthwise:  # (H, W, C, 1): output channel c
        peak = np.abs(kernel[..., 0] * scale).reshape(-1, kernel.shape[2]).max(0)
    else:
        peak = np.abs(kernel * scale).reshape(-1, kernel.shape[-1]).max(0)
    return 127 * peak / peak.max()


def test_auto_granularity_is_per_tensor_only_where_one_scale_fits():
    model = _mobile_block()
    for layer in model.layers:  # every kernel channel of the same range...
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            kernel = np.sign(np.random.default_rng(1).normal(size=layer.kernel.shape)).astype("float32")
            layer.kernel.assign(kernel * np.random.default_rng(2).uniform(0.5, 1.0, kernel.shape))
    plan = q.plan_qat(model, "auto")
    assert plan.weights == {"stem": "per_tensor", "dw": "per_tensor", "project": "per_tensor",
                            "logits": "per_tensor"}
    bn = model.get_layer("dw_bn")  # ...until the folded BN shrinks one of the eight channels 100x
    gamma = np.ones(8, "float32")
    gamma[3] = 0.01
    bn.set_weights([gamma, np.zeros(8), np.zeros(8), np.ones(8)])
    dw = model.get_layer("dw")
    np.testing.assert_allclose(q.channel_levels(dw, bn), _levels_numpy(
        dw.kernel.numpy(), gamma, np.ones(8), bn.epsilon, True), rtol=1e-5)
    assert q.channel_levels(dw, bn)[3] < 2 and q.channel_levels(dw)[3] > 60  # the BN, not the kernel
    assert q.auto_granularity(dw, bn) == "per_channel" and q.auto_granularity(dw) == "per_tensor"
    plan = q.plan_qat(model, q.WEIGHT_PRESETS["auto"])
    assert plan.weights["dw"] == "per_channel" and plan.weights["stem"] == "per_tensor"
    assert plan.weights["project"] == "per_tensor"  # the preset keeps 1x1 convs per tensor
    qat = q.prepare_qat(model, q.WEIGHT_PRESETS["auto"])
    assert qat.get_layer("dw").weight_quant == "per_channel" and qat.get_layer("stem").weight_quant == "per_tensor"
    # one channel in fifty may be coarse: 1 of 8 is too many, and a looser bound accepts it
    assert q.auto_granularity(dw, bn, max_coarse=0.2) == "per_tensor"


def _backbone(input_shape=(16, 16, 3)):
    """The mobile block without its head, as a model of its own (a keras.applications-style base)."""
    full = _mobile_block(input_shape)
    return keras.Model(full.input, full.get_layer("block_out").output, name="backbone")


@pytest.mark.parametrize("wrapper", ["sequential", "functional"])
def test_nested_backbones_are_inlined(wrapper):
    """A user's Sequential([base, GAP, Dense]) or functional head around
    base(x, training=False) quantises like the flat model: BN folded across the
    nesting, the same outputs with fake quant off, the backbone's taps by name."""
    base = _randomise_bn(_backbone())
    if wrapper == "sequential":
        model = keras.Sequential([keras.Input((16, 16, 3)), base, layers.GlobalAveragePooling2D(name="gap"),
                                  layers.Dense(5, name="logits")], name="user")
    else:
        inp = keras.Input((16, 16, 3), name="image")
        x = layers.GlobalAveragePooling2D(name="gap")(base(inp, training=False))
        model = keras.Model(inp, layers.Dense(5, name="logits")(x), name="user")
    plan = q.plan_qat(model)
    assert plan.removed == ["dw_bn", "project_bn", "stem_bn"] and not plan.unsupported
    qat = q.prepare_qat(model)
    assert not any(isinstance(layer, keras.Model) for layer in qat.layers)
    assert {"stem", "dw", "project", "block_add", "gap", "logits"} <= {layer.name for layer in qat.layers}
    x = _images(16)
    np.testing.assert_allclose(q.set_fake_quant(qat, False)(x).numpy(), model(x).numpy(), atol=1e-5)
    assert base.get_layer("stem").kernel is not None and len(model.layers) == (3 if wrapper == "sequential" else 4)


def test_a_model_without_a_graph_is_named():
    with pytest.raises(ValueError, match="Sequential without an Input"):
        q.prepare_qat(keras.Sequential([layers.Dense(3)], name="unbuilt"))
    with pytest.raises(ValueError, match="functional or built Sequential.*str"):
        q.prepare_qat("model.keras")


def test_gradients_are_straight_through():
    qat = q.prepare_qat(_mobile_block())
    x = _images(16)
    q.calibrate_ranges(qat, x, 1)
    dense = qat.get_layer("logits")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(qat(x)))
    grads = tape.gradient(loss, qat.trainable_weights)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert all(np.abs(g.numpy()).max() > 0 for g in grads)
    # STE: d loss / d W equals d loss / d W_q at W_q = fake_quant(W) (identity inside the range).
    embedding = qat.get_layer("embedding").output
    features = keras.Model(qat.input, embedding)(x)
    wq = tf.constant(dense.quantized_kernel())  # logits has no BN: its kernel is not folded
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(wq)
        out_w = dense(features)
        out_q = dense.quantize_activation(tf.matmul(features, wq) + dense.bias)
        l_w, l_q = tf.reduce_sum(tf.square(out_w)), tf.reduce_sum(tf.square(out_q))
    np.testing.assert_allclose(tape.gradient(l_w, dense.kernel).numpy(),
                               tape.gradient(l_q, wq).numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A QAT model with calibrated ranges, labels from its float twin, and both int8 exports."""
    keras.utils.set_random_seed(3)
    model = _randomise_bn(_mobile_block(), seed=3)
    x = _images(256, seed=3)
    labels = model.predict(x, verbose=0).argmax(-1)
    qat = q.prepare_qat(model, {"pointwise": "per_tensor"})
    q.calibrate_ranges(qat, x[:128], 4)
    directory = tmp_path_factory.mktemp("qat")
    int8 = q.export_qat_tflite(qat, str(directory / "int8.tflite"))
    floating = q.export_qat_tflite(qat, str(directory / "float.tflite"), io="float")
    return qat, x, labels, int8, floating


def test_litert_int8_matches_fake_quant_keras(exported):
    qat, x, labels, int8, floating = exported
    keras_logits = qat.predict(x, verbose=0)
    keras_top1 = np.mean(keras_logits.argmax(-1) == labels)
    for path in (int8, floating):
        result = evaluate_tflite(path, (x, labels), latency_runs=1, warmup_runs=0)
        agreement = np.mean(result["logits"].argmax(-1) == keras_logits.argmax(-1))
        assert agreement >= 0.97, (path, agreement)
        assert abs(result["top1"] - keras_top1) * 100 <= 0.2 + 1e-9, (path, result["top1"], keras_top1)


def test_flatbuffer_has_int8_kernels_and_no_fake_quant(exported):
    _, _, _, int8, floating = exported
    for path in (int8, floating):
        report = q.check_int8_kernels(path)
        assert report["ok"] and not report["float_kernels"] and report["fake_quant_ops"] == 0
        assert report["ops"]["CONV_2D"] == 2 and report["ops"]["DEPTHWISE_CONV_2D"] == 1
        assert report["ops"]["FULLY_CONNECTED"] == 1
    graph = read_model(open(int8, "rb").read()).subgraphs[0]
    io_types = {graph.tensors[i].type for i in list(graph.inputs) + list(graph.outputs)}
    assert io_types == {9}  # TensorType.INT8
    graph = read_model(open(floating, "rb").read()).subgraphs[0]
    assert {graph.tensors[i].type for i in list(graph.inputs) + list(graph.outputs)} == {0}  # FLOAT32
    # The trained scales reach the file: the input scale is the calibrated range / 255.
    model = read_model(open(int8, "rb").read())
    layer = exported[0].get_layer("input_quant")
    lo, hi = min(float(layer.range_min.numpy()), 0.0), float(layer.range_max.numpy())
    scale = model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].quantization.scale[0]
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-3)


def test_flatbuffer_check_flags_float_kernels(tmp_path):
    float_file = tmp_path / "f.tflite"
    kdkeras.export.export_tflite(_mobile_block(), str(float_file), "float32")
    report = q.check_int8_kernels(str(float_file))
    assert not report["ok"] and len(report["float_kernels"]) == 4


@pytest.mark.parametrize("make", [
    lambda x: layers.SeparableConv2D(4, 3, name="sep")(x),
    lambda x: layers.Conv1D(4, 3, name="sep")(layers.Reshape((16, 48))(x)),
])
def test_unsupported_layer_is_named(make):
    inp = keras.Input((16, 16, 3))
    x = make(inp)
    model = keras.Model(inp, layers.Dense(2, name="logits")(layers.Flatten()(x)))
    kind = type(model.get_layer("sep")).__name__
    with pytest.raises(ValueError, match=rf"'sep' of type {kind}.*Conv2D, DepthwiseConv2D, Dense"):
        q.prepare_qat(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = q.prepare_qat(model, unsupported="float")
    assert any("'sep'" in str(w.message) for w in caught)
    assert type(qat.get_layer("sep")) is type(model.get_layer("sep"))
    assert isinstance(qat.get_layer("sep_quant"), q.ActivationQuantizer)
    x = _images(4)
    np.testing.assert_allclose(q.set_fake_quant(qat, False)(x).numpy(), model(x).numpy(), atol=1e-5)


def test_bad_arguments_name_the_value():
    model = _mobile_block()
    with pytest.raises(ValueError, match="'grouped'.*per_channel"):
        q.prepare_qat(model, {"conv": "grouped"})
    with pytest.raises(ValueError, match=r"\['spatial'\].*pointwise"):
        q.prepare_qat(model, {"spatial": "per_tensor"})
    with pytest.raises(ValueError, match="'skip'"):
        q.prepare_qat(model, unsupported="skip")
    with pytest.raises(ValueError, match="already quantised"):
        q.prepare_qat(q.prepare_qat(model))


def test_export_of_unprepared_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="prepare_qat"):
        q.export_qat_tflite(_mobile_block(), str(tmp_path / "x.tflite"))
    with pytest.raises(ValueError, match="'uint8'"):
        q.export_qat_tflite(q.prepare_qat(_mobile_block()), str(tmp_path / "x.tflite"), io="uint8")


def test_save_load_round_trip(tmp_path):
    qat = q.prepare_qat(_randomise_bn(_mobile_block()))
    x = _images(16)
    q.calibrate_ranges(qat, x, 2)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in qat.layers]
    assert loaded.get_layer("stem").get_config() == qat.get_layer("stem").get_config()
    np.testing.assert_allclose(loaded(x).numpy(), qat(x).numpy(), atol=1e-6)
    assert float(loaded.get_layer("block_out").range_max.numpy()) == pytest.approx(
        float(qat.get_layer("block_out").range_max.numpy()))


@pytest.mark.parametrize("name, kwargs", [("resnet8", {}), ("mobilenetv2", {"alpha": 0.35})])
def test_zoo_models_keep_their_taps(name, kwargs):
    model = kdkeras.models.get(name, (32, 32, 3), 10, **kwargs)
    qat = q.prepare_qat(model)
    assert stage_outputs(qat) == stage_outputs(model)
    assert embedding_layer(qat) == embedding_layer(model) == "embedding"
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in qat.layers)
    x = _images(4, (32, 32, 3))
    np.testing.assert_allclose(q.set_fake_quant(qat, False)(x).numpy(), model(x).numpy(),
                               atol=1e-3, rtol=1e-3)


def _distill(teacher, student, methods):
    x = _images(64, (16, 16, 3), seed=5)
    y = np.random.default_rng(5).integers(0, 5, 64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    q.calibrate_ranges(student, ds, 1)
    distiller = kdkeras.Distiller(teacher, student, methods, student_loss_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller.fit(ds, epochs=1, verbose=0).history


@pytest.mark.parametrize("self_distil", [False, True])
def test_distiller_trains_qat_student_with_kd_and_at(self_distil):
    float_student = _randomise_bn(_mobile_block(name="student"))
    teacher = float_student if self_distil else _mobile_block(name="teacher")
    student = q.prepare_qat(float_student)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [v.numpy().copy() for v in student.trainable_weights]
    methods = [kdkeras.methods.KD(), kdkeras.methods.AT()]
    history = _distill(teacher, student, methods)
    assert all(np.isfinite(history[k][-1]) for k in ("loss", "kd", "at"))
    moved = [not np.allclose(a, v.numpy()) for a, v in zip(student_before, student.trainable_weights)]
    assert all(moved)
    for a, b in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert float(student.get_layer("block_out").range_count.numpy()) > 1  # ranges tracked in training


@pytest.mark.e2e
@pytest.mark.parametrize("teacher", ["self", "tiny"])
def test_qat_distill_recipe(tiny_teacher, tmp_path, teacher):
    from kdkeras.experiment import RunConfig, setup_data
    from tests.helpers import TINY, run_recipe

    payload = run_recipe(
        "qat_distill", f"--student={tiny_teacher.path}", f"--output_dir={tmp_path}",
        f"--teacher={'self' if teacher == 'self' else tiny_teacher.path}", "--latency_runs=2",
        "--method=kd+at", *TINY)
    entry = payload["qat_int8"]
    assert payload["float_top1"] == pytest.approx(tiny_teacher.top1)
    assert entry["int8_kernels"] and entry["num_examples"] == 64
    test = setup_data(RunConfig(test_limit=64, batch_size=64), (28, 28, 1)).test
    again = evaluate_tflite(str(tmp_path / entry["file"]), test, latency_runs=1, warmup_runs=0)
    assert entry["top1"] == pytest.approx(again["top1"])
    assert (tmp_path / "qat_distill.md").exists() and (tmp_path / "student_qat.keras").exists()
