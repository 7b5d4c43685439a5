"""Which layers every method reads from each network: one pure function, `plan_taps`.

The Distiller and the teacher-cache builder both ask it. From the methods' own
declarations (`teacher_layers=` / `student_layers=`, else `default_taps(model,
role)`; `match_taps`; `gradient_keys`), the two networks and an optional
teacher cache it decides each method's term name, the layers it reads, the
shapes its parts are built from, and what each tap model must output. It
changes nothing: no method's settings or name.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from kdkeras import taps as taps_lib
from kdkeras.keys import INPUT_TAP, LOGITS


@dataclass(frozen=True)
class MethodTaps:
    """One method's part of a `TapPlan`.

    Args:
        term: the method's name in the logs, unique within the plan (`kd`,
            `kd_2` for a second method named `kd`).
        teacher: the teacher layers it reads, in its order.
        student: the student layers it reads, paired with `teacher`.
        gradient_keys: taps (or `keys.INPUT_TAP`) whose CE gradient it reads.
        teacher_shapes: the logits' shape and those of its teacher layers
            (and gradient taps), batch dim None: what its parts are built for.
        student_shapes: the same for the student.
    """

    term: str
    teacher: tuple[str, ...]
    student: tuple[str, ...]
    gradient_keys: tuple[str, ...]
    teacher_shapes: Mapping[str, tuple]
    student_shapes: Mapping[str, tuple]


class TapShapes(dict):
    """One network's shapes as a method's `build_parts` receives them from a plan;
    `taps` is the method's `MethodTaps`, so the method knows which layers they are."""

    def __init__(self, shapes: Mapping[str, tuple], taps: MethodTaps):
        super().__init__(shapes)
        self.taps = taps


@dataclass(frozen=True)
class TapPlan:
    """What `plan_taps` decided: an entry per method (in the methods' order) and
    the union of layers each network's tap model outputs."""

    methods: tuple
    entries: tuple[MethodTaps, ...]
    teacher_outputs: tuple[str, ...]
    student_outputs: tuple[str, ...]
    gradient_keys: tuple[str, ...]

    def entry(self, method) -> MethodTaps:
        """The entry of `method` (the object itself, not one of its name)."""
        for m, entry in zip(self.methods, self.entries):
            if m is method:
                return entry
        raise ValueError(f"Method {method.name!r} is not in this tap plan (it has {list(self.terms)}).")

    @property
    def terms(self) -> tuple[str, ...]:
        """Every method's term name, in order."""
        return tuple(e.term for e in self.entries)

    @property
    def method_taps(self) -> dict[str, list[str]]:
        """{method name: teacher layers} of the methods that read the teacher: what a
        teacher cache records, so that a cached run finds the taps of a method of
        that name (by its name, not its term: a cache serves several runs' methods)."""
        return {m.name: list(e.teacher) for m, e in zip(self.methods, self.entries) if m.requires_teacher}

    def build_shapes(self, method) -> tuple[TapShapes, TapShapes]:
        """(teacher shapes, student shapes) for `method.build_from_taps`."""
        entry = self.entry(method)
        return TapShapes(entry.teacher_shapes, entry), TapShapes(entry.student_shapes, entry)


def unique_terms(names: Iterable[str]) -> list[str]:
    """`names` with repeats suffixed `_2`, `_3`, ... (skipping names used anywhere in the list)."""
    names = list(names)
    taken: set[str] = set()
    out = []
    for i, name in enumerate(names):
        term, n = name, 1
        while term in taken or (term != name and term in names[i + 1:]):
            n += 1
            term = f"{name}_{n}"
        taken.add(term)
        out.append(term)
    return out


def uncacheable_reason(method) -> str | None:
    """Why a teacher cache cannot serve `method` (it reads the teacher's CE
    gradients, or its outputs on copies of the batch, both made online in every
    step, or the teacher's weights at setup), or None when it can."""
    if getattr(method, "has_batch_copies", False):
        return (f"Method {method.name!r} reads the teacher on copies of each batch made in the training step "
                "(kdkeras.batch_copies), but a teacher cache holds its outputs on the batch's own images only: "
                "it cannot train from a teacher cache. Run it with the teacher.")
    if getattr(method, "reads_teacher_weights", False):
        return (f"Method {method.name!r} reads the teacher's weights at setup (`read_teacher`), "
                "which a teacher cache does not hold: run it with the teacher.")
    if not method.gradient_keys:
        return None
    return (f"Method {method.name!r} reads the teacher's CE gradients ({list(method.gradient_keys)}), "
            "computed online in every step: it cannot train from a teacher cache. Run it with the teacher.")


def plan_taps(methods: Sequence, teacher, student=None, cache=None) -> TapPlan:
    """Decide which layers each method reads from each network.

    Args:
        methods: `kdkeras.methods.Method` objects; none is changed.
        teacher: the teacher model, or None (teacher-free methods, or a cache).
        student: the student model, or None for a cache builder: each method's
            teacher layers are then those before pairing with the student's
            (every layer it may read).
        cache: a `kdkeras.cache.TeacherCache` the teacher's outputs come from
            when `teacher` is None: methods without declared teacher layers take
            those it was built for (its `method_taps`, by method name).

    Raises a ValueError naming the closest layer names for an unknown layer,
    what a cache holds when it lacks a method's taps, the methods a cache
    cannot serve, and a method object given twice.
    """
    methods = tuple(methods)
    if len({id(m) for m in methods}) != len(methods):
        twice = sorted({m.name for m in methods if sum(x is m for x in methods) > 1})
        raise ValueError(f"Methods {twice} are given twice as the same object: give one object per term.")
    cached = teacher is None and cache is not None
    entries = []
    for method, term in zip(methods, unique_terms(m.name for m in methods)):
        t = _teacher_layers(method, teacher, cache if cached else None)
        s = []
        if student is not None:
            s = method.student_layers
            s = list(method.default_taps(student, "student") if s is None else s)
            t, s = method.match_taps(t, s)
        grads = tuple(method.gradient_keys)
        grad_layers = [k for k in grads if k != INPUT_TAP]
        t_shapes = _shapes(teacher, [*t, *grad_layers], cache if cached else None)
        s_shapes = _shapes(student, [*s, *grad_layers], None)
        entries.append(MethodTaps(term, tuple(t), tuple(s), grads, t_shapes, s_shapes))
    grads = tuple(dict.fromkeys(k for e in entries for k in e.gradient_keys))
    grad_layers = [k for k in grads if k != INPUT_TAP]
    teacher_outputs = [*(name for e in entries for name in e.teacher), *grad_layers] if teacher is not None else []
    student_outputs = [*(name for e in entries for name in e.student), *grad_layers] if student is not None else []
    return TapPlan(methods, tuple(entries), tuple(dict.fromkeys(teacher_outputs)),
                   tuple(dict.fromkeys(student_outputs)), grads)


def _teacher_layers(method, teacher, cache) -> list[str]:
    """The teacher layers `method` reads before pairing: declared, else its default
    on `teacher`, else (a cached teacher) those the cache was built for."""
    if cache is None or not method.requires_teacher:
        if method.teacher_layers is not None:
            return list(method.teacher_layers)
        return list(method.default_taps(teacher, "teacher")) if teacher is not None else []
    reason = uncacheable_reason(method)
    if reason:
        raise ValueError(reason)
    layers = method.teacher_layers
    if layers is None and not method.has_default_taps:
        layers = []  # a logits method: the cache always holds the logits
    if layers is None:
        if method.name not in cache.method_taps:
            raise ValueError(
                f"The teacher cache {cache.path!r} was built without method {method.name!r} "
                f"(it has {sorted(cache.method_taps)}): give it teacher_layers= from "
                f"{sorted(k for k in cache.entries if k != LOGITS)} or rebuild the cache with it.")
        layers = cache.method_taps[method.name]
    missing = [name for name in layers if name not in cache.entries]
    if missing:
        raise ValueError(
            f"Method {method.name!r} taps teacher layers {missing}, which the teacher cache "
            f"{cache.path!r} does not hold (it has {sorted(cache.entries)}).")
    return list(layers)


def _shapes(model, names: list[str], cache) -> Mapping[str, Any]:
    """The logits' and `names`' shapes (batch dim None) on `model`, or in `cache`."""
    if cache is not None:
        shapes = {k: (None, *cache.entries[k]) for k in [LOGITS, *names] if k in cache.entries}
    elif model is not None:
        shapes = taps_lib.tap_shapes(model, names)
    else:
        shapes = {}
    return MappingProxyType(shapes)
