"""DeiT students from keras-hub's vision-transformer backbones.

`deit_from_keras_hub(backbone, num_classes)` gives a keras-hub backbone DeiT's
two heads with the zoo's `deit_*` contract: `embedding` (the class token) feeds
`cls_logits`, `dist_embedding` (the distillation token) feeds `dist_logits`, and
the output `logits` is their average. A `ViTBackbone` gets a distillation token
(and its own position embedding) inserted after its class token by
`DistillationTokenEncoder`, which reruns the backbone's own layers, so the
transformer blocks and final norm are the backbone's variables. A `DeiTBackbone`
already has one, so it is used whole. keras-hub is optional (`pip install
kdkeras[hub]`); only the zoo's `hub_deit_micro` (the `deit_micro` sizes on a
random `ViTBackbone`) imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from kdkeras.keys import CLS_HEAD, DIST_HEAD
from kdkeras.models.cifar import check_num_classes, l2
from kdkeras.models.vit import _MICRO, TakeToken

_CLASS_TOKEN, _DIST_TOKEN = "class_token", "distillation_token"
_ACCEPTED = ("a keras-hub ViTBackbone (with use_class_token=True) or DeiTBackbone, or any functional "
             "backbone that is a chain of one-input layers, one of which owns a `class_token` "
             "weight, ending in a (batch, tokens, width) sequence")


def _owns(layer, name: str) -> bool:
    """Whether `layer` itself (or one of its sublayers) owns a variable called `name`."""
    return any(v.path.split("/")[-1] == name for v in layer.weights)


def _chain(backbone: keras.Model) -> tuple[list, int]:
    """The backbone's layers after its input, checked to form one chain, and the
    index of the one holding the class token; a ValueError naming the backbone's
    class and what is accepted otherwise."""
    kind = type(backbone).__name__
    if not isinstance(backbone, keras.Model) or not hasattr(backbone, "operations") or \
            len(backbone.inputs or []) != 1 or len(backbone.outputs or []) != 1:
        raise ValueError(f"deit_from_keras_hub needs {_ACCEPTED}; got {kind}, not a one-input, "
                         "one-output functional model.")
    chain = [layer for layer in backbone.layers if not isinstance(layer, layers.InputLayer)]
    previous = backbone.inputs[0]
    for layer in chain:
        try:
            same = layer.input is previous
        except (AttributeError, ValueError):  # a layer called several times has no single input
            same = False
        if not same:
            raise ValueError(f"deit_from_keras_hub needs {_ACCEPTED}; {kind}'s layer {layer.name!r} "
                             "does not take the previous layer's output alone, so there is no single "
                             "place to insert a distillation token.")
        previous = layer.output
    tokens = [i for i, layer in enumerate(chain) if _owns(layer, _CLASS_TOKEN)]
    if len(tokens) != 1:
        found = "no layer" if not tokens else f"{len(tokens)} layers"
        raise ValueError(f"deit_from_keras_hub needs {_ACCEPTED}; {kind} has {found} owning a "
                         f"`{_CLASS_TOKEN}` weight (a ViTBackbone needs use_class_token=True).")
    shape = chain[tokens[0]].output.shape
    if len(shape) != 3 or backbone.outputs[0].shape[-1] != shape[-1]:
        raise ValueError(f"deit_from_keras_hub needs {_ACCEPTED}; {kind}'s class-token layer "
                         f"{chain[tokens[0]].name!r} gives shape {shape} and the backbone "
                         f"{backbone.outputs[0].shape}, not two (batch, tokens, width) sequences.")
    return chain, tokens[0]


@keras.saving.register_keras_serializable(package="kdkeras")
class DistillationTokenEncoder(layers.Layer):
    """Run a keras-hub ViT backbone's own layers with DeiT's distillation token
    inserted right after the class token: (B, H, W, C) images to the backbone's
    final (B, 2 + N, D) sequence, class token first, distillation token second.

    The token and its position embedding are learned (1, 1, D) weights,
    initialised N(0, 0.02) truncated as the zoo's `ClassTokens`; every other
    weight is the backbone's, which this layer tracks and calls."""

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        chain, self._token_index = _chain(backbone)
        self._names = [layer.name for layer in chain]  # names, so the layers are tracked once, as the backbone's
        self._dim = chain[self._token_index].output.shape[-1]
        self.backbone = backbone

    def build(self, input_shape):
        dim = self._dim
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.token = self.add_weight(shape=(1, 1, dim), initializer=init, name="distillation_token")
        self.position = self.add_weight(shape=(1, 1, dim), initializer=init, name="distillation_position")

    def call(self, images):
        x = images
        for i, name in enumerate(self._names):
            x = self.backbone.get_layer(name)(x)
            if i == self._token_index:
                token = ops.cast(self.token + self.position, x.dtype)
                token = ops.broadcast_to(token, (ops.shape(x)[0], 1, x.shape[-1]))
                x = ops.concatenate([x[:, :1], token, x[:, 1:]], axis=1)
        return x

    def compute_output_shape(self, input_shape):
        batch, length, dim = self.backbone.outputs[0].shape
        return (input_shape[0], None if length is None else length + 1, dim)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def _has_distillation_token(backbone) -> bool:
    return isinstance(backbone, keras.Model) and _owns(backbone, _DIST_TOKEN) and _owns(backbone, _CLASS_TOKEN)


def deit_from_keras_hub(
    backbone: keras.Model,
    num_classes: int,
    *,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """A DeiT student on a keras-hub ViT backbone (random or preset weights),
    with the zoo's `deit_*` heads (`cls_logits`, `dist_logits`) and output (their mean).

    A ViTBackbone gets a distillation token inserted after its class token; a
    DeiTBackbone's own distillation token is used. The backbone's transformer
    layers and final norm are reused, so training the student trains them.
    `dropout` sits before the heads, `weight_decay` is an L2 on the heads' kernels.
    Raises a ValueError naming the backbone's class when its graph has no class
    token to insert a distillation token beside.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.ViTBackbone(image_shape=(8, 8, 1), patch_size=4,
    ...     num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    >>> student = deit_from_keras_hub(backbone, 3)
    >>> [student.get_layer(n).output.shape for n in ("backbone", "logits")]
    [(None, 6, 8), (None, 3)]
    """
    num_classes = check_num_classes(num_classes)
    if _has_distillation_token(backbone):
        encoder = backbone  # keras-hub's DeiT: [class, distillation, patches], used whole
    else:
        encoder = DistillationTokenEncoder(backbone, name="backbone")  # checks the graph
    inputs = keras.Input(backbone.inputs[0].shape[1:], name="images")
    x = encoder(inputs)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)

    def head(token, index, head_name):
        emb = TakeToken(index, name="embedding" if index == 0 else "dist_embedding")(token)
        return layers.Dense(num_classes, kernel_regularizer=l2(weight_decay), dtype="float32",
                            name=head_name)(emb)

    z_cls, z_dist = head(x, 0, CLS_HEAD), head(x, 1, DIST_HEAD)
    outputs = layers.Average(dtype="float32", name="logits")([z_cls, z_dist])
    return keras.Model(inputs, outputs, name=name or "hub_deit")


def _keras_hub():
    """keras_hub, or an ImportError saying how to install it."""
    try:
        import keras_hub
    except ImportError as err:  # pragma: no cover - the test extra installs it
        raise ImportError("The hub_* students build keras-hub backbones: pip install 'kdkeras[hub]' "
                          "(keras-hub==0.32.0).") from err
    return keras_hub


def build_hub_deit(
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    patch: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    name: str = "hub_deit",
    width_multiplier: float = 1.0,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The zoo's DeiT sizes on a randomly initialised keras-hub ViTBackbone (no
    preset: built offline from its config), through :func:`deit_from_keras_hub`."""
    width = max(heads, int(round(dim * width_multiplier / heads)) * heads)
    backbone = _keras_hub().models.ViTBackbone(
        image_shape=tuple(input_shape), patch_size=patch, num_layers=depth, num_heads=heads,
        hidden_dim=width, mlp_dim=max(1, int(round(width * mlp_ratio))), name=f"{name}_backbone")
    return deit_from_keras_hub(backbone, num_classes, dropout=dropout, weight_decay=weight_decay, name=name)


HUB_MODELS: dict[str, tuple] = {"hub_deit_micro": (build_hub_deit, _MICRO)}
