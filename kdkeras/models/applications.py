"""ImageNet-style backbones from ``keras.applications`` with a logits head.

The backbone is built with ``weights=None`` directly on the (optionally
resized) input tensor via ``input_tensor=``, so its layers (``conv4_block6_out``,
``block_12_add``, ...) live in the returned model's own functional graph
instead of a nested sub-model, and distillation methods can tap them by name.

With ``weights=None`` and ``input_tensor=`` keras.applications accepts any
channel count; the only real constraint is spatial size (the applications
document a 32x32 minimum), so smaller inputs are upsampled with a ``Resizing``
layer named ``resize``.

BatchNormalization momentum defaults to 0.9 (PyTorch's 0.1), like the CIFAR
zoo, instead of keras.applications' 0.999/0.99: with 0.999 the moving
statistics need thousands of steps to follow the batches, so a network trained
for a few epochs scores near chance in inference mode while its training
accuracy climbs. ``bn_momentum=None`` keeps keras.applications' values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

from .cifar import logits_head, make_input

MIN_SIZE = 32
DEFAULT_BN_MOMENTUM = 0.9


def set_bn_momentum(model: keras.Model, momentum: float | None) -> keras.Model:
    """Set the momentum of every BatchNormalization layer of `model` (nested models too).

    `None` leaves the model unchanged. Takes effect on the next trace, so call
    it before `compile`/`fit`. Returns `model`.
    """
    if momentum is None:
        return model
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"bn_momentum must be a float in [0, 1) or None, got {momentum!r}")
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)
        elif isinstance(layer, keras.Model):
            set_bn_momentum(layer, momentum)
    return model


def _prepare(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Upsample inputs smaller than 32x32 (per spatial dim) so the backbone accepts them."""
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None or (height >= MIN_SIZE and width >= MIN_SIZE):
        return inputs
    size = (max(height, MIN_SIZE), max(width, MIN_SIZE))
    return layers.Resizing(*size, interpolation="bilinear", name="resize")(inputs)


def _add_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """Put an L2 penalty on every Conv2D kernel of an already-built backbone."""
    if not weight_decay:
        return
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            layer.kernel_regularizer = keras.regularizers.L2(weight_decay)
            layer.kernel.regularizer = layer.kernel_regularizer


def _build(
    backbone_fn: Callable[..., keras.Model],
    input_shape: Sequence[int | None],
    num_classes: int,
    name: str,
    dropout: float,
    weight_decay: float,
    bn_momentum: float | None,
    **backbone_kwargs,
) -> keras.Model:
    inputs = make_input(input_shape)
    backbone = backbone_fn(
        include_top=False,
        weights=None,
        input_tensor=_prepare(inputs),
        **backbone_kwargs,
    )
    _add_weight_decay(backbone, weight_decay)
    set_bn_momentum(backbone, bn_momentum)
    outputs = logits_head(backbone.output, num_classes, dropout, weight_decay)
    return keras.Model(inputs, outputs, name=name)


def build_resnet50(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    name: str = "resnet50",
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    bn_momentum: float | None = DEFAULT_BN_MOMENTUM,
) -> keras.Model:
    """keras.applications ResNet50 (random init) + ``embedding`` GAP + ``logits`` Dense."""
    return _build(
        keras.applications.ResNet50, input_shape, num_classes, name, dropout, weight_decay,
        bn_momentum,
    )


def build_mobilenetv2(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    name: str = "mobilenetv2",
    alpha: float | None = None,
    width_multiplier: float | None = None,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    bn_momentum: float | None = DEFAULT_BN_MOMENTUM,
) -> keras.Model:
    """keras.applications MobileNetV2 (random init); ``alpha`` (alias ``width_multiplier``) scales widths."""
    if alpha is not None and width_multiplier is not None and alpha != width_multiplier:
        raise ValueError(
            f"Give alpha or width_multiplier, not both (alpha={alpha}, "
            f"width_multiplier={width_multiplier})"
        )
    alpha = alpha if alpha is not None else width_multiplier
    return _build(
        keras.applications.MobileNetV2,
        input_shape,
        num_classes,
        name,
        dropout,
        weight_decay,
        bn_momentum,
        alpha=1.0 if alpha is None else alpha,
    )


APPLICATION_MODELS: dict[str, tuple] = {
    "resnet50": (build_resnet50, {}),
    "mobilenetv2": (build_mobilenetv2, {}),
}
