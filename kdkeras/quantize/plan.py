"""What `prepare_qat` will do to a functional model, decided before any layer
is built: which BatchNormalization folds into which layer, each kernel's
weight granularity, where the quantisation points go, what is unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from .fake_quant import GRANULARITIES

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
UNSUPPORTED_POLICIES = ("error", "float")
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
    bad = {k: v for k, v in weights.items() if v not in GRANULARITIES}
    if bad:
        raise ValueError(f"unknown weight granularity {bad}; expected one of {list(GRANULARITIES)}")
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


def _graph_nodes(model) -> list:
    by_depth = model._nodes_by_depth
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d]]


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
    if not isinstance(model, keras.Model) or not getattr(model, "_nodes_by_depth", None):
        raise ValueError(f"prepare_qat needs a functional (or built Sequential) Keras model, "
                         f"got {type(model).__name__}")
    granularity = resolve_weights(weights)
    nodes = _graph_nodes(model)
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
        if isinstance(layer, keras.Model):
            bad.append((layer, "nested model (flatten it: build the backbone with input_tensor=)"))
            continue
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
            plan.weights[layer.name] = granularity[weight_kind(layer)]
            out = node
            if len(consumers[id(node)]) == 1 and isinstance(
                    consumers[id(node)][0].operation, keras.layers.BatchNormalization):
                out = consumers[id(node)][0]
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
