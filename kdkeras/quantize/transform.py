"""`prepare_qat`: rebuild a float functional CNN as its fake-quant twin.

Conv2D, DepthwiseConv2D and Dense become their `Quant*` subclasses with the
BatchNormalization after them folded in (the BN layers disappear, their names
with them); ReLU/ReLU6, Add and global average pooling become subclasses whose
output is a quantisation point; the model input gets one (`input_quant`), and
so does any other weightless op that changes value ranges (`<name>_quant`).
Every surviving layer keeps its name, so the Distiller's taps still resolve.
The new model copies the float weights and shares no variable with it.
"""

from __future__ import annotations

import warnings

import keras
from keras import tree

from . import layers as qlayers
from .folding import BN_WEIGHTS, bn_weights
from .layers import DEFAULT_EMA_DECAY
from .flatten import flatten_model, graph_nodes
from .plan import SAME_SCALE, QATPlan, plan_qat

_KERNEL_CLASSES = {keras.layers.Conv2D: qlayers.QuantConv2D,
                   keras.layers.DepthwiseConv2D: qlayers.QuantDepthwiseConv2D,
                   keras.layers.Dense: qlayers.QuantDense}
_OUTPUT_CLASSES = ((keras.layers.ReLU, qlayers.QuantReLU),
                   (keras.layers.Activation, qlayers.QuantActivation),
                   (keras.layers.Add, qlayers.QuantAdd),
                   (keras.layers.GlobalAveragePooling2D, qlayers.QuantGlobalAveragePooling2D),
                   (keras.layers.AveragePooling2D, qlayers.QuantAveragePooling2D))


def _quant_class(layer):
    for base, quantized in _OUTPUT_CLASSES:
        if type(layer) is base:
            return quantized
    return None


def _kernel_layer(layer, bn, plan: QATPlan, ema_decay: float):
    """The Quant* twin of a Conv2D/DepthwiseConv2D/Dense (with `bn` folded), weights set later."""
    config = layer.get_config()
    config.update(bn_epsilon=None if bn is None else float(bn.epsilon),
                  weight_quant=plan.weights[layer.name],
                  quantize_output=layer.name not in plan.fused, ema_decay=ema_decay)
    return _KERNEL_CLASSES[type(layer)].from_config(config)


def _set_kernel_weights(new_layer, layer, bn) -> None:
    """Copy the float kernel, bias and (frozen-statistics) BN weights into `new_layer`."""
    new_layer.kernel.assign(keras.ops.convert_to_numpy(layer.kernel))
    if layer.use_bias:
        new_layer.bias.assign(keras.ops.convert_to_numpy(layer.bias))
    if bn is not None:
        for name, value in zip(BN_WEIGHTS, bn_weights(bn)):
            getattr(new_layer, name).assign(value)


def _copy_layer(layer):
    """A fresh layer with `layer`'s config (no shared variables)."""
    return layer.__class__.from_config(layer.get_config())


def prepare_qat(
    model: keras.Model,
    weights: str | dict | None = None,
    *,
    unsupported: str = "error",
    ema_decay: float = DEFAULT_EMA_DECAY,
    name: str | None = None,
) -> keras.Model:
    """The fake-quant (quantisation-aware training) twin of a float functional CNN
    (a Sequential one, or one with nested models such as a keras.applications
    backbone, is inlined into one graph first: `flatten_model`).

    `weights`: one granularity ("per_channel" or "per_tensor") for every kernel,
    or a dict by layer kind, e.g. `{"conv": "per_channel", "depthwise":
    "per_channel", "pointwise": "per_tensor", "dense": "per_tensor"}` (1x1
    convolutions are "pointwise"; missing kinds take `DEFAULT_WEIGHTS`). A kind
    set to "auto" is decided per layer from its folded kernel: per tensor where
    one scale fits it (`auto_granularity`), per channel elsewhere;
    `WEIGHT_PRESETS` names the usual settings.
    `unsupported="error"` (default) refuses layers with weights it cannot
    quantise, naming them; "float" leaves them float with a warning and a
    quantisation point after them. A BatchNormalization after a kernel layer is
    folded into it in every step with its moving statistics, which stay frozen
    (gamma and beta train). Activation ranges start empty: the
    first training batch (or `calibrate_ranges`) sets them.
    """
    model = flatten_model(model)  # nested backbones and Sequential models: one graph
    plan = plan_qat(model, weights, unsupported)
    for layer_name, type_name in plan.unsupported.items():
        warnings.warn(f"prepare_qat: layer {layer_name!r} ({type_name}) is left in float",
                      stacklevel=2)
    bn_of = {conv: bn for bn, conv in plan.folded.items()}
    tensors: dict[int, object] = {}
    weight_jobs = []  # (copied float layer, its weights)
    kernel_jobs = []  # (Quant* kernel layer, float layer, folded BN or None)
    inputs = []
    for tensor in model.inputs:
        new = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                          name=tensor._keras_history.operation.name)
        inputs.append(new)
        quant_name = "input_quant" if len(model.inputs) == 1 else f"{new.name}_quant"
        tensors[id(tensor)] = qlayers.ActivationQuantizer(ema_decay=ema_decay, name=quant_name)(new)
    for node in graph_nodes(model):
        layer = node.operation
        if node.is_input or isinstance(layer, keras.layers.InputLayer):
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name in plan.folded:
            outputs = args[0]  # folded into the layer that produced it
        elif type(layer) in _KERNEL_CLASSES:
            bn = model.get_layer(bn_of[layer.name]) if layer.name in bn_of else None
            new_layer = _kernel_layer(layer, bn, plan, ema_decay)
            outputs = new_layer(*args, **kwargs)
            kernel_jobs.append((new_layer, layer, bn))
        elif not isinstance(layer, keras.layers.Layer):  # a raw op (`x + y`): stateless
            outputs = qlayers.ActivationQuantizer(ema_decay=ema_decay)(layer(*args, **kwargs))
        else:
            quant_class = _quant_class(layer)
            if quant_class is not None:
                config = {**layer.get_config(), "ema_decay": ema_decay,
                          "quantize_output": layer.name not in plan.fused}
                new_layer = quant_class.from_config(config)
                outputs = new_layer(*args, **kwargs)
            else:
                new_layer = _copy_layer(layer)
                outputs = new_layer(*args, **kwargs)
                if layer.weights:
                    weight_jobs.append((new_layer, layer.get_weights()))
                if not isinstance(layer, SAME_SCALE):
                    outputs = tree.map_structure(
                        lambda t, n=layer.name: qlayers.ActivationQuantizer(
                            ema_decay=ema_decay, name=f"{n}_quant")(t), outputs)
        for old, new in zip(tree.flatten(node.outputs), tree.flatten(outputs)):
            tensors[id(old)] = new
    outputs = tree.map_structure(lambda t: tensors[id(t)], model.outputs)
    if isinstance(model.output, keras.KerasTensor) and len(model.outputs) == 1:
        outputs = outputs[0]
    qat = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs,
                      name=name or f"{model.name}_qat")
    for new_layer, values in weight_jobs:
        new_layer.set_weights(values)
    for job in kernel_jobs:
        _set_kernel_weights(*job)
    return qat


def is_qat_model(model) -> bool:
    """True when `model` has fake-quant layers (the output of `prepare_qat`)."""
    return isinstance(model, keras.Model) and any(
        isinstance(layer, qlayers.QAT_LAYERS) for layer in model.layers)


def set_fake_quant(model: keras.Model, enabled: bool) -> keras.Model:
    """Switch every fake-quant op of `model` on or off (off = the folded float
    arithmetic). Takes effect on the next trace: call the model eagerly or
    recompile. Returns `model`."""
    for layer in model.layers:
        if isinstance(layer, qlayers.QAT_LAYERS):
            layer.fake_quant_enabled = bool(enabled)
    return model


def calibrate_ranges(model: keras.Model, data, num_batches: int = 8) -> keras.Model:
    """Set the activation ranges of a QAT model from `num_batches` batches of
    `data` (anything `kdkeras.export.batches.iter_batches` reads), without
    changing its weights. Returns `model`."""
    from kdkeras.export.batches import iter_batches

    seen = 0
    for x, _ in iter_batches(data, num_batches):
        model(x, training=True)  # updates the moving ranges only (BN is folded, no optimizer)
        seen += 1
    if not seen:
        raise ValueError("calibrate_ranges: data yielded no batches")
    return model
