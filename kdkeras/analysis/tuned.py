"""Tuned rows of the results page: a sweep's retrained winner (`OUTPUT_DIR/final/metrics.json`
of `recipes/tune.py`) read with the sweep's report beside it (`OUTPUT_DIR/tune.json`), so
the page can say what was chosen on which split, with what budget and at what cost."""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Callable, Sequence

#: the folder of a sweep holding its retrained winner
FINAL_FOLDER = "final"
#: the sweep's records kept beside an archived final run
SWEEP_RECORDS = ("tune.json", "trials.json", "trials.md")
#: what the page reports of a sweep (tune.json keys)
SWEEP_KEYS = ("method", "settings", "val_top1", "candidates", "trials", "trial_epochs", "trial_train_limit",
              "sweep_seconds", "validation_split", "final_data", "states", "start_from_defaults",
              "trials_scored_on", "student_alone_val_top1", "beats_student_alone")


def is_trial_run(metrics_path: str) -> bool:
    """Whether a metrics.json is one trial of a sweep (`OUTPUT_DIR/trials/trial_NNNN/`): a
    low-fidelity run the page leaves out (the sweep's report lists it)."""
    folder = os.path.dirname(os.path.abspath(metrics_path))
    return (os.path.basename(os.path.dirname(folder)) == "trials"
            and os.path.basename(folder).startswith("trial_"))


def sweep_folder(metrics_path: str) -> str | None:
    """The sweep folder of a final run's metrics.json, or None for any other run."""
    folder = os.path.dirname(os.path.abspath(metrics_path))
    parent = os.path.dirname(folder)
    if os.path.basename(folder) == FINAL_FOLDER and os.path.exists(os.path.join(parent, "tune.json")):
        return parent
    return None


def sweep_of(metrics_path: str) -> dict | None:
    """What the sweep behind a final run chose and spent (tune.json's `SWEEP_KEYS`), or None."""
    folder = sweep_folder(metrics_path)
    if folder is None:
        return None
    with open(os.path.join(folder, "tune.json")) as f:
        report = json.load(f)
    return {key: report.get(key) for key in SWEEP_KEYS}


#: the row label's mark for a sweep whose trials were scored on a split carved from each
#: trial's own examples (before `trials_scored_on`): another protocol, never one row with the new
EARLIER_PROTOCOL = "trials scored on their own split"


def row_label(method: str, sweep: dict) -> str:
    """`crd (tuned)` for a sweep of one method; `auto (tuned)` when it chose among several;
    `crd (tuned; trials scored on their own split)` for a sweep of the earlier protocol;
    the trial fidelity added when `mark_uncommon_fidelity` found it not its section's usual."""
    name = "auto" if len(sweep.get("candidates") or [method]) > 1 else method
    marks = [] if sweep.get("trials_scored_on") else [EARLIER_PROTOCOL]
    marks += [sweep["fidelity_mark"]] if sweep.get("fidelity_mark") else []
    return f"{name} (tuned{''.join('; ' + m for m in marks)})"


def trial_fidelity(sweep: dict) -> tuple:
    """What a sweep's trials trained on: (epochs, training examples; None: the whole part)."""
    return sweep.get("trial_epochs"), sweep.get("trial_train_limit")


def fidelity_text(sweep: dict) -> str:
    """A sweep's trial fidelity in words: `trials of 2 epochs on 4,000 examples`."""
    epochs, examples = trial_fidelity(sweep)
    examples = "the whole training part" if examples is None else f"{examples:,} examples"
    return f"trials of {epochs} epochs on {examples}"


def mark_uncommon_fidelity(runs: Sequence[dict], section: Callable[[dict], Any]) -> None:
    """Give each tuned run (`run["sweep"]`) whose trial fidelity is not the one most of its
    section's sweeps ran at a `fidelity_mark`, so that sweeps of another fidelity are their
    own row (`row_label`), never averaged with the others (ties: the cheaper fidelity is the usual)."""
    counts: dict = collections.defaultdict(collections.Counter)
    for run in runs:
        if run.get("sweep"):
            counts[section(run)][trial_fidelity(run["sweep"])] += 1
    usual = {name: max(seen.items(), key=lambda kv: (kv[1], -(kv[0][0] or 0), -(kv[0][1] or float("inf"))))[0]
             for name, seen in counts.items()}
    for run in runs:
        if run.get("sweep") and trial_fidelity(run["sweep"]) != usual[section(run)]:
            run["sweep"]["fidelity_mark"] = fidelity_text(run["sweep"])


def settings_line(method: str, sweep: dict) -> str:
    """A seed's choice in one line: `crd: crd.weight=0.21, student_loss_weight=1.3 (validation top-1 88.10%)`."""
    settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in (sweep.get("settings") or {}).items())
    return f"{method}: {settings or 'its defaults'} (validation top-1 {100 * float(sweep['val_top1']):.2f}%)"


def budget_text(sweeps: Sequence[dict]) -> str:
    """The trial budget and what it cost, over a row's seeds, in words."""
    first = sweeps[0]
    minutes = [s["sweep_seconds"] / 60 for s in sweeps if s.get("sweep_seconds") is not None]
    pruned = sum((s.get("states") or {}).get("pruned", 0) for s in sweeps)
    trials = sum(int(s.get("trials") or 0) for s in sweeps)
    split = first.get("validation_split")
    split_text = f"{100 * split:g}%" if isinstance(split, float) and split < 1 else f"{split}"
    span = (f"{min(minutes):.1f}" if f"{min(minutes):.1f}" == f"{max(minutes):.1f}"
            else f"{min(minutes):.1f}-{max(minutes):.1f}") if minutes else ""
    cost = f", {span} min of sweep per seed" if minutes else ""
    # sweeps before `trials_scored_on` carved each trial's validation split from its own examples
    scored = ("of the training examples, the same for every trial" if first.get("trials_scored_on")
              else "of each trial's examples")
    return (f"{first.get('trials')} {fidelity_text(first)} per seed ({pruned} of {trials} pruned{cost}), "
            f"chosen on a {split_text} validation split {scored}; the winner retrained "
            f"on {'every training example' if first.get('final_data') == 'all' else 'the training part'}"
            f"{reference_text(sweeps)}")


def reference_text(sweeps: Sequence[dict]) -> str:
    """How the choices fared against each sweep's student-alone reference on validation
    (`tune.json`'s `beats_student_alone`), or "" for sweeps without one."""
    known = [s for s in sweeps if s.get("beats_student_alone") is not None]
    if not known:
        return ""
    beat = sum(bool(s["beats_student_alone"]) for s in known)
    return (f"; the choice beat the student alone trained at the trials' fidelity on the validation split "
            f"in {beat} of {len(known)} seeds")
