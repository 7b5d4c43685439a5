"""CIFAR-style networks (ResNet, Wide ResNet, VGG) as Keras functional models.

The architectures follow the CIFAR models used by RepDistiller / mdistiller so
that teacher/student pairs and their parameter counts match the KD literature.
Layers carry stable names (see ``kdkeras.models``) because distillation
methods tap intermediate features by layer name.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import keras
from keras import layers

# PyTorch BatchNorm defaults (momentum 0.1 there == 0.9 here), as in the references.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5

# Per-depth VGG configurations: channels of the convs in each of the 5 groups.
VGG_CONFIGS: dict[int, list[list[int]]] = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


# --------------------------------------------------------------------------- #
# Small shared helpers
# --------------------------------------------------------------------------- #
def l2(weight_decay: float) -> keras.regularizers.Regularizer | None:
    """L2 kernel regularizer, or None when weight decay is off (the default)."""
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def scale_width(width: int, multiplier: float) -> int:
    """Channel count scaled by a width multiplier, at least 1."""
    return max(1, int(round(width * multiplier)))


def make_input(input_shape: Sequence[int | None]) -> keras.KerasTensor:
    """Float32 NHWC image input; validates that the shape is (H, W, C)."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels); got {input_shape!r}"
        )
    return keras.Input(shape=input_shape, dtype="float32", name="image")


def logits_head(
    features: keras.KerasTensor,
    num_classes: int,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.KerasTensor:
    """Global-average-pool to the ``embedding`` vector, then the ``logits`` Dense.

    The Dense is forced to float32 so logits stay float32 under mixed precision.
    """
    x = layers.GlobalAveragePooling2D(name="embedding")(features)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(
        num_classes,
        kernel_regularizer=l2(weight_decay),
        dtype="float32",
        name="logits",
    )(x)


def _conv(
    filters: int, kernel: int, stride: int, name: str, weight_decay: float
) -> layers.Conv2D:
    """Bias-free 'same' convolution with He init (BN follows every conv)."""
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=l2(weight_decay),
        name=name,
    )


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
    )


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` as a plain int, or raise ValueError if it is not >= 1."""
    if isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool):
        if num_classes >= 1:
            return int(num_classes)
    raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")


# --------------------------------------------------------------------------- #
# ResNet (post-activation basic blocks)
# --------------------------------------------------------------------------- #
def _resnet_block(
    x: keras.KerasTensor, filters: int, stride: int, prefix: str, weight_decay: float
) -> keras.KerasTensor:
    """Basic block: conv-BN-ReLU-conv-BN (+ projected shortcut) -> Add -> ReLU."""
    y = _conv(filters, 3, stride, f"{prefix}_conv1", weight_decay)(x)
    y = _bn(f"{prefix}_bn1")(y)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(filters, 3, 1, f"{prefix}_conv2", weight_decay)(y)
    y = _bn(f"{prefix}_bn2")(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride, f"{prefix}_shortcut_conv", weight_decay)(x)
        shortcut = _bn(f"{prefix}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{prefix}_preact")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_out")(y)


def _resnet_stage(
    x: keras.KerasTensor,
    filters: int,
    blocks: int,
    stride: int,
    stage: int,
    weight_decay: float,
) -> keras.KerasTensor:
    """``blocks`` basic blocks; only the first one may downsample."""
    for b in range(1, blocks + 1):
        x = _resnet_block(
            x, filters, stride if b == 1 else 1, f"stage{stage}_block{b}", weight_decay
        )
    return x


def build_resnet(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    depth: int,
    widths: Sequence[int] = (16, 16, 32, 64),
    name: str = "resnet",
    width_multiplier: float = 1.0,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """CIFAR ResNet of depth 6n+2; ``widths`` = (stem, stage1, stage2, stage3)."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (>= 8); got {depth}")
    num_classes = check_num_classes(num_classes)
    n = (depth - 2) // 6
    stem, *stage_widths = [scale_width(w, width_multiplier) for w in widths]

    inputs = make_input(input_shape)
    x = _conv(stem, 3, 1, "stem_conv", weight_decay)(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for s, filters in enumerate(stage_widths, start=1):
        x = _resnet_stage(x, filters, n, 1 if s == 1 else 2, s, weight_decay)
    outputs = logits_head(x, num_classes, dropout, weight_decay)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- #
# Wide ResNet (pre-activation basic blocks)
# --------------------------------------------------------------------------- #
def _wrn_block(
    x: keras.KerasTensor, filters: int, stride: int, prefix: str, weight_decay: float
) -> keras.KerasTensor:
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-conv + shortcut -> Add.

    When the shape changes, the 1x1 projection shortcut reads the
    pre-activated input, as in the original WRN code.
    """
    pre = _bn(f"{prefix}_bn1")(x)
    pre = layers.ReLU(name=f"{prefix}_relu1")(pre)
    y = _conv(filters, 3, stride, f"{prefix}_conv1", weight_decay)(pre)
    y = _bn(f"{prefix}_bn2")(y)
    y = layers.ReLU(name=f"{prefix}_relu2")(y)
    y = _conv(filters, 3, 1, f"{prefix}_conv2", weight_decay)(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride, f"{prefix}_shortcut_conv", weight_decay)(pre)
    return layers.Add(name=f"{prefix}_out")([y, shortcut])


def build_wrn(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    depth: int,
    widen: int,
    name: str = "wrn",
    width_multiplier: float = 1.0,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """WRN-depth-widen: stem conv, 3 stages of widths 16k/32k/64k, final BN-ReLU."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"WRN depth must be 6n+4 (>= 10); got {depth}")
    num_classes = check_num_classes(num_classes)
    n = (depth - 4) // 6
    stem = scale_width(16, width_multiplier)
    stage_widths = [scale_width(w * widen, width_multiplier) for w in (16, 32, 64)]

    inputs = make_input(input_shape)
    x = _conv(stem, 3, 1, "stem_conv", weight_decay)(inputs)
    for s, filters in enumerate(stage_widths, start=1):
        for b in range(1, n + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = _wrn_block(x, filters, stride, f"stage{s}_block{b}", weight_decay)
    x = _bn("final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    outputs = logits_head(x, num_classes, dropout, weight_decay)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- #
# VGG with BatchNorm
# --------------------------------------------------------------------------- #
def _vgg_stage(
    x: keras.KerasTensor, channels: Sequence[int], stage: int, weight_decay: float
) -> keras.KerasTensor:
    """conv-BN-ReLU repeated; the last BN is ``stage{s}_preact``, last ReLU ``stage{s}_out``."""
    for i, filters in enumerate(channels, start=1):
        last = i == len(channels)
        x = _conv(filters, 3, 1, f"stage{stage}_conv{i}", weight_decay)(x)
        x = _bn(f"stage{stage}_preact" if last else f"stage{stage}_bn{i}")(x)
        x = layers.ReLU(name=f"stage{stage}_out" if last else f"stage{stage}_relu{i}")(x)
    return x


def _safe_pool(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """2x2 max-pool that never shrinks a spatial dim below 1 (skipped if it would)."""
    pool = tuple(1 if (d is not None and d < 2) else 2 for d in x.shape[1:3])
    if pool == (1, 1):
        return x
    return layers.MaxPooling2D(pool_size=pool, strides=pool, name=name)(x)


def build_vgg(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    depth: int,
    name: str = "vgg",
    width_multiplier: float = 1.0,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """CIFAR VGG-BN: 5 conv groups, max-pool after groups 1-4, global average pool."""
    if depth not in VGG_CONFIGS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}; got {depth}")
    num_classes = check_num_classes(num_classes)
    inputs = make_input(input_shape)
    x = inputs
    config = VGG_CONFIGS[depth]
    for s, channels in enumerate(config, start=1):
        widths = [scale_width(c, width_multiplier) for c in channels]
        x = _vgg_stage(x, widths, s, weight_decay)
        if s < len(config):
            x = _safe_pool(x, f"stage{s}_pool")
    outputs = logits_head(x, num_classes, dropout, weight_decay)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- #
# Registry of the CIFAR-style zoo names -> (builder, fixed architecture kwargs)
# --------------------------------------------------------------------------- #
_X4_WIDTHS = (32, 64, 128, 256)

CIFAR_MODELS: dict[str, tuple] = {
    **{f"resnet{d}": (build_resnet, {"depth": d}) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (build_resnet, {"depth": 8, "widths": _X4_WIDTHS}),
    "resnet32x4": (build_resnet, {"depth": 32, "widths": _X4_WIDTHS}),
    "wrn_16_1": (build_wrn, {"depth": 16, "widen": 1}),
    "wrn_16_2": (build_wrn, {"depth": 16, "widen": 2}),
    "wrn_40_1": (build_wrn, {"depth": 40, "widen": 1}),
    "wrn_40_2": (build_wrn, {"depth": 40, "widen": 2}),
    **{f"vgg{d}": (build_vgg, {"depth": d}) for d in VGG_CONFIGS},
}
