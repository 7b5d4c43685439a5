"""Settings declared once: each config field says how it appears on the command line
and whether it belongs to a run's resume fingerprint.

`setting(default, help=..., group=..., lower_bound=..., choices=..., fingerprint=...)`
is a `dataclasses.field` whose metadata holds a `Setting`. `kdkeras.recipe_utils`
defines the recipes' absl flags from it (one flag per field of a `group`, named as the
field) and turns the parsed flags back into configs; `fingerprint` lists the fields a
resumed run must share with the run that left its backups. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

#: the metadata key of a field's `Setting`
METADATA_KEY = "kdkeras_setting"
#: absl flag kinds a setting can have
KINDS = ("string", "integer", "float", "bool", "enum", "list")


class _Same:
    """The flag's default is the field's own."""

    def __repr__(self) -> str:
        return "SAME"


SAME = _Same()


@dataclass(frozen=True)
class Setting:
    """What a config field declares beyond its type and default.

    `group` names the `recipe_utils.define_*_flags` that defines its flag (None:
    no flag); `kind` the absl flag kind (derived from the field's type when None);
    `flag_default` the flag's default where its text differs from the field's;
    `parse` turns the flag's value into the field's (e.g. "on" -> True);
    `fingerprint` False for fields that do not change the trained model."""

    help: str
    group: str | None = None
    kind: str | None = None
    lower_bound: float | None = None
    choices: tuple | None = None
    flag_default: Any = SAME
    parse: Callable[[Any], Any] | None = None
    fingerprint: bool = True

    def __post_init__(self):
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"Setting kind {self.kind!r} is not one of {list(KINDS)}.")


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str | None = None,
            kind: str | None = None, lower_bound: float | None = None, choices: Any = None,
            flag_default: Any = SAME, parse: Callable[[Any], Any] | None = None,
            fingerprint: bool = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its `Setting` (see there for the arguments)."""
    meta = Setting(help, group, kind, lower_bound, None if choices is None else tuple(choices),
                   flag_default, parse, fingerprint)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={METADATA_KEY: meta})


def setting_of(field: dataclasses.Field) -> Setting | None:
    """The `Setting` a field declares, or None."""
    return field.metadata.get(METADATA_KEY)


def flag_fields(cls: type, group: str | None = None) -> list[tuple[dataclasses.Field, Setting]]:
    """(field, setting) of every field of `cls` that has a flag (of `group`, when given)."""
    out = []
    for f in dataclasses.fields(cls):
        meta = setting_of(f)
        if meta is not None and meta.group is not None and (group is None or meta.group == group):
            out.append((f, meta))
    return out


def field_default(field: dataclasses.Field) -> Any:
    """The value a field takes when not given."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def flag_kind(cls: type, field: dataclasses.Field) -> str:
    """The absl flag kind of `field`: its setting's, else `enum` with choices, else
    from the field's type (`int | None` -> integer)."""
    meta = setting_of(field)
    if meta.kind is not None:
        return meta.kind
    if meta.choices is not None:
        return "enum"
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0] if len(args) == 1 else hint
    kinds = {bool: "bool", int: "integer", float: "float", str: "string"}
    if hint not in kinds:
        raise TypeError(f"{cls.__name__}.{field.name} ({hint}) needs kind= in its setting: one of {list(KINDS)}.")
    return kinds[hint]


def fingerprint_names(cls_or_obj: Any) -> list[str]:
    """The fields of a config that belong to its resume fingerprint."""
    return [f.name for f in dataclasses.fields(cls_or_obj)
            if setting_of(f) is None or setting_of(f).fingerprint]
