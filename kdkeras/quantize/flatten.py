"""One functional graph from a Sequential model or a model with nested models.

Users wrap backbones: `keras.Sequential([MobileNetV2(include_top=False), GAP,
Dense])`, or a functional head around `base(x, training=False)`. The QAT
transform folds each BatchNormalization into the convolution before it and
places quantisation points by walking one graph, so nested models are first
inlined: the same layer objects are called again in a single functional model
(no weights copied, none lost), with the nesting gone.
"""

from __future__ import annotations

import keras
from keras import tree


def graph_of(model: keras.Model):
    """The functional graph behind `model` (a built Sequential's inner one), or None."""
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
    return model if model is not None and getattr(model, "_nodes_by_depth", None) else None


def graph_nodes(model: keras.Model) -> list:
    """The nodes of `model`'s graph, inputs first (by decreasing depth)."""
    by_depth = graph_of(model)._nodes_by_depth
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d]]


def has_nested_models(model: keras.Model) -> bool:
    return any(isinstance(n.operation, keras.Model) for n in graph_nodes(model))


def flatten_model(model: keras.Model) -> keras.Model:
    """`model` as one functional graph: a Sequential's layers, and every nested
    functional or Sequential model inlined (recursively). Returns `model` itself
    when it is already flat and functional. Raises ValueError for a model
    without a graph (subclassed, or a Sequential never built)."""
    if not isinstance(model, keras.Model) or graph_of(model) is None:
        raise ValueError(
            f"prepare_qat needs a functional or built Sequential Keras model, got "
            f"{type(model).__name__} {getattr(model, 'name', '')!r} without a graph (a subclassed "
            "model, or a Sequential without an Input): rebuild it with the functional API.")
    if not isinstance(model, keras.Sequential) and not has_nested_models(model):
        return model
    graph = graph_of(model)
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name)
              for t in graph.inputs]
    outputs = _inline(graph, inputs)
    if isinstance(graph.output, keras.KerasTensor) and len(graph.outputs) == 1:
        outputs = outputs[0]
    flat = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)
    names = [layer.name for layer in flat.layers]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"flattening {model.name!r} for prepare_qat: nested layers share the names "
                         f"{dupes} with others; give them unique names.")
    return flat


def _inline(model: keras.Model, inputs: list) -> list:
    """Call `model`'s layers on `inputs` in graph order; nested models are inlined."""
    graph = graph_of(model)
    if graph is None:
        raise ValueError(f"nested model {model.name!r} ({type(model).__name__}) has no graph to "
                         "inline: build it with the functional API or as a Sequential with an Input.")
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"nested model {model.name!r} takes {len(graph.inputs)} inputs, called with "
                         f"{len(inputs)}; prepare_qat inlines nested models called on their inputs as a list.")
    tensors = {id(t): new for t, new in zip(graph.inputs, inputs)}
    for node in graph_nodes(graph):
        layer = node.operation
        if node.is_input or isinstance(layer, keras.layers.InputLayer):
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        if isinstance(layer, keras.Model):
            outputs = _inline(layer, tree.flatten(args))
            outputs = outputs[0] if len(outputs) == 1 else outputs
        else:
            outputs = layer(*args, **kwargs)
        for old, new in zip(tree.flatten(node.outputs), tree.flatten(outputs)):
            tensors[id(old)] = new
    return [tensors[id(t)] for t in graph.outputs]
