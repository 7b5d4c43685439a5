"""Methods by name: the registry `register_method` fills, `get`, `from_spec`, and
the parsers of the recipes' `KEY=VALUE` argument strings."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import keras

from kdkeras.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(*names: str):
    """Class decorator: make a method constructible by name and serializable.

    The first name is the method's own (its default term name); the others are
    aliases that `get` and `from_spec` accept too."""

    def decorate(cls):
        cls = keras.saving.register_keras_serializable(package="kdkeras")(cls)
        for name in names:
            _REGISTRY[name.lower()] = cls
        cls._registered_name = names[0].lower() if names else None
        return cls

    return decorate


def method_names() -> list[str]:
    """The lower-case names that `get` accepts, aliases included."""
    return sorted(_REGISTRY)


def registered_methods() -> list[str]:
    """Each registered method class once, under its own name (aliases such as
    `tfkd_reg` -> `virtual_teacher` dropped), in the order of `method_names`."""
    by_class: dict[type, str] = {}
    for name in method_names():
        cls = _REGISTRY[name]
        by_class.setdefault(cls, getattr(cls, "_registered_name", None) or name)
    return list(by_class.values())


def method_class(name: str) -> type[Method]:
    """The class registered under `name` (case-insensitive); a ValueError naming
    the accepted names (and the closest) for an unknown one."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown distillation method {name!r}. Accepted: "
            f"{method_names()}.{hint}"
        )
    return _REGISTRY[key]


def get(name: str, **kwargs: Any) -> Method:
    """Build a method from its lower-case name (`"kd"`, `"at"`, ...)."""
    return method_class(name)(**kwargs)


def _parse_value(text: str):
    """`"4"` -> 4, `"0.5"` -> 0.5, `"true"` -> True, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_kwargs(text: str | None, example: str = "'width_multiplier=0.5,dropout=0.1'") -> dict[str, Any]:
    """`"width_multiplier=0.5,dropout=0.1"` -> `{"width_multiplier": 0.5, "dropout": 0.1}`
    (numbers, true/false and none parsed; anything else kept as a string)."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Bad argument {item!r} in {text!r}: expected KEY=VALUE, e.g. {example}.")
        out[key.strip()] = _parse_value(value)
    return out


def parse_method_args(text: str | Mapping | None) -> dict[str, dict[str, Any]]:
    """`"kd.temperature=2,at.weight=500"` -> `{"kd": {"temperature": 2}, "at": {"weight": 500}}`;
    an already nested mapping is returned as a copy (one dict per method)."""
    if isinstance(text, Mapping):
        return {method: dict(args) for method, args in text.items()}
    out: dict[str, dict[str, Any]] = {}
    example = "'kd.temperature=2' or 'at.weight=500'"
    for key, value in parse_kwargs(text, example).items():
        method, dot, arg = key.partition(".")
        if not dot or not method or not arg:
            raise ValueError(
                f"Bad method argument {key + '=' + str(value)!r}: expected METHOD.ARG=VALUE, e.g. {example}."
            )
        out.setdefault(method.lower(), {})[arg] = value
    return out


def from_spec(spec: str, args: str | dict | None = None, **common: Any) -> list[Method]:
    """Methods from a `+` spec: `from_spec("kd+at", "at.weight=500")`.

    `common` holds keyword arguments given to every method class that accepts
    them (e.g. `num_examples` for memory-bank methods).
    """
    names = [n.strip().lower() for n in str(spec).split("+") if n.strip()]
    if not names:
        raise ValueError(f"Empty method spec {spec!r}; accepted names: {method_names()}.")
    per_method = parse_method_args(args)
    unknown = set(per_method) - set(names)
    if unknown:
        raise ValueError(
            f"Method arguments given for {sorted(unknown)}, which are not in the spec "
            f"{spec!r}; give arguments for {sorted(set(names))}."
        )
    methods = []
    for name in names:
        cls = method_class(name)
        own = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in common.items() if k in own}
        kwargs.update(per_method.get(name, {}))
        accepted = _init_arguments(cls)
        unknown = set(per_method.get(name, {})) - accepted - _init_arguments(keras.layers.Layer)
        if unknown:
            raise ValueError(
                f"Unknown arguments {sorted(unknown)} for method {name!r}. Accepted "
                f"arguments: {sorted(accepted)}."
            )
        try:
            methods.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Bad arguments {kwargs} for method {name!r}: {str(err).rstrip('.')}. Accepted "
                f"arguments: {sorted(accepted)}."
            ) from err
    return methods


def _init_arguments(cls: type) -> set[str]:
    """Keyword arguments `cls(...)` names: its own and those of its bases up to
    `Method` (or up to `cls` itself when it is not a method)."""
    top = Method if issubclass(cls, Method) else cls
    names: set[str] = set()
    for klass in cls.__mro__:
        if not issubclass(klass, top) or "__init__" not in klass.__dict__:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {
            p.name for p in params
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    return names
