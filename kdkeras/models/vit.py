"""Small vision transformers for 28-32 px images, with or without DeiT's distillation token.

A ViT student cuts the image into `patch` x `patch` patches, embeds each
(`patch_embed`), prepends learned tokens and adds learned position embeddings
(`tokens`), runs `depth` pre-norm transformer blocks and normalises
(`final_norm`). Without a distillation token (`vit_*`) the class token feeds the
`logits` Dense. With one (`deit_*`, Touvron et al., ICML 2021) the class token
feeds the class head `cls_logits` and the distillation token the distillation
head `dist_logits`; the model's output `logits` is their average, DeiT's
prediction at test time, so `predict`, evaluation and export see it while a
method (`deit`) reads each head through its layer name.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from kdkeras.keys import CLS_HEAD, DIST_HEAD
from kdkeras.models.cifar import check_num_classes, l2, make_input

_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="kdkeras")
class ClassTokens(layers.Layer):
    """Prepend `num_tokens` learned tokens (class, then distillation) to a
    (B, N, D) sequence of patch embeddings and add learned position embeddings
    of shape (1, num_tokens + N, D); both initialised N(0, 0.02) truncated, as DeiT."""

    def __init__(self, num_tokens: int = 1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
            raise ValueError(f"num_tokens must be an int >= 1 (1: class token, 2: and distillation), "
                             f"got {num_tokens!r}.")
        self.num_tokens = num_tokens

    def build(self, input_shape):
        _, length, dim = input_shape
        if length is None or dim is None:
            raise ValueError(f"ClassTokens needs a static sequence length and width, got {input_shape}.")
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.tokens = self.add_weight(shape=(1, self.num_tokens, dim), initializer=init, name="tokens")
        self.position = self.add_weight(shape=(1, self.num_tokens + length, dim), initializer=init,
                                        name="position")

    def call(self, x):
        batch = ops.shape(x)[0]
        tokens = ops.broadcast_to(ops.cast(self.tokens, x.dtype), (batch, self.num_tokens, x.shape[-1]))
        return ops.concatenate([tokens, x], axis=1) + ops.cast(self.position, x.dtype)

    def compute_output_shape(self, input_shape):
        batch, length, dim = input_shape
        return (batch, None if length is None else length + self.num_tokens, dim)

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens}


@keras.saving.register_keras_serializable(package="kdkeras")
class TakeToken(layers.Layer):
    """The token at `index` of a (B, N, D) sequence, shape (B, D)."""

    def __init__(self, index: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"index must be an int >= 0, got {index!r}.")
        self.index = index

    def call(self, x):
        return x[:, self.index]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "index": self.index}


def _block(x, dim: int, heads: int, mlp_dim: int, prefix: str, weight_decay: float):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) (GELU)."""
    h = layers.LayerNormalization(epsilon=_NORM_EPSILON, name=f"{prefix}_norm1")(x)
    h = layers.MultiHeadAttention(heads, dim // heads, kernel_regularizer=l2(weight_decay),
                                  name=f"{prefix}_attn")(h, h)
    x = layers.Add(name=f"{prefix}_attn_add")([x, h])
    h = layers.LayerNormalization(epsilon=_NORM_EPSILON, name=f"{prefix}_norm2")(x)
    h = layers.Dense(mlp_dim, activation="gelu", kernel_regularizer=l2(weight_decay), name=f"{prefix}_mlp1")(h)
    h = layers.Dense(dim, kernel_regularizer=l2(weight_decay), name=f"{prefix}_mlp2")(h)
    return layers.Add(name=f"{prefix}_out")([x, h])


def _head(x, num_classes: int, name: str, weight_decay: float):
    """A float32 Dense on one token (logits stay float32 under mixed precision)."""
    return layers.Dense(num_classes, kernel_regularizer=l2(weight_decay), dtype="float32", name=name)(x)


def build_vit(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    patch: int = 4,
    dim: int = 96,
    depth: int = 6,
    heads: int = 3,
    mlp_ratio: float = 2.0,
    distillation_token: bool = False,
    name: str = "vit",
    width_multiplier: float = 1.0,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """A ViT of `depth` blocks of width `dim` (times `width_multiplier`, rounded to
    a multiple of `heads`) on `patch` x `patch` patches; with `distillation_token`
    a DeiT student whose output is the mean of its class and distillation heads."""
    num_classes = check_num_classes(num_classes)
    for what, value in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ViT {what} must be an int >= 1, got {value!r}.")
    width = max(heads, int(round(dim * width_multiplier / heads)) * heads)
    inputs = make_input(input_shape)
    size = tuple(input_shape)[:2]
    if any(s is None or s % patch for s in size):
        raise ValueError(f"ViT input height and width must be multiples of the patch size {patch}, "
                         f"got {size}: resize the images (the data pipeline's image_size) or pick another patch.")
    x = layers.Conv2D(width, patch, strides=patch, kernel_regularizer=l2(weight_decay), name="patch_embed")(inputs)
    x = layers.Reshape((-1, width), name="patch_tokens")(x)
    x = ClassTokens(2 if distillation_token else 1, name="tokens")(x)
    mlp_dim = max(1, int(round(width * mlp_ratio)))
    for b in range(1, depth + 1):
        x = _block(x, width, heads, mlp_dim, f"block{b}", weight_decay)
    x = layers.LayerNormalization(epsilon=_NORM_EPSILON, name="final_norm")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    cls = TakeToken(0, name="embedding")(x)
    if not distillation_token:
        return keras.Model(inputs, _head(cls, num_classes, "logits", weight_decay), name=name)
    z_cls = _head(cls, num_classes, CLS_HEAD, weight_decay)
    z_dist = _head(TakeToken(1, name="dist_embedding")(x), num_classes, DIST_HEAD, weight_decay)
    outputs = layers.Average(dtype="float32", name="logits")([z_cls, z_dist])
    return keras.Model(inputs, outputs, name=name)


_TINY = {"patch": 4, "dim": 96, "depth": 6, "heads": 3, "mlp_ratio": 2.0}
_MICRO = {"patch": 4, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0}

VIT_MODELS: dict[str, tuple] = {
    "vit_micro": (build_vit, _MICRO),
    "vit_tiny": (build_vit, _TINY),
    "deit_micro": (build_vit, {**_MICRO, "distillation_token": True}),
    "deit_tiny": (build_vit, {**_TINY, "distillation_token": True}),
}
