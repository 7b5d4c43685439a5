# Kept: no hand-written parsing here, it wraps TensorFlow's generated LiteRT schema (ModelT) and flatbuffer_utils (ai_edge_litert bundles the same two; no gain in switching); the `tflite` PyPI package 2.18.0 has only accessors and low-level builder calls (no ModelT object API), so writing the rewrites back would mean re-serialising every table by hand.
"""Read and write a .tflite flatbuffer as TensorFlow's mutable schema objects.

The size breakdown, name stripping and the weight-granularity rewrite all
parse the file into `schema_py_generated.ModelT` and (for the rewrites) pack
it back; this module is the one place that does either.
"""

from __future__ import annotations


def schema():
    """TensorFlow's generated LiteRT schema module, or None where it moved."""
    try:
        from tensorflow.lite.python import schema_py_generated  # noqa: PLC0415
    except ImportError:  # pragma: no cover - moved in a future TensorFlow
        return None
    return schema_py_generated


def read_model(flatbuffer: bytes):
    """The mutable `ModelT` of `flatbuffer`, or None without the schema module."""
    module = schema()
    if module is None:  # pragma: no cover
        return None
    return module.ModelT.InitFromObj(module.Model.GetRootAsModel(bytes(flatbuffer), 0))


def require_model(flatbuffer: bytes, user: str):
    """`read_model`, raising RuntimeError (naming `user`) without the schema module."""
    model = read_model(flatbuffer)
    if model is None:  # pragma: no cover
        raise RuntimeError(f"{user} needs tensorflow.lite.python.schema_py_generated")
    return model


def write_model(model) -> bytes:
    """`model` (a `ModelT`) packed back into .tflite bytes."""
    from tensorflow.lite.tools import flatbuffer_utils  # noqa: PLC0415

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
