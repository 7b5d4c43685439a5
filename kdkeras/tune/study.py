"""The study: where trials are stored (SQLite under the output folder by default, or a
database URL several processes and machines share), how they are sampled and pruned,
and the sweep that runs them until the study holds its budget of finished trials.

A process killed mid-trial leaves that trial RUNNING; its heartbeat stops, and the
next sweep on the study marks it FAIL (`grace_period` seconds after its last beat)
before sampling, so it neither counts as finished nor feeds the pruner or sampler.
Finished trials stay: a resumed sweep runs only what the budget still lacks.
"""

from __future__ import annotations

import os
import time
import warnings
from datetime import datetime, timedelta
from typing import Callable

import optuna
import sqlalchemy
from optuna.trial import TrialState

#: pruners `--pruner` accepts
PRUNERS = ("median", "halving", "hyperband", "none")
#: trial states that count towards the budget of trials
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: seconds between a running trial's heartbeats, and after which a silent one is stale
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60


def storage_url(storage: str | None, output_dir: str) -> str:
    """A database URL: `storage` when it is one (`sqlite:///...`, `postgresql://...`),
    a SQLite file at a path given, else `output_dir/study.db`."""
    if storage and "://" in storage:
        return storage
    path = storage or os.path.join(output_dir, "study.db")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return f"sqlite:///{os.path.abspath(path)}"


def make_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS):
    """An RDB storage with heartbeats (stale trials of killed processes are failed); SQLite
    waits up to a minute for another process's write instead of failing."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9; we rely on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                          grace_period=grace)


def make_pruner(name: str, max_epochs: int, startup_trials: int = 3) -> optuna.pruners.BasePruner:
    """`median` (stop a trial below the median of earlier ones at the same epoch, after
    `startup_trials` finished), `halving` (asynchronous successive halving), `hyperband`
    or `none`, with epochs as the resource."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"Unknown pruner {name!r}; accepted: {list(PRUNERS)}.")


def open_study(name: str, url: str, *, pruner: optuna.pruners.BasePruner | None = None, seed: int = 0,
               heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS) -> optuna.Study:
    """The study `name` at `url`, created or loaded (maximising validation top-1), its
    stale RUNNING trials failed now. The TPE sampler (its first 5 trials random) is
    seeded by `seed` and the trials the study holds, so a fresh sweep repeats itself
    while a resumed one, or a process joining a running one, draws anew."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url, heartbeat, grace)
    study = optuna.create_study(storage=storage, study_name=name,
                                pruner=pruner or optuna.pruners.NopPruner(), direction="maximize",
                                load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_unbeaten_trials(study, storage, grace)
    trials = study.get_trials(deepcopy=False)
    joining = any(t.state == TrialState.RUNNING for t in trials)  # another process is sampling too
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(trials) + (os.getpid() if joining else 0),
                                               n_startup_trials=5, constant_liar=True)
    return study


def fail_unbeaten_trials(study: optuna.Study, storage, grace: int) -> list[int]:
    """Fail RUNNING trials started over `grace` seconds ago that never beat: a process
    killed between creating a trial and its first heartbeat leaves one, which Optuna's
    stale check skips (it reads heartbeats only). Returns their numbers."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    with storage.engine.connect() as conn:  # the heartbeat table of Optuna's RDB schema
        beating = {row[0] for row in conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))}
    cutoff = datetime.now() - timedelta(seconds=grace)
    failed = []
    for trial in running:
        if trial._trial_id not in beating and trial.datetime_start and trial.datetime_start < cutoff:
            try:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                failed.append(trial.number)
            except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
                pass
    return failed


def finished_trials(study: optuna.Study) -> list:
    """The study's trials that count towards its budget (complete or pruned)."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def run_sweep(study: optuna.Study, objective: Callable, trials: int, timeout_minutes: float | None = None,
              progress: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> int:
    """Run `objective` until the study holds `trials` finished trials (counting those of
    earlier or other processes) or `timeout_minutes` pass; returns the trials run here."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials!r}.")
    remaining = trials - len(finished_trials(study))
    if remaining <= 0:
        print(f"Study {study.study_name!r} already holds {trials} finished trials: nothing to run.")
        return 0
    before = time.perf_counter()
    count = len(study.trials)
    callbacks = [optuna.study.MaxTrialsCallback(trials, states=FINISHED)] + ([progress] if progress else [])
    study.optimize(objective, n_trials=remaining, timeout=None if not timeout_minutes else 60 * timeout_minutes,
                   callbacks=callbacks, gc_after_trial=True)
    print(f"Ran {len(study.trials) - count} trials in {time.perf_counter() - before:.0f}s")
    return len(study.trials) - count


def progress_line(total: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """A callback printing one line per finished trial: its number, state, value and the best so far."""
    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(finished_trials(study))
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        best = max((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                   default=None)
        seconds = (trial.duration.total_seconds() if trial.duration else 0.0)
        print(f"[tune] trial {trial.number} {trial.state.name.lower()} val_top1={value} "
              f"({seconds:.0f}s; {done}/{total} finished; best {'-' if best is None else f'{best:.4f}'}) "
              f"{trial.params}", flush=True)
    return report
