"""Distillation methods, one class per method; `get("kd")` builds one by name."""

from kdkeras.methods.base import (
    Method,
    from_spec,
    get,
    method_names,
    parse_method_args,
    register_method,
)
from kdkeras.methods.logits import KD

__all__ = ["Method", "KD", "from_spec", "get", "method_names", "parse_method_args", "register_method"]
