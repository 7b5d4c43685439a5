"""Public names of a package imported on first use (PEP 562), so importing the
package loads nothing heavy (TensorFlow) until a name that needs it is read."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, tuple[str, str | None]],
                 namespace: dict) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`: `exports` maps each public name to
    `(module, attribute)`, or `(module, None)` for the module itself; a name is
    imported when first read and then kept in the package's `namespace`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}; "
                                 f"public names: {sorted(exports)}")
        module_name, attribute = exports[name]
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
