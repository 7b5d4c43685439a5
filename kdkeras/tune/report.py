"""What a sweep leaves in its output folder: the trials table (Markdown and JSON: each
trial's method, settings, validation top-1, state, seconds), a plot of validation top-1
per trial with the best so far and the student alone (the sweep's reference) as a
dashed line, and the report of the choice (tune.json)."""

from __future__ import annotations

import os
from typing import Sequence

from kdkeras.files import write_json
from kdkeras.tune import spaces


def trial_rows(trials: Sequence, candidates: list[str]) -> list[dict]:
    """One dict per trial (Optuna `FrozenTrial`s), in trial order."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        method = t.user_attrs.get("method")
        settings = t.user_attrs.get("settings")
        if method is None and t.params:
            method, settings = spaces.settings_of(t.params, candidates)
        seconds = t.user_attrs.get("seconds", t.duration.total_seconds() if t.duration else None)
        rows.append({"trial": t.number, "method": method, "settings": settings or {},
                     "val_top1": t.value, "state": t.state.name.lower(),
                     "epochs": len(t.intermediate_values), "seconds": seconds})
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def reference_line(rows: list[dict], reference: dict) -> str:
    """The student alone's line under the trials table: its validation top-1 and seconds,
    and the best complete trial's margin over it."""
    alone = float(reference["val_top1"])
    seconds = reference.get("seconds")
    line = (f"Student alone (no teacher, CE only; the trials' data, epochs and seed; not a trial): validation "
            f"top-1 {alone:.4f}" + ("" if seconds is None else f" ({seconds:.1f} s)") + ".")
    best = max((r["val_top1"] for r in rows if r["state"] == "complete" and r["val_top1"] is not None), default=None)
    if best is not None:
        line += f" Best trial: {best:.4f}, {100 * (best - alone):+.2f} points over it"
        line += "." if best > alone else ": distillation at the tried settings did not beat the student alone."
    return line


def trials_markdown(rows: list[dict], reference: dict | None = None) -> str:
    """The trials table as Markdown (settings as `name=value`), and the student alone's
    line under it when the sweep has its reference."""
    lines = ["| trial | method | settings | val top-1 | state | epochs | seconds |",
             "|---:|---|---|---:|---|---:|---:|"]
    for r in rows:
        settings = ", ".join(f"{k}={_cell(v)}" for k, v in r["settings"].items())
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['trial']} | {r['method'] or '-'} | {settings} | {_cell(r['val_top1'])} | "
                     f"{r['state']} | {r['epochs']} | {seconds} |")
    if reference is not None:
        lines += ["", reference_line(rows, reference)]
    return "\n".join(lines) + "\n"


def write_trials(output_dir: str, rows: list[dict], reference: dict | None = None) -> tuple[str, str]:
    """trials.md (with the student alone's line given a `reference`) and trials.json in
    `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    md = os.path.join(output_dir, "trials.md")
    with open(md, "w") as f:
        f.write(trials_markdown(rows, reference))
    js = os.path.join(output_dir, "trials.json")
    write_json(js, rows)
    return md, js


def plot_trials(path: str, rows: list[dict], reference: dict | None = None) -> str:
    """Validation top-1 per trial (a dot per trial, coloured by method, pruned ones hollow),
    the best so far among complete trials as a line and, given a `reference`, the student
    alone as a dashed horizontal line; writes a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    scored = [r for r in rows if r["val_top1"] is not None]
    methods = list(dict.fromkeys(r["method"] for r in scored))
    for i, method in enumerate(methods):
        for pruned in (False, True):
            pts = [r for r in scored if r["method"] == method and (r["state"] == "pruned") == pruned]
            if pts:
                ax.scatter([r["trial"] for r in pts], [r["val_top1"] for r in pts], color=f"C{i}",
                           facecolors="none" if pruned else f"C{i}",
                           label=f"{method}{' (pruned)' if pruned else ''}")
    best, line = None, []
    for r in scored:
        if r["state"] == "complete":
            best = r["val_top1"] if best is None else max(best, r["val_top1"])
        line.append((r["trial"], best))
    if any(b is not None for _, b in line):
        ax.step([t for t, b in line if b is not None], [b for _, b in line if b is not None], where="post",
                color="black", label="best so far")
    if reference is not None:
        ax.axhline(float(reference["val_top1"]), color="grey", linestyle="--", label="student alone")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation top-1")
    ax.set_title("Validation top-1 per trial")
    if scored or reference is not None:
        ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, format="png", facecolor="white")
    return path
