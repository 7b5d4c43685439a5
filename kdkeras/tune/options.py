"""`TuneOptions`: the budget and shape of a sweep, each setting declared once
(`kdkeras.settings`), so `recipe_utils.define_tune_flags` makes their flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kdkeras.settings import setting
from kdkeras.tune.study import PRUNERS

#: what the winner retrains on (`TuneOptions.final_data`)
FINAL_DATA = ("training", "all")
#: candidates of `--method=auto` unless `--candidates` names others: one per family of cheap
#: methods (logits, decoupled logits, normalised logits, an embedding regression, logits plus
#: attention maps), each a KD step's cost or near it; CRD's per-trial memory bank and the rest
#: stay a `--candidates` away
AUTO_CANDIDATES = ("kd", "dkd", "nkd", "srd", "kd+at")


def _candidates(value) -> tuple:
    return tuple(v.strip().lower() for v in (value or []) if str(v).strip())


@dataclass
class TuneOptions:
    """How many trials, at which fidelity, stored where, pruned how."""

    trials: int = setting(20, group="tune", lower_bound=1,
                          help="Finished (complete or pruned) trials the study holds when the sweep stops.")
    timeout_minutes: float | None = setting(None, group="tune", lower_bound=0.0,
                                            help="Stop starting trials after this many minutes.")
    storage: str | None = setting(
        None, group="tune", fingerprint=False,
        help="Where the study lives: a database URL (sqlite:///path.db, postgresql://...) shared by every "
             "process and machine of the sweep, or a SQLite file path (default: OUTPUT_DIR/study.db).")
    study_name: str = setting("kdkeras", group="tune", help="Name of the study in --storage (resumed when it exists).")
    pruner: str = setting("median", group="tune", choices=PRUNERS,
                          help="Stop bad trials early: median, halving (successive halving), hyperband or none.")
    trial_epochs: int | None = setting(None, group="tune", lower_bound=1,
                                       help="Epochs of one trial (default: --epochs); the winner retrains at --epochs.")
    trial_train_limit: int | None = setting(
        None, group="tune", lower_bound=1,
        help="Training examples of one trial: a stratified subset of the training part left after "
             "--validation_split (default: all of it); the winner retrains on all. Every trial is scored on "
             "the whole validation split (one pass over it per trial epoch).")
    candidates: tuple = setting(
        AUTO_CANDIDATES, group="tune", kind="list", flag_default=list(AUTO_CANDIDATES), parse=_candidates,
        help="Methods (or + mixes) --method=auto chooses among, each in its own search space.")
    tune_ce_weight: bool = setting(True, group="tune",
                                   help="Also tune the student's CE weight (--student_loss_weight fixes it).")
    retrain: bool = setting(True, group="tune",
                            help="Retrain the winner at the full budget and report its test top-1 (and the "
                                 "student alone's).")
    start_from_defaults: bool = setting(
        True, group="tune",
        help="A new study's first trial of each candidate runs its published defaults, so the choice is "
             "never worse on the validation split than the defaults.")
    final_data: str = setting(
        "training", group="tune", choices=FINAL_DATA,
        help="What the winner retrains on: training (the training part; the validation split stays held "
             "out and is scored) or all (training and validation parts together, every example of "
             "--train_limit, as a run without a validation split).")
    reference: bool = setting(
        True, group="tune",
        help="Before the trials, train the student alone (no teacher, CE only) once on the trials' data and "
             "epochs, and report whether the chosen trial beats it on the validation split. Costs one more run "
             "at trial fidelity without a teacher; kept in the study, so a resumed sweep does not rerun it.")
    final_baseline: bool = setting(
        True, group="tune",
        help="Train the student alone beside the retrained winner (turn off when a student-alone run of "
             "the same seed, data and budget exists to compare with).")

    def replace(self, **changes) -> "TuneOptions":
        return dataclasses.replace(self, **changes)
