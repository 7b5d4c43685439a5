"""Summarise several distill.py runs (e.g. seeds) as a Markdown table.

    python recipes/summarize_runs.py --runs='runs/kd_s*' --output=runs/kd_seeds.md

Reads each run's metrics.json and reports, per method, the mean, standard
deviation, min and max of teacher, baseline and student top-1 and the gain
of the student over its baseline (paired by run).
"""

from __future__ import annotations

import glob
import json
import os
import statistics

from absl import flags

from kdkeras import recipe_utils
from kdkeras.vis import markdown_table



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("runs", None, "Comma-separated run folders or glob patterns holding metrics.json.",
                        required=True, flag_values=fv)
    flags.DEFINE_string("output", None, "Write the Markdown table here too.", flag_values=fv)

KEYS = ("teacher_top1", "baseline_top1", "student_top1")


def load_runs(patterns: str) -> list[dict]:
    paths = []
    for pattern in filter(None, (p.strip() for p in patterns.split(","))):
        matched = sorted(glob.glob(pattern)) or [pattern]
        paths += [os.path.join(p, "metrics.json") for p in matched]
    runs = []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"No metrics.json at {path!r}.")
        with open(path) as f:
            runs.append({**json.load(f), "_path": path})
    return runs


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def table(runs: list[dict]) -> str:
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        by_method.setdefault(run.get("method", "?"), []).append(run)
    rows = []
    for method, group in by_method.items():
        cols = [stats([r[k] for r in group if r.get(k) is not None]) for k in KEYS]
        gains = [r["student_top1"] - r["baseline_top1"] for r in group if r.get("baseline_top1") is not None]
        seeds = ",".join(str(r.get("seed")) for r in group)
        rows.append([method, f"{len(group)} ({seeds})", *cols, stats(gains)])
    text = markdown_table(["method", "runs (seeds)", "teacher top-1 %", "baseline top-1 %",
                           "student top-1 %", "student - baseline (points)"], rows)
    return text + "\n\nmean ± sample std (min-max) over runs\n"


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    text = table(load_runs(fv.runs))
    print(text)
    if fv.output:
        os.makedirs(os.path.dirname(os.path.abspath(fv.output)), exist_ok=True)
        with open(fv.output, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)
