"""A run's output folder: started seeded, one private folder per extra worker, the
settings recorded so that a resume of other settings is refused, and the reports
(JSON, Markdown, the `RESULT` line) written into it."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
from typing import Any, Sequence

import tensorflow as tf

from kdkeras import training
from kdkeras.experiment.config import RunConfig
from kdkeras.settings import fingerprint_names

#: what a run leaves in its output_dir to be resumed
RESUMABLE = ("backup", "stages", "distill_done.json")


def start(config: RunConfig):
    """Seed everything from `config.seed` (and turn on deterministic kernels when
    `config.deterministic`), create the output folder, return the strategy."""
    training.seeded(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    os.makedirs(config.output_dir, exist_ok=True)
    return training.get_strategy(config.strategy)


def worker_config(config: RunConfig, strategy) -> RunConfig:
    """`config` for this process: the chief (and any single process) writes into
    `output_dir`; another worker of a multi-worker run writes its models, backups
    and stages into its own `output_dir/.worker<i>` (TensorFlow has every worker
    save; only the chief's files are the results), removed by `finish_worker`."""
    chief, index = training.worker_role(strategy)
    if chief:
        return config
    private = os.path.join(config.output_dir, f".worker{index}")
    os.makedirs(private, exist_ok=True)
    return config.replace(output_dir=private)


def finish_worker(config: RunConfig, strategy) -> None:
    """Remove a non-chief worker's private folder once its run has succeeded."""
    if not training.worker_role(strategy)[0] and os.path.basename(config.output_dir).startswith(".worker"):
        shutil.rmtree(config.output_dir, ignore_errors=True)


def run_settings(*parts: Any) -> dict:
    """The settings of a run (configs and dicts merged) as JSON values: of a config,
    the fields of its resume fingerprint (those that change the trained model: not
    the output folder, logging or strategy); a dict counts whole."""
    merged: dict = {}
    for part in parts:
        if dataclasses.is_dataclass(part):
            merged.update({name: getattr(part, name) for name in fingerprint_names(part)})
        else:
            merged.update(dict(part))
    return json.loads(json.dumps(merged, default=str))


def check_output_dir(output_dir: str, settings: dict, overwrite: bool = False) -> None:
    """Record `settings` in `output_dir/run_config.json`, and refuse to resume
    backups or finished stages left there by a run of other settings (naming
    each difference); `overwrite` deletes them and starts fresh instead."""
    path = os.path.join(output_dir, "run_config.json")
    leftovers = [n for n in RESUMABLE if os.path.exists(os.path.join(output_dir, n))]
    if overwrite:
        for name in leftovers:
            target = os.path.join(output_dir, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    elif leftovers and os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        differ = {k: (before.get(k), settings.get(k)) for k in sorted(set(before) | set(settings))
                  if before.get(k) != settings.get(k)}
        if differ:
            listed = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items())
            raise ValueError(
                f"{output_dir!r} holds {leftovers} of an unfinished run with other settings ({listed}); "
                "resuming would mix the two. Rerun with the same settings to resume, pass "
                "--overwrite (RunConfig(overwrite=True)) to start fresh, or use another --output_dir.")
    training.write_json(path, settings, atomic=True)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The shell command that started this process (for reports)."""
    return " ".join(shlex.quote(a) for a in ["python", *(sys.argv if argv is None else argv)])


def result_line(values: dict) -> str:
    """`RESULT k=v ...` with four decimals, the line recipes end on (for scripts)."""
    return "RESULT " + " ".join(f"{k}={v:.4f}" for k, v in values.items() if v is not None)


def write_results(output_dir: str, stem: str, title: str, sections: list, payload: dict) -> str:
    """Write `stem.md` (sections as `kdkeras.vis.write_report` takes them) and
    `stem.json` (the payload) into `output_dir`; returns the Markdown path."""
    from kdkeras.vis.report import write_report

    training.write_json(os.path.join(output_dir, f"{stem}.json"), payload)
    return write_report(os.path.join(output_dir, f"{stem}.md"), title, sections)
