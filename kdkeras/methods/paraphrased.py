"""A paraphraser of the teacher's map, trained in a stage of its own, then read frozen.

FT (staged.py) and KTA (affinity.py) both encode the teacher's last-stage map
through paraphrasers that an initialisation stage trains alone (student frozen,
no CE) and the main stage reads frozen. `ParaphraserTerm` is the base of that
stage's term (one `Paraphraser` per teacher tap); `ParaphrasedMethod` wires a
method to its term: the stage, the shared layers, and the check that both read
the same teacher taps.
"""

from __future__ import annotations

from kdkeras import tap_detection
from kdkeras.methods.base import InitStage
from kdkeras.methods.connectors import Paraphraser
from kdkeras.methods.features import FeatureMethod


class _LastStage(FeatureMethod):
    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)[-1:]


class ParaphraserTerm(_LastStage):
    """The paraphraser stage's term: one `Paraphraser` (`paraphraser_i`, with BN
    where `paraphraser_bn`) per teacher tap; subclasses give `compute_loss`. It taps
    the student as its method does only so that both pair their taps alike."""

    default_weight = 1.0
    paraphraser_bn = False

    def __init__(self, factor_rate: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.factor_rate = float(factor_rate)
        self.paraphrasers = []

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        paraphrasers = []
        for i, name in enumerate(self.tap_names()[0]):
            shape = tuple(teacher_shapes[name])
            p = Paraphraser(shape[-1], self.factor_rate, use_bn=self.paraphraser_bn, name=f"paraphraser_{i}")
            p.build(shape)
            paraphrasers.append(p)
        self.paraphrasers = paraphrasers

    def get_config(self):
        return {**super().get_config(), "factor_rate": self.factor_rate}


class ParaphrasedMethod(_LastStage):
    """A method reading frozen the paraphrasers its init stage (`paraphraser_stage`,
    student frozen, no CE) trains through `paraphraser_term`."""

    paraphraser_stage = ""

    def _init_paraphraser(self, factor_rate: float, term_class: type, **term_args) -> None:
        """Check and hold `factor_rate`, and make the term, named as this method and on
        its taps. Not a tracked sublayer: this method's weights hold the paraphrasers
        once (`paraphrasers`), and training this method must not train the term."""
        if not 0 < factor_rate <= 1:
            raise ValueError(f"{type(self).__name__} factor_rate must be in (0, 1], got {factor_rate!r}.")
        self.factor_rate = float(factor_rate)
        self.paraphrasers = []
        term = term_class(self.factor_rate, teacher_layers=self.teacher_layers,
                          student_layers=self.student_layers, name=self.name, **term_args)
        object.__setattr__(self, "_paraphraser_term", term)

    @property
    def paraphraser_term(self) -> ParaphraserTerm:
        """The init stage's term, sharing this method's paraphraser layers."""
        return self._paraphraser_term

    def init_stages(self) -> list[InitStage]:
        """The paraphraser stage: the term alone (no CE) while the student stays frozen."""
        return [InitStage(self.paraphraser_stage, (self._paraphraser_term,), train_student=False,
                          student_loss_weight=0.0)]

    def build_paraphrasers(self, teacher_shapes, student_shapes) -> None:
        """Hold the term's paraphrasers, frozen (read, never trained, by this method's
        own term); with no paraphraser stage run, build the term for this method's taps."""
        term, kind = self._paraphraser_term, type(self).__name__
        teacher_layers, student_layers = self.tap_names()
        if not term._parts_built:
            term.teacher_layers, term.student_layers = teacher_layers, student_layers
            term.build_from_taps(teacher_shapes, student_shapes)
        elif term.tap_names()[0] != teacher_layers:
            raise ValueError(
                f"{kind} {self.name!r} reads teacher taps {teacher_layers}, but its paraphrasers were "
                f"trained on {term.tap_names()[0]}: give {kind} teacher_layers and student_layers of "
                "equal length.")
        self.paraphrasers = list(term.paraphrasers)
        for p in self.paraphrasers:
            p.trainable = False
