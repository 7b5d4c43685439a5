"""Model zoo: CIFAR-style teachers/students and keras.applications backbones.

Every model is a functional ``keras.Model`` named after its zoo name, taking
float32 NHWC images in [0, 1] and returning float32 logits (no softmax).

Layer-naming contract (distillation methods tap layers by these names):

* CIFAR ResNets (``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``):
  ``stem_relu``; per block ``stage{s}_block{b}_preact`` (the Add, pre-ReLU) and
  ``stage{s}_block{b}_out`` (the ReLU after it).
* Wide ResNets (``wrn_D_K``, pre-activation): ``stem_conv``; per block
  ``stage{s}_block{b}_out`` (the Add); then ``final_bn`` and ``final_relu``.
* VGG (``vgg8``, ``vgg11``, ``vgg13``): per group ``stage{s}_preact`` (the last
  BN) and ``stage{s}_out`` (the last ReLU, before the group's max-pool).
* ``resnet50`` / ``mobilenetv2``: keras.applications' own layer names
  (``conv4_block6_out``, ``block_12_add``, ``out_relu``, ...).
* All CNNs: ``embedding`` (global average pool) and ``logits`` (Dense);
  ``dropout`` sits between them when ``dropout > 0``.
* Vision transformers (``vit_micro``, ``vit_tiny``; with DeiT's distillation
  token ``deit_micro``, ``deit_tiny``; patch 4, for 28-32 px images):
  ``patch_embed``, ``tokens``, per block ``block{b}_attn_add`` and
  ``block{b}_out`` (the Adds), ``final_norm``, ``embedding`` (the class token);
  ``vit_*`` end in the ``logits`` Dense, ``deit_*`` in two heads, ``cls_logits``
  and ``dist_logits`` (on ``dist_embedding``, the distillation token), and
  ``logits``, their average (DeiT's test-time prediction).
* keras-hub students (``hub_deit_micro``: ``deit_micro``'s sizes on a random
  ``keras_hub.models.ViTBackbone``; any keras-hub ViT or DeiT backbone through
  :func:`deit_from_keras_hub`): ``backbone`` (the backbone's final sequence,
  class then distillation token), then ``embedding``, ``dist_embedding``,
  ``cls_logits``, ``dist_logits`` and ``logits`` as ``deit_*``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import keras

from .adapt import adapt_input
from .applications import APPLICATION_MODELS, build_mobilenetv2, build_resnet50, set_bn_momentum
from .cifar import CIFAR_MODELS, build_resnet, build_vgg, build_wrn, check_num_classes
from .hub import HUB_MODELS, DistillationTokenEncoder, deit_from_keras_hub
from .vit import VIT_MODELS, ClassTokens, TakeToken, build_vit

__all__ = [
    "adapt_input",
    "available",
    "get",
    "build_resnet",
    "build_wrn",
    "build_vgg",
    "build_resnet50",
    "build_mobilenetv2",
    "build_vit",
    "ClassTokens",
    "TakeToken",
    "deit_from_keras_hub",
    "DistillationTokenEncoder",
    "set_bn_momentum",
]

_REGISTRY: dict[str, tuple] = {**CIFAR_MODELS, **APPLICATION_MODELS, **VIT_MODELS, **HUB_MODELS}


def available() -> list[str]:
    """Names accepted by :func:`get`, in a stable (registration) order."""
    return list(_REGISTRY)


def get(
    name: str, input_shape: Sequence[int | None], num_classes: int, **kwargs
) -> keras.Model:
    """Build the zoo model ``name`` (case-insensitive) for ``input_shape`` (H, W, C).

    Optional kwargs: ``dropout`` (before the logits, default 0),
    ``weight_decay`` (L2 on kernels, default 0; on ``hub_*`` the heads' only), ``width_multiplier`` for the
    CIFAR nets and ViTs, ``alpha`` (or ``width_multiplier``) for ``mobilenetv2``,
    ``bn_momentum`` for ``resnet50``/``mobilenetv2`` (default 0.9; None keeps
    keras.applications' own).
    Unsupported kwargs raise ``TypeError``.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        names = available()
        closest = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
        hint = f" Did you mean {closest[0]!r}?" if closest else ""
        raise ValueError(
            f"Unknown model name {name!r}.{hint} Accepted names: {', '.join(names)}."
        )
    num_classes = check_num_classes(num_classes)
    _check_widths(kwargs)
    builder, arch_kwargs = _REGISTRY[key]
    return builder(tuple(input_shape), num_classes, name=key, **arch_kwargs, **kwargs)


def _check_widths(kwargs: dict) -> None:
    """A width multiplier (or MobileNetV2's alpha) must be a finite number > 0:
    0 or less would silently build one-channel layers."""
    for name in ("width_multiplier", "alpha"):
        value = kwargs.get(name)
        if value is None:
            continue
        try:
            ok = math.isfinite(float(value)) and float(value) > 0 and not isinstance(value, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a finite number > 0 (1.0 = the published width), got {value!r}.")
