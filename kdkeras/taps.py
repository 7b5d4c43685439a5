"""Tap models: one functional pass that returns the logits and tapped features.

`build_tap_model(net, ["conv3_block4_out", ...])` returns a Keras model that
shares `net`'s layers and weights and outputs `{"logits": ..., name: ...}`,
so a network runs exactly once per step, whatever the number of methods.
Layers inside nested functional models (a keras.applications model inside a
wrapper) are found and tapped too.

The default taps methods pick (stage outputs, pre-ReLU stage outputs, the
embedding) come from `kdkeras.tap_detection` and are importable from here
too, so users can see and override them.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence

import keras

from kdkeras.keys import LOGITS
from kdkeras.tap_detection import (
    embedding_layer,
    is_functional,
    pair_taps,
    preact_stage_outputs,
    stage_outputs,
)

__all__ = [
    "LOGITS", "all_layer_names", "find_layer", "build_tap_model", "build_tap_model_direct", "tap_shapes",
    "model_with_dict_output", "embedding_layer", "pair_taps", "preact_stage_outputs",
    "stage_outputs",
]


def all_layer_names(model: keras.Model) -> list[str]:
    """Every layer name in `model`, nested functional models included."""
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if is_functional(layer):
            names.extend(all_layer_names(layer))
    return names


def find_layer(model: keras.Model, name: str) -> tuple[list[keras.Model], keras.layers.Layer]:
    """Locate layer `name`: returns (path of nested models from `model` down, layer).

    Raises a ValueError naming the closest layer names when it is absent.
    """
    for layer in model.layers:
        if layer.name == name:
            return [model], layer
    for layer in model.layers:
        if is_functional(layer):
            try:
                path, found = find_layer(layer, name)
            except ValueError:
                continue
            return [model] + path, found
    names = all_layer_names(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    raise ValueError(
        f"Layer {name!r} not found in model {model.name!r}. Closest layer names: "
        f"{close or names[-5:]}. Use `kdkeras.taps.all_layer_names(model)` to list all."
    )


def _single_output(model: keras.Model):
    outputs = model.outputs
    if len(outputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(outputs)} outputs; kdkeras expects one "
            "output, the logits."
        )
    return outputs[0]


def _graph_of(model: keras.Model, names: list[str]) -> keras.Model | None:
    """The functional graph whose layers `names` are tapped on (a built Sequential
    model's functional twin, which shares its layers), or None for a subclassed
    model, which can only give its logits."""
    if isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is not None:
        return model._functional
    if is_functional(model):
        return model
    if names:
        raise ValueError(
            f"Model {model.name!r} is not a functional (or Sequential) Keras model, "
            f"so its layers {names} cannot be tapped. Build it with the functional API."
        )
    return None


def tap_shapes(model: keras.Model, layer_names: Iterable[str] = ()) -> dict[str, tuple]:
    """The shapes `build_tap_model(model, layer_names)` outputs (batch dim None), read
    from the layers without building it; unknown names fail as there."""
    names = [n for n in dict.fromkeys(layer_names) if n != LOGITS]
    graph = _graph_of(model, names)
    if graph is None:
        return {k: tuple(v.shape) for k, v in model_with_dict_output(model).output.items()}
    shapes = {LOGITS: tuple(_single_output(graph).shape)}
    for name in names:
        _, layer = find_layer(graph, name)
        shapes[name] = tuple(_layer_output(layer, graph).shape)
    return shapes


def build_tap_model(model: keras.Model, layer_names: Iterable[str] = ()) -> keras.Model:
    """A model sharing `model`'s weights that returns `{"logits", *layer_names}`."""
    names = [n for n in dict.fromkeys(layer_names) if n != LOGITS]
    graph = _graph_of(model, names)
    if graph is None:
        return model_with_dict_output(model)
    model = graph
    located = {name: find_layer(model, name) for name in names}
    if all(len(path) == 1 for path, _ in located.values()):
        outputs = {LOGITS: _single_output(model)}
        for name, (_, layer) in located.items():
            outputs[name] = _layer_output(layer, model)
        return keras.Model(model.input, outputs, name=f"{model.name}_taps")
    return _nested_tap_model(model, located)


def _layer_output(layer, model):
    try:
        return layer.output
    except (AttributeError, ValueError) as err:  # a layer called several times
        raise ValueError(
            f"Layer {layer.name!r} of {model.name!r} has several outputs or is shared; "
            "tap a layer that is called once."
        ) from err


def _nested_tap_model(model: keras.Model, located: dict) -> keras.Model:
    """Re-run `model`'s graph, swapping each nested model that holds a tap for
    its own tap model, so the tapped tensors join the outer graph."""
    by_inner: dict[int, list[str]] = {}
    inner_models: dict[int, keras.Model] = {}
    direct = []
    for name, (path, _) in located.items():
        if len(path) == 1:
            direct.append(name)
        else:
            inner = path[1]
            by_inner.setdefault(id(inner), []).append(name)
            inner_models[id(inner)] = inner
    captured: dict[str, object] = {}
    swaps = {}
    for key, inner in inner_models.items():
        inner_tap = build_tap_model(inner, by_inner[key])

        def swapped(*args, _tap=inner_tap, **kwargs):
            out = _tap(*args, **kwargs)
            for feature, tensor in out.items():
                if feature != LOGITS:
                    captured[feature] = tensor
            return out[LOGITS]

        swaps[key] = swapped

    new_inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"tap_{t.name}")
        for t in model.inputs
    ]
    # Direct taps: run the graph to them as extra outputs of a plain tap model.
    outer = (
        build_tap_model_direct(model, direct) if direct else None
    )
    source = outer if outer is not None else model
    result = source._run_through_graph(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        operation_fn=lambda op: swaps.get(id(op), op),
    )
    if isinstance(result, dict):
        outputs = dict(result)
    else:
        outputs = {LOGITS: result if not isinstance(result, (list, tuple)) else result[0]}
    outputs.update(captured)
    inputs = new_inputs[0] if len(new_inputs) == 1 else new_inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_taps")


def build_tap_model_direct(model: keras.Model, names: Sequence[str]) -> keras.Model:
    outputs = {LOGITS: _single_output(model)}
    for name in names:
        outputs[name] = _layer_output(model.get_layer(name), model)
    return keras.Model(model.input, outputs, name=f"{model.name}_direct_taps")


def model_with_dict_output(model: keras.Model) -> keras.Model:
    """Wrap a subclassed model so it returns `{"logits": ...}` like a tap model."""
    shape = model.input_shape if hasattr(model, "input_shape") else None
    if shape is None:
        raise ValueError(f"Model {model.name!r} must be built before distillation.")
    inp = keras.Input(shape=tuple(shape[1:]))
    return keras.Model(inp, {LOGITS: model(inp)}, name=f"{model.name}_taps")
