"""The base class of every distillation method, and the contract it follows.

A method is a Keras layer that turns the tapped outputs of the teacher and the
student into one scalar term. It never calls a network: the `Distiller` runs
each network once per step and hands every method dictionaries of named
tensors (`keys.LOGITS` plus one entry per tapped layer, and `grad_key(tap)`
for each of its `gradient_keys`) with a `StepContext`. Methods that need
trainable parts (connectors, embeddings, memory banks) create them in
`build_parts`, from the tapped shapes, so they are tracked, trained with the
student and saved with the Distiller, but never exported with the student.

What a method declares, so that neither the Distiller nor `kdkeras.stages`
names a method:

* `compute_loss(teacher, student, y, context)`: the term;
* `default_taps`, `match_taps` / `gradient_keys`: what the networks must
  output (queries of the tap plan, `kdkeras.tap_plan`, which no method's
  settings are changed by);
* `init_stages()`, `in_main_stage`: the stages its paper trains before the
  main one (FT, AB, FSP, SSKD, PAD-L2), as `InitStage` data `kdkeras.stages` runs;
* `batch_copies(images)`: copies of the batch both networks also run on
  (SSKD's rotations), stacked with it by `kdkeras.batch_copies`;
* `default_weight`, `default_student_loss_weight`: its published weights;
* `run_length_defaults`: epoch-counted arguments the recipes scale with the run.
* `reads_teacher_weights` / `read_teacher(teacher)`: what it reads from the
  teacher's weights once at setup (OFD's BN margins); a teacher cache cannot serve it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import keras
from keras import ops


def _default_name(cls) -> str:
    """The method's registered name (`"kd"`), else its class name in snake case."""
    registered = cls.__dict__.get("_registered_name")
    return registered or re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls.__name__).lower()


@dataclass(frozen=True)
class StepContext:
    """What the Distiller tells every method about the current step.

    Args:
        training: True in a training step (BN layers of a method's parts in
            training mode, memory banks written); False in evaluation and
            outside a Distiller.
        index: each sample's dataset index, shape (B,), or None when the batch
            carries none (`{"image": x, "index": i}` inputs give it).
        epoch: the 0-based epoch of the Distiller's `fit` (an int32 scalar
            variable, read inside the step), or None outside a Distiller.
        epochs: the number of epochs of that `fit` (`epochs=` of the call, an
            int32 scalar variable), or None outside a Distiller.
    """

    training: bool = False
    index: Any = None
    epoch: Any = None
    epochs: Any = None


@dataclass(frozen=True)
class InitStage:
    """A stage a method's paper trains before the main one, as the method
    declares it; `kdkeras.stages.default_stages` runs it for the run's init epochs.

    Args:
        name: the stage's name; init stages of one name from several methods
            train as one.
        methods: the method objects it trains: the declaring method, or terms
            of its own sharing its trainable parts (FT's paraphraser term).
        train_student: False when only the methods' parts train (student frozen).
        student_loss_weight: weight of the student's CE in the stage.
        frozen_after: True: the main stage reads what `methods` trained frozen (FT's
            paraphraser); False: it trains on (PAD-L2's connector, like the student).
    """

    name: str
    methods: tuple["Method", ...]
    train_student: bool = True
    student_loss_weight: float = 0.0
    frozen_after: bool = True


def is_training(context: StepContext | None) -> bool:
    """The context's training flag; False outside a Distiller (no context)."""
    return context is not None and bool(context.training)


def epoch_warmup(context: StepContext | None, warmup_epochs: int, warmup_fraction: float | None = None):
    """A linear warm-up factor in (0, 1], a float32 scalar: `min((epoch + 1) / length, 1)`
    at the context's 0-based epoch (mdistiller's `min(epoch / warmup, 1)` with epochs
    counted from 1). `length` is `max(1, ceil(warmup_fraction * epochs))` when the
    fraction and the run's length are known, else `warmup_epochs`; 1 (no warm-up) for
    `warmup_epochs=0` without a fraction, and outside a Distiller (no epoch)."""
    epoch = None if context is None else context.epoch
    if epoch is None:
        return ops.convert_to_tensor(1.0, "float32")
    if warmup_fraction is not None and context.epochs is not None:
        run = ops.cast(context.epochs, "float32")
        length = ops.maximum(ops.ceil(warmup_fraction * run), 1.0)
    elif warmup_epochs == 0:
        return ops.convert_to_tensor(1.0, "float32")
    else:
        length = float(warmup_epochs)
    return ops.minimum((ops.cast(epoch, "float32") + 1.0) / length, 1.0)


class Method(keras.layers.Layer):
    """A distillation term: `weight * compute_loss(teacher, student, y, context)`.

    Subclasses set `default_weight` (and `default_student_loss_weight` where
    their recipe changes the CE weight), override `compute_loss`, and, where
    they tap features, `default_taps` and `build_parts`. A method whose paper
    trains something before the main stage overrides `init_stages` (and sets
    `in_main_stage` False when its term trains only there).

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
    #: the student's own CE weight the method's published recipe trains with
    #: (KD: 0.1, LSR: 0, as it replaces the CE); `default_student_loss_weight`
    #: takes the smallest of a mix
    default_student_loss_weight: float = 1.0
    #: False for methods whose term trains only in their own init stage (AB,
    #: FSP): `kdkeras.stages.default_stages` leaves them out of the main stage
    in_main_stage: bool = True
    #: True when the class overrides `init_stages` (derived, never set by hand)
    has_init_stage: bool = False
    #: True when the class overrides `batch_copies` (derived, never set by hand)
    has_batch_copies: bool = False
    #: False for teacher-free methods (label smoothing, virtual teacher)
    requires_teacher: bool = True
    #: True for methods that read the dataset index of each sample (CRD)
    requires_index: bool = False
    #: True for methods that train on a weak and a strong view of each batch (MLKD): the
    #: data carries `keys.STRONG_IMAGE` (`kdkeras.data.load(..., strong_view=True)`), and the
    #: Distiller adds each network's outputs on it as `keys.strong_key(entry)`
    requires_strong_view: bool = False
    #: False for methods that read only the teacher's tapped features: when no
    #: method reads its logits, training runs the teacher only up to its last tap
    uses_teacher_logits: bool = True
    #: arguments the run layer sets from the run's length instead of an epoch count
    #: fixed for the paper's schedule ({argument: value}; DKD's warm-up as a fraction
    #: of the run), unless the user's method arguments give one of `run_length_unless`
    #: (default: the keys of `run_length_defaults`)
    run_length_defaults: dict = {}
    run_length_unless: tuple = ()
    #: the arguments `kdkeras.tune` searches ({argument: `kdkeras.search_space` Float/Int/
    #: Choice}); `search_space.method_space` adds the weight around `default_weight`
    search_space: dict = {}
    #: keys of the sub-terms `compute_loss` returns as a dict (logged each)
    log_keys: tuple = ()
    #: taps (or `keys.INPUT_TAP`) whose CE-loss gradient the method reads, as
    #: `keys.grad_key(tap)` in both output dicts (gradient-based attention)
    gradient_keys: tuple = ()
    #: True for methods that read the teacher's weights once at setup (`read_teacher`:
    #: OFD's margins from its BN statistics); a teacher cache holds no weights, so it
    #: cannot serve them
    reads_teacher_weights: bool = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.has_init_stage = cls.init_stages is not Method.init_stages
        cls.has_batch_copies = cls.batch_copies is not Method.batch_copies

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
        self.weight = check_weight(self.default_weight if weight is None else weight,
                                   f"{self.name} weight")
        self.teacher_layers = _as_name_list(teacher_layers)
        self.student_layers = _as_name_list(student_layers)
        self._parts_built = False
        self._built_taps = None

    # -- taps -----------------------------------------------------------------
    def default_taps(self, model: keras.Model, role: str) -> list[str]:
        """Layer names this method taps on `model` when none are given.

        `role` is `"teacher"` or `"student"`. Logit methods tap nothing.
        """
        del model, role
        return []

    @property
    def has_default_taps(self) -> bool:
        """True when the method picks layers of its own (its class overrides
        `default_taps`); False for a method that reads only the logits."""
        return type(self).default_taps is not Method.default_taps

    def match_taps(
        self, teacher_layers: Sequence[str], student_layers: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """The (teacher, student) layers the method reads, from both networks'
        resolved ones; as given by default (`FeatureMethod` pairs them).

        A query of the tap plan (`kdkeras.tap_plan.plan_taps`): it changes nothing.
        """
        return list(teacher_layers), list(student_layers)

    def tap_names(self) -> tuple[list[str], list[str]]:
        """(teacher layers, student layers) the method reads: those of the tap plan
        its parts were built for (in a Distiller), else its declared
        `teacher_layers` / `student_layers`."""
        if self._built_taps is not None:
            teacher, student = self._built_taps
            return list(teacher), list(student)
        if self.teacher_layers is None or self.student_layers is None:
            raise ValueError(
                f"Method {self.name!r} has no taps yet (teacher_layers={self.teacher_layers}, "
                f"student_layers={self.student_layers}): give both, or build it in a Distiller, "
                "whose tap plan (kdkeras.tap_plan.plan_taps) resolves its defaults on the networks."
            )
        return list(self.teacher_layers), list(self.student_layers)

    # -- trainable parts ---------------------------------------------------------
    def build_parts(
        self,
        teacher_shapes: Mapping[str, tuple],
        student_shapes: Mapping[str, tuple],
    ) -> None:
        """Create trainable parts from the tapped shapes (batch dim included).

        Called once by the Distiller before training, with the logits' shape and
        those of the layers the method reads (`tap_names()` names them, in order);
        the default has none.
        """
        del teacher_shapes, student_shapes

    def build_from_taps(self, teacher_shapes, student_shapes) -> None:
        """Build the parts once. Shapes from a tap plan (`kdkeras.tap_plan.TapShapes`)
        carry the layers they were resolved for: the method keeps those with its
        parts, and refuses a later plan that reads other layers."""
        taps = getattr(teacher_shapes, "taps", None)
        planned = None if taps is None else (tuple(taps.teacher), tuple(taps.student))
        if self._parts_built and planned is not None and self._built_taps not in (None, planned):
            raise ValueError(
                f"Method {self.name!r} was built for taps {self._built_taps}, but this Distiller's "
                f"networks give {planned}: its parts cannot serve both; use a new method object."
            )
        if planned is not None:
            self._built_taps = planned
        if not self._parts_built:
            self.build_parts(teacher_shapes, student_shapes)
            self._parts_built = True
        self.built = True

    def read_teacher(self, teacher: keras.Model) -> None:
        """Read what the method needs from the teacher's weights, once, after its
        parts are built (the Distiller calls it when `reads_teacher_weights`); the
        default reads nothing. Keep what is read in non-trainable weights of the
        method, so that it is saved with the Distiller."""
        del teacher

    # -- stages -----------------------------------------------------------------
    def init_stages(self) -> list[InitStage]:
        """The stages the method's paper trains before the main one; none by default.

        `kdkeras.stages.default_stages` runs them before the main stage (stages
        that train only the methods' parts first, then those that train the
        student; stages of one name from several methods merge into one).
        Return the same objects on every call: the stages train them.
        """
        return []

    # -- copies of the batch ------------------------------------------------------
    def batch_copies(self, images) -> list:
        """Copies of the batch's images (each of their shape) that both networks also
        run on, in the same pass; none by default. A method that makes some (SSKD's
        rotations) receives in `compute_loss` the outputs of the stack `[images,
        *copies]`, the batch's own rows first; everything else reads those rows only."""
        del images
        return []

    # -- the term ---------------------------------------------------------------
    def compute_loss(
        self,
        teacher: Mapping[str, Any] | None,
        student: Mapping[str, Any],
        y,
        context: StepContext | None = None,
    ):
        """Return the unweighted term: a scalar, or a dict of named scalars
        that add up to it (each is logged as `<name>_<key>`).

        `teacher` is None for teacher-free methods; `y` holds integer labels
        (B,); `context` is the step's `StepContext` (None outside a Distiller:
        evaluation mode, no index, no epoch).
        """
        raise NotImplementedError

    def call(self, teacher, student, y, context: StepContext | None = None):
        return self.compute_loss(teacher, student, y, context or StepContext())

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


def check_weight(value: Any, what: str) -> float:
    """`value` as a float when it is a finite number >= 0, else a ValueError naming
    `what` and the value: a NaN, negative or non-numeric weight trains a wrong model."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}.")
    return number


def default_student_loss_weight(methods: Iterable[Method]) -> float:
    """The student's CE weight for a mix of methods: the smallest of their
    `default_student_loss_weight` (kd+at -> 0.1, lsr -> 0.0), 1.0 for none."""
    return min((float(m.default_student_loss_weight) for m in methods), default=1.0)


def method_settings(methods: Iterable[Method], plan=None) -> dict[str, dict[str, Any]]:
    """Each method's hyper-parameters by name, as its `get_config` gives them
    (weight, taps, temperature, ...), without the Keras bookkeeping (name,
    dtype): what a results table records next to the numbers they produced.

    With the run's tap plan (`kdkeras.tap_plan.plan_taps`), the names are its
    term names and the taps those it resolved, not the declared `None`."""
    settings = {}
    for m in methods:
        config = {k: v for k, v in m.get_config().items() if k not in ("name", "dtype", "trainable")}
        name = m.name
        if plan is not None:
            entry = plan.entry(m)
            name = entry.term
            config.update(teacher_layers=list(entry.teacher), student_layers=list(entry.student))
        settings[name] = config
    return settings


def sparse_labels(y):
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
