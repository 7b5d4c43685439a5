"""What a sweep leaves in its output folder: the trials table (Markdown and JSON: each
trial's method, settings, validation top-1, state, seconds), a plot of validation top-1
per trial with the best so far, and the report of the choice (tune.json)."""

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


def trials_markdown(rows: list[dict]) -> str:
    """The trials table as Markdown (settings as `name=value`)."""
    lines = ["| trial | method | settings | val top-1 | state | epochs | seconds |",
             "|---:|---|---|---:|---|---:|---:|"]
    for r in rows:
        settings = ", ".join(f"{k}={_cell(v)}" for k, v in r["settings"].items())
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['trial']} | {r['method'] or '-'} | {settings} | {_cell(r['val_top1'])} | "
                     f"{r['state']} | {r['epochs']} | {seconds} |")
    return "\n".join(lines) + "\n"


def write_trials(output_dir: str, rows: list[dict]) -> tuple[str, str]:
    """trials.md and trials.json in `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    md = os.path.join(output_dir, "trials.md")
    with open(md, "w") as f:
        f.write(trials_markdown(rows))
    js = os.path.join(output_dir, "trials.json")
    write_json(js, rows)
    return md, js


def plot_trials(path: str, rows: list[dict]) -> str:
    """Validation top-1 per trial (a dot per trial, coloured by method, pruned ones hollow)
    and the best so far among complete trials as a line; writes a PNG."""
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
    ax.set_xlabel("trial")
    ax.set_ylabel("validation top-1")
    ax.set_title("Validation top-1 per trial")
    if scored:
        ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, format="png", facecolor="white")
    return path
