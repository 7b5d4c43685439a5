"""What `prepare_qat` will do to a functional model, decided before any layer
is built: which BatchNormalization folds into which layer, each kernel's
weight granularity, where the quantisation points go, what is unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from .fake_quant import GRANULARITIES
from .flatten import flatten_model, graph_nodes
from .folding import bn_weights, fold

#: layer kinds whose weight granularity can be chosen ("pointwise" = 1x1 Conv2D)
WEIGHT_KINDS = ("conv", "pointwise", "depthwise", "dense")
DEFAULT_WEIGHTS = {"conv": "per_channel", "pointwise": "per_channel", "depthwise": "per_channel",
                   "dense": "per_tensor"}
#: layers with weights that the transform turns into quantised ones
SUPPORTED_WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
                      keras.layers.BatchNormalization)
#: weightless layers that keep their input's scale in TFLite (no quantisation point after them)
SAME_SCALE = (keras.layers.ZeroPadding2D, keras.layers.MaxPooling2D, keras.layers.Flatten,
              keras.layers.Reshape, keras.layers.Dropout, keras.layers.Cropping2D,
              keras.layers.GlobalMaxPooling2D, keras.layers.Identity, keras.layers.SpatialDropout2D,
              keras.layers.ActivityRegularization, keras.layers.Permute)
#: named weight settings the recipes take (--weights, --qat_weights): "mixed" is per tensor for 1x1
#: convs and the classifier, per channel elsewhere; "auto" also keeps a 3x3/depthwise conv per
#: tensor where one scale fits it (`auto_granularity`), for the smallest file that still trains
WEIGHT_PRESETS = {
    "per_channel": "per_channel",
    "per_tensor": "per_tensor",
    "mixed": {"pointwise": "per_tensor", "dense": "per_tensor"},
    "auto": {"conv": "auto", "depthwise": "auto", "pointwise": "per_tensor", "dense": "per_tensor"},
}
UNSUPPORTED_POLICIES = ("error", "float")
#: what a layer kind's weights may be: a granularity, or "auto" (per layer: per tensor where it fits)
WEIGHT_CHOICES = (*GRANULARITIES, "auto")
#: "auto" keeps a layer per tensor when at most AUTO_MAX_COARSE of its live output channels get
#: fewer than AUTO_MIN_LEVELS of the 127 int8 steps under the tensor's one scale
AUTO_MIN_LEVELS = 16
AUTO_MAX_COARSE = 0.02
KERNEL_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _channel_last(bn) -> bool:
    rank = len(bn.input.shape)
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    return len(axes) == 1 and int(axes[0]) % rank == rank - 1


def supported_types() -> str:
    """The layer types the transform handles, for error messages and docs."""
    weighted = ", ".join(t.__name__ for t in SUPPORTED_WEIGHTED)
    return (f"{weighted} (folded into the Conv2D/DepthwiseConv2D/Dense before it), and layers "
            "without weights (activations, Add, pooling, padding, reshaping, ...)")


def is_fusable_activation(layer) -> bool:
    """True for a ReLU/ReLU6 that TFLite fuses into the conv/dense/add before it."""
    if isinstance(layer, keras.layers.ReLU):
        return (not float(layer.negative_slope) and not float(layer.threshold)
                and layer.max_value in (None, 6.0, 6))
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("relu", "relu6")
    return False


def weight_kind(layer) -> str:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    return "pointwise" if tuple(layer.kernel_size) == (1, 1) else "conv"


def resolve_weights(weights: str | dict | None) -> dict:
    """{kind: granularity} from one granularity for all kinds or a partial dict."""
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if isinstance(weights, str):
        weights = {kind: weights for kind in WEIGHT_KINDS}
    unknown = sorted(set(weights) - set(WEIGHT_KINDS))
    if unknown:
        raise ValueError(f"unknown layer kind(s) {unknown} in weights; expected {list(WEIGHT_KINDS)}")
    bad = {k: v for k, v in weights.items() if v not in WEIGHT_CHOICES}
    if bad:
        raise ValueError(f"unknown weight granularity {bad}; expected one of {list(WEIGHT_CHOICES)}")
    return {**DEFAULT_WEIGHTS, **weights}


@dataclass
class QATPlan:
    """The decisions of `plan_qat`, by layer name."""

    folded: dict = field(default_factory=dict)          # BN name -> layer it folds into
    weights: dict = field(default_factory=dict)         # kernel layer name -> granularity
    fused: list = field(default_factory=list)           # layers whose output an activation quantises
    unsupported: dict = field(default_factory=dict)     # layer name -> type, left float

    @property
    def removed(self) -> list[str]:
        """Layer names of the float model that the QAT model no longer has."""
        return sorted(self.folded)


def channel_levels(layer, bn=None) -> np.ndarray:
    """For each output channel of `layer` (BatchNormalization `bn` folded in, as
    the int8 file holds it): the int8 steps, of 127, that its largest weight
    spans under one scale for the whole tensor (`127 * max_c / max`)."""
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    if bn is not None:
        kernel = keras.ops.convert_to_numpy(
            fold(kernel, None, *bn_weights(bn), float(bn.epsilon), depthwise=depthwise)[0])
    channels = kernel.reshape(-1, kernel.shape[2] * kernel.shape[3]) if depthwise \
        else kernel.reshape(-1, kernel.shape[-1])
    peak = np.abs(channels).max(axis=0)
    return 127.0 * peak / max(float(peak.max()), 1e-12)


def auto_granularity(layer, bn=None, min_levels: float = AUTO_MIN_LEVELS,
                     max_coarse: float = AUTO_MAX_COARSE) -> str:
    """"per_tensor" when one scale fits `layer`'s (folded) kernel: at most
    `max_coarse` of its live output channels (any weight non-zero) span fewer
    than `min_levels` int8 steps; else "per_channel". Per tensor stores one
    scale and zero point for the kernel and one for the bias instead of one per
    channel (24 bytes a channel), which on depthwise layers (9 weights a
    channel) is most of the file's overhead."""
    levels = channel_levels(layer, bn)
    live = levels[levels > 0]
    if live.size == 0:
        return "per_tensor"
    return "per_tensor" if float(np.mean(live < min_levels)) <= max_coarse else "per_channel"


def _consumers(nodes) -> dict:
    out = {id(n): [] for n in nodes}
    for n in nodes:
        for p in n.parent_nodes:
            if id(p) in out:
                out[id(p)].append(n)
    return out


def plan_qat(model: keras.Model, weights: str | dict | None = None,
             unsupported: str = "error") -> QATPlan:
    """Decide folding, granularities and quantisation points for `model`."""
    from .layers import QAT_LAYERS

    if unsupported not in UNSUPPORTED_POLICIES:
        raise ValueError(f"unsupported={unsupported!r}; expected one of {list(UNSUPPORTED_POLICIES)}")
    model = flatten_model(model)  # nested backbones and Sequential models: one graph
    granularity = resolve_weights(weights)
    nodes = graph_nodes(model)
    consumers = _consumers(nodes)
    plan = QATPlan()
    bad = []
    for node in nodes:
        layer = node.operation
        if node.is_input or isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, QAT_LAYERS):
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) is already quantised: "
                             "prepare_qat takes the float model")
        if isinstance(layer, keras.layers.BatchNormalization):
            parents = node.parent_nodes
            ok = (len(parents) == 1 and type(parents[0].operation) in KERNEL_TYPES
                  and len(consumers[id(parents[0])]) == 1 and _channel_last(layer))
            if ok:
                plan.folded[layer.name] = parents[0].operation.name
                continue
            bad.append((layer, "BatchNormalization not directly after a Conv2D/DepthwiseConv2D/Dense"))
            continue
        if type(layer) in KERNEL_TYPES:
            out = node
            if len(consumers[id(node)]) == 1 and isinstance(
                    consumers[id(node)][0].operation, keras.layers.BatchNormalization):
                out = consumers[id(node)][0]
            choice = granularity[weight_kind(layer)]
            if choice == "auto":
                bn = out.operation if out is not node and _channel_last(out.operation) else None
                choice = auto_granularity(layer, bn)
            plan.weights[layer.name] = choice
            after = consumers[id(out)]
            if len(after) == 1 and is_fusable_activation(after[0].operation):
                plan.fused.append(layer.name)
            continue
        if isinstance(layer, keras.layers.Add):
            after = consumers[id(node)]
            if len(after) == 1 and is_fusable_activation(after[0].operation):
                plan.fused.append(layer.name)
            continue
        if isinstance(layer, keras.layers.Layer) and layer.weights:
            bad.append((layer, "a layer with weights of a type the QAT transform does not handle"))
    for layer, why in bad:
        if unsupported == "error":
            raise ValueError(
                f"prepare_qat cannot quantise layer {layer.name!r} of type {type(layer).__name__}: "
                f"{why}. Supported: {supported_types()}. Pass unsupported='float' to leave such "
                "layers in float (with a quantisation point after them).")
        plan.unsupported[layer.name] = type(layer).__name__
    return plan
