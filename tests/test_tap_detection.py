"""Default tap detection: stage outputs, pre-ReLU stages, embedding, pairing."""

import keras
import pytest

import kdkeras
from kdkeras import tap_detection as td
from tests.helpers import tiny_cnn

ZOO = {
    "resnet20": (
        ["stage1_block3_out", "stage2_block3_out", "stage3_block3_out"],
        ["stage1_block3_preact", "stage2_block3_preact", "stage3_block3_preact"],
    ),
    # pre-activation blocks: the Adds, then the final BN-ReLU at the last resolution
    "wrn_16_2": (
        ["stage1_block2_out", "stage2_block2_out", "final_relu"],
        ["stage1_block2_out", "stage2_block2_out", "final_bn"],
    ),
    "vgg8": (
        [f"stage{s}_out" for s in range(1, 6)],
        [f"stage{s}_preact" for s in range(1, 6)],
    ),
    "resnet50": (
        ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"],
        ["conv2_block3_add", "conv3_block4_add", "conv4_block6_add", "conv5_block3_add"],
    ),
    "mobilenetv2": (
        ["block_2_add", "block_5_add", "block_12_add", "out_relu"],
        ["block_2_add", "block_5_add", "block_12_add", "Conv_1_bn"],
    ),
}


@pytest.fixture(scope="module")
def zoo():
    return {name: kdkeras.models.get(name, (32, 32, 3), 10) for name in ZOO}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_stage_outputs_preact_and_embedding(zoo, name):
    model = zoo[name]
    stages, preact = ZOO[name]
    assert td.stage_outputs(model) == stages
    assert td.preact_stage_outputs(model) == preact
    assert td.embedding_layer(model) == "embedding"


def test_detected_taps_build_a_tap_model_with_shrinking_maps(zoo):
    model = zoo["resnet50"]
    names = td.stage_outputs(model)
    tap = kdkeras.taps.build_tap_model(model, names + [td.embedding_layer(model)])
    sizes = [tap.output[n].shape[1] for n in names]
    assert sizes == [8, 4, 2, 1] and tap.output["embedding"].shape == (None, 2048)


def test_mobilenetv2_on_small_grayscale_input():
    model = kdkeras.models.get("mobilenetv2", (28, 28, 1), 10, alpha=0.35)
    assert td.stage_outputs(model) == ZOO["mobilenetv2"][0]


def test_plain_functional_cnn_and_sequential():
    assert td.stage_outputs(tiny_cnn()) == ["relu1", "relu2"]
    assert td.preact_stage_outputs(tiny_cnn()) == ["bn1", "conv2"]
    assert td.preact_stage_outputs(tiny_cnn(batchnorm=False)) == ["conv1", "conv2"]
    seq = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
            keras.layers.MaxPooling2D(name="p1"),
            keras.layers.Conv2D(8, 3, padding="same", name="c2"),
            keras.layers.Activation("relu", name="a2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dropout(0.1, name="drop"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    # a Conv2D with a fused activation is not a stage output; the pooled map
    # has no activation of its own, so only the second stage is found
    assert td.stage_outputs(seq) == ["a2"]
    assert td.preact_stage_outputs(seq) == ["c2"]
    assert td.embedding_layer(seq) == "flat"


def test_residual_cnn_skips_stem_and_takes_relu_after_add():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = keras.layers.ReLU(name="stem_relu")(x)  # 16x16, before any residual Add: skipped
    for i, stride in enumerate((2, 2), start=1):
        y = keras.layers.Conv2D(8, 3, strides=stride, padding="same", name=f"b{i}_conv")(x)
        s = keras.layers.AveragePooling2D(stride, name=f"b{i}_pool")(x) if stride > 1 else x
        x = keras.layers.Add(name=f"b{i}_add")([y, s])
        x = keras.layers.ReLU(name=f"b{i}_relu")(x)
        x = keras.layers.Conv2D(8, 1, name=f"b{i}_expand")(x)
        x = keras.layers.ReLU(name=f"b{i}_expand_relu")(x)  # after the Add: not the stage output
    # ... except at the last resolution, whose last activation is pooled by the head
    out = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    model = keras.Model(inp, out)
    assert td.stage_outputs(model) == ["b1_relu", "b2_expand_relu"]
    assert td.preact_stage_outputs(model) == ["b1_add", "b2_expand"]
    assert td.embedding_layer(model) == "gap"


def test_nested_backbone_is_walked():
    inner = tiny_cnn(width=8, name="backbone")
    inp = keras.Input((8, 8, 1))
    outer = keras.Model(inp, inner(inp), name="wrapper")
    assert td.stage_outputs(outer) == ["relu1", "relu2"]
    assert td.embedding_layer(outer) == "embedding"
    # a headless backbone inside a classifier
    base = keras.Model(inner.input, inner.get_layer("embedding").output, name="base")
    x = keras.Input((8, 8, 1))
    clf = keras.Model(x, keras.layers.Dense(3, name="head")(keras.layers.Dropout(0.2)(base(x))))
    assert td.embedding_layer(clf) == "embedding"
    assert td.stage_outputs(clf) == ["relu1", "relu2"]


def test_applications_classifier_with_top():
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5, include_top=True
    )
    pool = [layer.name for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    assert td.embedding_layer(model) == pool[0]


def test_pair_taps_keeps_the_deepest():
    assert td.pair_taps(["a", "b", "c", "d"], ["x", "y"]) == (["c", "d"], ["x", "y"])
    assert td.pair_taps(["a"], ["x", "y", "z"]) == (["a"], ["z"])
    assert td.pair_taps(["a", "b"], ["x", "y"]) == (["a", "b"], ["x", "y"])


def test_clear_errors():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="not a functional"):
        td.stage_outputs(Sub())
    inp = keras.Input((4,))
    mlp = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(3, activation="relu")(inp)))
    with pytest.raises(ValueError, match="No stage outputs"):
        td.stage_outputs(mlp)
    with pytest.raises(ValueError, match="reads the model input"):
        td.embedding_layer(keras.Model(inp, keras.layers.Dense(2)(inp)))


def test_methods_default_taps_on_zoo_pair(zoo):
    from kdkeras.methods import AB, AT, FitNet
    from kdkeras.methods.relations import RKD, SP

    methods = [AT(), FitNet(), AB(), SP(), RKD()]
    plan = kdkeras.Distiller(zoo["vgg8"], zoo["resnet20"], methods).plan
    at, fitnet, ab, sp, rkd = (plan.entry(m) for m in methods)
    assert at.teacher == ("stage3_out", "stage4_out", "stage5_out")
    assert list(at.student) == ZOO["resnet20"][0]
    assert ab.teacher == ("stage3_preact", "stage4_preact", "stage5_preact")
    assert fitnet.teacher == ("stage3_out",) and fitnet.student == ("stage2_block3_out",)
    assert tuple(methods[1].regressors[0].compute_output_shape((None, 16, 16, 32))) == (None, 8, 8, 256)
    assert sp.teacher == ("stage5_out",) and rkd.student == ("embedding",)
    assert all(m.teacher_layers is None and m.student_layers is None for m in methods)  # none changed


def test_squeeze_excitation_gates_are_not_stages():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.ReLU(name="relu_a")(keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(inp))
    g = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)  # 1x1 maps
    g = keras.layers.ReLU(name="se_relu")(keras.layers.Conv2D(2, 1, name="se_reduce")(g))
    g = keras.layers.Activation("sigmoid", name="se_gate")(keras.layers.Conv2D(8, 1, name="se_expand")(g))
    x = keras.layers.Multiply(name="se_scale")([x, g])
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv_b")(x)
    x = keras.layers.ReLU(name="relu_b")(x)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    assert td.stage_outputs(keras.Model(inp, out)) == ["relu_a", "relu_b"]
