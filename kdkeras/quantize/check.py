"""Check a converted .tflite file: every CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED has int8 weights, and no FakeQuant op survived."""

from __future__ import annotations

from kdkeras.export.flatbuffer import require_model, schema

KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def check_int8_kernels(path_or_bytes) -> dict:
    """{"ops": {op name: count}, "kernel_types": {op index: weight type},
    "float_kernels": [ops whose weights are not int8], "fake_quant_ops": n,
    "ok": no float kernel, no FakeQuant op and at least one kernel op}."""
    data = path_or_bytes
    if not isinstance(data, (bytes, bytearray)):
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    model = require_model(data, "check_int8_kernels")
    s = schema()
    op_names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    ops: dict[str, int] = {}
    float_kernels, kernel_types = [], {}
    for g, subgraph in enumerate(model.subgraphs):
        for i, operator in enumerate(subgraph.operators):
            name = op_names.get(codes[operator.opcodeIndex], str(codes[operator.opcodeIndex]))
            ops[name] = ops.get(name, 0) + 1
            if name in KERNEL_OPS:
                weights = subgraph.tensors[operator.inputs[1]]
                kind = type_names.get(weights.type, str(weights.type))
                kernel_types[f"{g}:{i}:{name}"] = kind
                if kind != "INT8":
                    float_kernels.append(f"{name} #{i} ({kind})")
    fake = ops.get("FAKE_QUANT", 0)
    return {"ops": ops, "kernel_types": kernel_types, "float_kernels": float_kernels,
            "fake_quant_ops": fake, "ok": not float_kernels and not fake and bool(kernel_types)}
