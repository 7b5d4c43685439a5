"""The base class of every distillation method.

A method is a Keras layer that turns the tapped outputs of the teacher and the
student into one scalar term. It never calls a network: the `Distiller` runs
each network once per step and hands every method dictionaries of named
tensors (`"logits"` plus one entry per tapped layer). Methods that need
trainable parts (connectors, embeddings, memory banks) create them in
`build_parts`, from the tapped shapes, so they are tracked, trained with the
student and saved with the Distiller, but never exported with the student.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import keras
from keras import ops

_REGISTRY: dict[str, type["Method"]] = {}


def register_method(*names: str):
    """Class decorator: make a method constructible by name and serializable."""

    def decorate(cls):
        cls = keras.saving.register_keras_serializable(package="kdkeras")(cls)
        for name in names:
            _REGISTRY[name.lower()] = cls
        cls._registered_name = names[0].lower() if names else None
        return cls

    return decorate


def method_names() -> list[str]:
    """The lower-case names that `get` accepts."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> "Method":
    """Build a method from its lower-case name (`"kd"`, `"at"`, ...)."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown distillation method {name!r}. Accepted: "
            f"{method_names()}.{hint}"
        )
    return _REGISTRY[key](**kwargs)


def _default_name(cls) -> str:
    """The method's registered name (`"kd"`), else its class name in snake case."""
    registered = cls.__dict__.get("_registered_name")
    return registered or re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls.__name__).lower()


class Method(keras.layers.Layer):
    """A distillation term: `weight * compute_loss(teacher, student, y)`.

    Subclasses set `default_weight`, override `compute_loss`, and, where they
    tap features, `default_taps` and `build_parts`.

    Args:
        weight: multiplier of the term in the total loss; `None` takes the
            method's published default.
        teacher_layers: names of the teacher layers to tap; `None` takes the
            method's default taps.
        student_layers: names of the student layers to tap; `None` takes the
            method's default taps.
        name: name of the term in logs; defaults to the method's registered
            name (`kd`, `fitnet`, ...).
    """

    #: the published weight of the term
    default_weight: float = 1.0
    #: False for teacher-free methods (label smoothing, virtual teacher)
    requires_teacher: bool = True
    #: True for methods that read the dataset index of each sample (CRD)
    requires_index: bool = False
    #: False for methods that read only the teacher's tapped features: when no
    #: method reads its logits, training runs the teacher only up to its last tap
    uses_teacher_logits: bool = True
    #: keys of the sub-terms `compute_loss` returns as a dict (logged each)
    log_keys: tuple = ()
    #: taps (or `"input"`) whose CE-loss gradient the method reads, as
    #: `"grad:<key>"` in both output dicts (gradient-based attention)
    gradient_keys: tuple = ()

    def __init__(
        self,
        weight: float | None = None,
        teacher_layers: Sequence[str] | str | None = None,
        student_layers: Sequence[str] | str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        kwargs.pop("trainable", None)
        super().__init__(name=name or _default_name(type(self)), **kwargs)
        self.weight = float(self.default_weight if weight is None else weight)
        self.teacher_layers = _as_name_list(teacher_layers)
        self.student_layers = _as_name_list(student_layers)
        self._parts_built = False
        # The Distiller's epoch counter (a scalar variable) for warm-ups.
        object.__setattr__(self, "epoch", None)

    # -- taps -----------------------------------------------------------------
    def default_taps(self, model: keras.Model, role: str) -> list[str]:
        """Layer names this method taps on `model` when none are given.

        `role` is `"teacher"` or `"student"`. Logit methods tap nothing.
        """
        del model, role
        return []

    def resolve_taps(
        self, teacher: keras.Model | None, student: keras.Model
    ) -> tuple[list[str], list[str]]:
        """Fix the tapped layer names for both networks (defaults filled in)."""
        if self.teacher_layers is None:
            self.teacher_layers = (
                self.default_taps(teacher, "teacher") if teacher is not None else []
            )
        if self.student_layers is None:
            self.student_layers = self.default_taps(student, "student")
        return list(self.teacher_layers), list(self.student_layers)

    # -- trainable parts ---------------------------------------------------------
    def build_parts(
        self,
        teacher_shapes: Mapping[str, tuple],
        student_shapes: Mapping[str, tuple],
    ) -> None:
        """Create trainable parts from the tapped shapes (batch dim included).

        Called once by the Distiller before training; the default has none.
        """
        del teacher_shapes, student_shapes

    def build_from_taps(self, teacher_shapes, student_shapes) -> None:
        if not self._parts_built:
            self.build_parts(teacher_shapes, student_shapes)
            self._parts_built = True
        self.built = True

    @property
    def current_weight(self) -> float:
        """The multiplier applied now; methods with stages may change it (FT's
        paraphraser stage trains its reconstruction unweighted)."""
        return self.weight

    # -- the term ---------------------------------------------------------------
    def compute_loss(
        self,
        teacher: Mapping[str, Any] | None,
        student: Mapping[str, Any],
        y,
        index=None,
        training: bool = False,
    ):
        """Return the unweighted term: a scalar, or a dict of named scalars
        that add up to it (each is logged as `<name>_<key>`)."""
        raise NotImplementedError

    def call(self, teacher, student, y, index=None, training=False):
        return self.compute_loss(teacher, student, y, index=index, training=training)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            {
                "weight": self.weight,
                "teacher_layers": self.teacher_layers,
                "student_layers": self.student_layers,
            }
        )
        return config


def _as_name_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


# -- small numerical helpers that several methods share --------------------------
def as_float32(x):
    """Cast to float32: softmax and KL stay in float32 under mixed precision."""
    return ops.cast(x, "float32")


def sparse_labels(y, num_classes: int | None = None):
    """Integer labels of shape (B,) from sparse or one-hot `y`."""
    y = ops.convert_to_tensor(y)
    if len(y.shape) >= 2 and y.shape[-1] not in (None, 1):
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def log_softmax_t(logits, temperature: float):
    return ops.log_softmax(as_float32(logits) / temperature, axis=-1)


def kl_div(log_p, log_q):
    """Per-sample `sum_k p_k (log p_k - log q_k)` from log-probabilities."""
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


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


def parse_method_args(text: str | None) -> dict[str, dict[str, Any]]:
    """`"kd.temperature=2,at.weight=500"` -> `{"kd": {"temperature": 2}, "at": {"weight": 500}}`."""
    out: dict[str, dict[str, Any]] = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = item.partition("=")
        method, dot, arg = key.strip().partition(".")
        if not sep or not dot or not method or not arg:
            raise ValueError(
                f"Bad method argument {item!r}: expected METHOD.ARG=VALUE, e.g. "
                "'kd.temperature=2' or 'at.weight=500'."
            )
        out.setdefault(method.lower(), {})[arg] = _parse_value(value)
    return out


def from_spec(spec: str, args: str | dict | None = None, **common: Any) -> list["Method"]:
    """Methods from a `+` spec: `from_spec("kd+at", "at.weight=500")`.

    `common` holds keyword arguments given to every method class that accepts
    them (e.g. `num_examples` for memory-bank methods).
    """
    import inspect

    names = [n.strip().lower() for n in str(spec).split("+") if n.strip()]
    if not names:
        raise ValueError(f"Empty method spec {spec!r}; accepted names: {method_names()}.")
    per_method = parse_method_args(args) if not isinstance(args, dict) else dict(args)
    unknown = set(per_method) - set(names)
    if unknown:
        raise ValueError(
            f"Method arguments given for {sorted(unknown)}, which are not in the spec {spec!r}."
        )
    methods = []
    for name in names:
        get(name)  # validates the name with a clear error
        cls = _REGISTRY[name]
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in common.items() if k in accepted}
        kwargs.update(per_method.get(name, {}))
        try:
            methods.append(cls(**kwargs))
        except TypeError as err:
            raise ValueError(f"Bad arguments {kwargs} for method {name!r}: {err}") from err
    return methods
