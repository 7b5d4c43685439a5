"""Method arguments scaled with the run: a method class declares epoch-counted
defaults the recipes set from the run's length instead (`Method.run_length_defaults`,
DKD's warm-up), unless the user fixed them; the run layer names no method."""

from __future__ import annotations

from kdkeras import methods as methods_lib


def _declared(name: str) -> tuple[dict, tuple[str, ...]]:
    """(run-length defaults, the arguments that leave them unset) of method `name`'s class."""
    cls = type(methods_lib.get(name))
    defaults = dict(cls.run_length_defaults)
    return defaults, tuple(cls.run_length_unless or defaults)


def run_length_args(method: str, method_args: str | dict | None) -> tuple[dict, dict]:
    """(`method_args` as a per-method dict with the run-length defaults added,
    {method: the defaults added}): what the recipes build their methods from, so
    that warm-ups scale with the run unless the user fixed them."""
    args = methods_lib.parse_method_args(method_args)
    names = dict.fromkeys(n.strip().lower() for n in str(method).split("+") if n.strip())
    known = set(methods_lib.method_names())  # other names ("ce" of bias_variance) are the caller's
    added = {}
    for name in (n for n in names if n in known):
        defaults, unless = _declared(name)
        own = args.get(name, {})
        if defaults and not any(key in own for key in unless):
            args[name] = {**own, **defaults}
            added[name] = dict(defaults)
    return args, added


def run_length_note(name: str, args: dict, epochs: int) -> str:
    """The line a run prints for the defaults `args` it added to method `name`."""
    unless = _declared(name)[1]
    return (f"{name}: scaled to the run's length ({epochs} epochs): {args} "
            f"(set {name}.{' or '.join(unless)} to fix it instead)")
