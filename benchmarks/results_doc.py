"""The results page (`docs/results.md`) generated from saved distillation runs.

Reads every `metrics.json` of `recipes/distill.py` runs under the given run
roots (e.g. the `OUTPUT_DIR`s of `benchmarks/methods_table.py --seeds=0,1,2`),
groups them by data set, teacher, student and budget (train/test limits,
epochs, batch size, learning rate, and the optimiser settings recorded in
each run's `run_config.json`; DOT counts as SGD, its runs rows labelled
`METHOD (optimizer=dot)` beside the SGD rows), and writes one section per group: per method,
student top-1 mean +- std over seeds, the gain over the student trained alone
paired by seed (the `baseline_top1` of that seed's KD run), the gain over KD
paired by seed, train seconds, and the paths and commands of the runs. The
teacher's top-1 and its margin over the baseline head each section. Methods
whose mean gain over the baseline is negative are flagged. Every number comes
from the runs; nothing is typed by hand.

    python benchmarks/results_doc.py runs/table_r20_r8 runs/table_wrn \
        --output=docs/results.md --readme_output=runs/results_readme.md

Writes OUTPUT (Markdown), OUTPUT with `.json` (the same numbers, as fractions),
and a short block for the README (printed, and written to `--readme_output`
when given) that links the full page.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys
from typing import Any, Iterable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # run_settings builds methods (Keras, TensorFlow)

from kdkeras.analysis import experiments as ex  # noqa: E402
from kdkeras.analysis import tuned as tuned_runs  # noqa: E402
from kdkeras.analysis.stats import format_mean_std, mean_std  # noqa: E402
from kdkeras.distillation_optimizers import DISTILLATION_OPTIMIZERS  # noqa: E402
from kdkeras.weak_teacher import WEAK_TEACHER_MARGIN  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the method every other is compared with, and whose run carries the baseline
REFERENCE = "kd"
#: the baseline's seed-to-seed spread (sample std, points) a budget must stay below
MAX_BASELINE_SPREAD = 0.5
#: a mean gain this close to zero is zero (sums of paired differences round)
FLOAT_NOISE = 1e-9
#: what defines a budget, from metrics.json (and run_config.json for older runs)
BUDGET_KEYS = ("train_limit", "test_limit", "epochs", "batch_size", "lr")
#: run_config.json settings that change results beyond the budget: runs that differ
#: in them are never mixed in one section
OTHER_KEYS = ("optimizer", "dot_delta", "schedule", "weight_decay", "momentum", "augment", "image_size", "channels")


class NoRunsError(ValueError):
    """A run root holds no distillation run (no usable metrics.json)."""


# -- reading runs -------------------------------------------------------------------------------
def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _display_path(path: str) -> str:
    """`path` relative to the repository when inside it (stable across machines), else absolute."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def read_run(path: str) -> dict | None:
    """One run record from a metrics.json path, or None when the file is not a
    distillation run's (a teacher's or an edge report's metrics.json)."""
    metrics = _read_json(path)
    if not isinstance(metrics, dict) or "student_top1" not in metrics or "method" not in metrics:
        return None
    folder = os.path.dirname(path)
    config_path = os.path.join(folder, "run_config.json")
    settings = _read_json(config_path) if os.path.exists(config_path) else {}
    budget = {k: metrics[k] if k in metrics else settings.get(k) for k in BUDGET_KEYS}
    other, optimizer = _split_optimizer({k: settings.get(k) for k in OTHER_KEYS})
    return {
        "path": _display_path(path),
        "method": str(metrics["method"]).lower(),
        "method_args": metrics.get("method_args") or "",
        "seed": metrics.get("seed", settings.get("seed")),
        "dataset": metrics.get("dataset"),
        "teacher": metrics.get("teacher"),
        "student": metrics.get("student"),
        "student_args": metrics.get("student_args") or {},
        "budget": budget,
        "other": other,
        # a distillation optimiser (DOT) and its non-default settings: part of the row, not the section
        "optimizer_label": optimizer,
        "baseline_optimizer": metrics.get("baseline_optimizer"),
        "student_top1": metrics["student_top1"],
        "baseline_top1": metrics.get("baseline_top1"),
        "baseline_train_seconds": metrics.get("baseline_train_seconds"),
        "teacher_top1": metrics.get("teacher_top1"),
        "train_seconds": metrics.get("train_seconds"),
        "student_loss_weight": metrics.get("student_loss_weight"),
        "method_settings": metrics.get("method_settings"),
        "history": metrics.get("history") or {},
        "baseline_history": metrics.get("baseline_history") or {},
        "run_length_defaults": metrics.get("run_length_defaults") or {},
        # methods_table runs distill.py from the repository by its absolute path: shown relative
        "command": (metrics.get("command") or "").replace(ROOT + os.sep, "") or None,
        "mtime": os.path.getmtime(path),
        # a sweep's retrained winner: what the sweep chose on its validation split, and its cost
        "sweep": tuned_runs.sweep_of(path),
    }


def _split_optimizer(other: dict) -> tuple[dict, str]:
    """A run with a distillation optimiser (`DISTILLATION_OPTIMIZERS`) is a distillation
    choice, not another set-up: it joins its base's section, as a row labelled with the
    optimiser, compared with the base-trained baseline and KD of its seeds.

    (the settings with a distillation optimiser replaced by its base and its own
    settings dropped, the row's label for it: "optimizer=dot[, dot_delta=X]" with only
    non-default settings named; "" for any other optimiser, whose runs keep their section)."""
    name = other.get("optimizer")
    if name not in DISTILLATION_OPTIMIZERS:
        return other, ""
    base, own = DISTILLATION_OPTIMIZERS[name]
    label = [f"optimizer={name}"] + [f"{k}={other[k]}" for k, default in own.items()
                                     if other.get(k) is not None and other[k] != default]
    return {**other, "optimizer": base, **{k: None for k in own}}, ", ".join(label)


def load_runs(roots: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Every distillation run under `roots` (metrics.json found recursively),
    and the metrics.json paths skipped as not being distillation runs. Raises
    NoRunsError naming a root that holds none."""
    if not roots:
        raise NoRunsError("No run roots given: pass the folders holding the runs' metrics.json.")
    runs, skipped = [], []
    for root in roots:
        if not os.path.isdir(root):
            raise NoRunsError(f"Run root {root!r} is not a folder.")
        found = 0
        for path in sorted(glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True)):
            if tuned_runs.is_trial_run(path):  # a sweep's low-fidelity trial: its report lists it
                continue
            run = read_run(path)
            if run is None:
                skipped.append(_display_path(path))
                continue
            runs.append(run)
            found += 1
        if not found:
            raise NoRunsError(
                f"Run root {root!r} holds no distillation run: no metrics.json with 'method' and "
                f"'student_top1' below it (make runs with benchmarks/methods_table.py or recipes/distill.py).")
    tuned_runs.mark_uncommon_fidelity(runs, group_key)  # sweeps of another trial fidelity: rows of their own
    return runs, skipped


# -- grouping and statistics --------------------------------------------------------------------
def group_key(run: dict) -> tuple:
    """What makes runs comparable: data, teacher, student, budget and other settings
    (a distillation optimiser counted as its base: a DOT run joins the SGD runs)."""
    return (run["dataset"], run["teacher"], run["student"], json.dumps(run["student_args"], sort_keys=True),
            tuple(run["budget"][k] for k in BUDGET_KEYS), tuple(run["other"][k] for k in OTHER_KEYS))


def row_name(run: dict) -> str:
    """The table row of a run: its method, with its non-default arguments, and
    the recorded settings that differ from this commit's defaults (a run made
    before a default changed is its own row, never averaged with the new one)."""
    if "_row" not in run and run.get("sweep"):  # its settings are the sweep's choice, per seed
        run["_changed_defaults"] = {}
        run["_row"] = tuned_runs.row_label(run["method"], run["sweep"])
        if run.get("optimizer_label"):
            run["_row"] += f" ({run['optimizer_label']})"
    if "_row" not in run:
        changed = run["_changed_defaults"] = changed_defaults(run)
        extra = ([run["method_args"]] if run["method_args"] else []) + [f"{k}={v}" for k, v in changed.items()]
        extra += [run["optimizer_label"]] if run.get("optimizer_label") else []
        note = f"; {EARLIER_DEFAULT}" if changed else ""
        run["_row"] = run["method"] + (f" ({', '.join(extra)}{note})" if extra else "")
    return run["_row"]


#: the mark of a row whose recorded settings differ from this commit's defaults
EARLIER_DEFAULT = "earlier default"


def changed_defaults(run: dict) -> dict:
    """`name.key` -> recorded value, for each hyper-parameter the run recorded
    that this commit's defaults (with the run's method_args and run-length
    scaling) set otherwise; taps left to auto-detection are not compared."""
    recorded = run.get("method_settings")
    if not recorded:
        return {}
    current, _ = run_settings({**run, "method_settings": None})
    changed = {}
    for name, config in recorded.items():
        for key, value in config.items():
            default = current.get(name, {}).get(key)
            if default is not None and json.dumps(default, default=str) != json.dumps(value, default=str):
                changed[f"{name}.{key}" if len(recorded) > 1 else key] = value
    return changed


def stats(values: Iterable[float]) -> dict:
    """Mean, sample standard deviation (None for one value) and count."""
    values = [float(v) for v in values]
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _dedupe(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """One run per (group, row, seed): the newest; returns (kept, superseded)."""
    newest: dict = {}
    for run in sorted(runs, key=lambda r: (r["mtime"], r["path"])):
        key = (group_key(run), row_name(run), run["seed"])
        newest[key] = run
    ids = {id(r) for r in newest.values()}
    return [r for r in runs if id(r) in ids], [r for r in runs if id(r) not in ids]


#: a student whose final training accuracy trails the baseline's by more than this (points) is
#: held back by the method's term: it under-fits at the budget
UNDERFIT_POINTS = 1.0


def _term_key(run: dict) -> str:
    """The history entry of the run's method term (the total loss for a mix)."""
    return run["method"] if run["method"] in (run.get("history") or {}) else "loss"


def diagnosis(runs: list[dict], baseline_runs: dict) -> dict | None:
    """What the histories say about a row, averaged over its seeds: the method's
    term at the first and last epoch and its fall in the last epoch, and the
    student's final training accuracy against the baseline's of the same seed
    (a student that fits its training data worse than the baseline is held
    back by the term at this budget). None when the runs recorded no history."""
    terms, falls, gaps = [], [], []
    key = _term_key(runs[0])
    for run in runs:
        history = run.get("history") or {}
        values = [float(v) for v in history.get(_term_key(run)) or []]
        if len(values) >= 2:
            terms.append((values[0], values[-1]))
            falls.append((values[-2] - values[-1]) / abs(values[-2]) if values[-2] else 0.0)
        base = baseline_runs.get(run["seed"])
        acc = ex.last_epoch(history, "accuracy")
        base_acc = ex.last_epoch((base or {}).get("baseline_history") or {}, "accuracy")
        if acc is not None and base_acc is not None:
            gaps.append(acc - base_acc)
    if not terms:
        return None
    # a staged method whose term stays out of the main stage (AB, FSP) acts through its init stage
    init_only = key == "loss" and any((r.get("history") or {}).get("stages") for r in runs)
    return {"term": key, "init_stage_only": init_only,
            "first": _mean(t[0] for t in terms), "last": _mean(t[1] for t in terms),
            "last_epoch_fall": _mean(falls), "train_accuracy_gap": _mean(gaps) if gaps else None}


def diagnosis_text(d: dict | None, below: bool = False) -> str:
    """The histories in words; for a row `below` the baseline, also whether it lost
    by fitting its training data worse or by generalising worse."""
    if not d:
        return ""
    text = (f"`{d['term']}` {d['first']:.3g} → {d['last']:.3g} ({-100 * d['last_epoch_fall']:+.0f}% in the "
            "last epoch)")
    gap = d["train_accuracy_gap"]
    if gap is not None:
        text += f"; final train accuracy {100 * gap:+.2f} points against the baseline's"
        if 100 * gap < -UNDERFIT_POINTS and d.get("init_stage_only"):
            text += (": the student, started from its init stage's weights, is held back from fitting "
                     "its training data at this budget")
        elif 100 * gap < -UNDERFIT_POINTS:
            text += ": the term holds the student back from fitting its training data at this budget"
        elif below:
            text += ": it fits its training data as well and loses on test data"
    return text


def seed_baselines(runs: list[dict]) -> dict:
    """seed -> (baseline top-1, its train seconds, the metrics.json that recorded it):
    from that seed's KD run, else from another run of that seed with a baseline. A
    run under a distillation optimiser (DOT) gives its baseline only when it recorded
    that the student alone trained with the base (`baseline_optimizer`; older DOT runs
    trained it with DOT): the section's baseline is always the base-trained one."""
    out: dict = {}
    for run in sorted(runs, key=lambda r: (row_name(r) != REFERENCE, r["path"])):
        base_trained = not run.get("optimizer_label") or run.get("baseline_optimizer") == run["other"]["optimizer"]
        if run["baseline_top1"] is not None and run["seed"] not in out and base_trained:
            out[run["seed"]] = (run["baseline_top1"], run["baseline_train_seconds"], run["path"])
    return out


def summarize_group(runs: list[dict]) -> dict:
    """The numbers of one section: per-row statistics over seeds, paired gains,
    the teacher's top-1 and its margin over the baseline."""
    baselines = seed_baselines(runs)
    by_row: dict[str, dict] = {}
    for run in runs:
        by_row.setdefault(row_name(run), {})[run["seed"]] = run
    reference = by_row.get(REFERENCE, {})
    by_path = {r["path"]: r for r in runs}
    by_seed_baseline_run = {seed: by_path[b[2]] for seed, b in baselines.items()}
    rows = []
    if baselines:
        seeds = sorted(baselines, key=str)
        rows.append({
            "method": "baseline", "seeds": seeds, "n": len(seeds),
            "top1": stats(baselines[s][0] for s in seeds),
            "gain_over_baseline": stats([]),
            "gain_over_kd": stats(baselines[s][0] - reference[s]["student_top1"] for s in seeds if s in reference),
            "train_seconds": _mean(baselines[s][1] for s in seeds),
            "below_baseline": False, "clear_loss": False, "beats_kd_clearly": False,
            "runs": [{"seed": s, "path": baselines[s][2], "command": _command(runs, baselines[s][2])}
                     for s in seeds],
            "note": "student alone (CE), same initial weights",
        })
    order = sorted(by_row, key=lambda name: (name != REFERENCE, name))
    for name in order:
        per_seed = by_row[name]
        seeds = sorted(per_seed, key=str)
        gain_b = stats(per_seed[s]["student_top1"] - baselines[s][0] for s in seeds if s in baselines)
        gain_kd = stats(per_seed[s]["student_top1"] - reference[s]["student_top1"]
                        for s in seeds if s in reference) if name != REFERENCE else stats([])
        below = gain_b["mean"] is not None and gain_b["mean"] < -FLOAT_NOISE
        # the experiments' rule (a paired difference larger than its own std) read both ways
        clear_loss = ex.clear(gain_b["mean"], gain_b["std"], sign=-1)
        beats_kd = name != REFERENCE and ex.clear(gain_kd["mean"], gain_kd["std"])
        sweeps = {s: per_seed[s]["sweep"] for s in seeds if per_seed[s].get("sweep")}
        rows.append({
            "method": name, "seeds": seeds, "n": len(seeds),
            "top1": stats(per_seed[s]["student_top1"] for s in seeds),
            "gain_over_baseline": gain_b, "gain_over_kd": gain_kd,
            "train_seconds": _mean(per_seed[s]["train_seconds"] for s in seeds),
            "below_baseline": below, "clear_loss": clear_loss, "beats_kd_clearly": beats_kd,
            "runs": [{"seed": s, "path": per_seed[s]["path"], "command": per_seed[s]["command"]} for s in seeds],
            "note": "reference" if name == REFERENCE else ("chosen on validation" if sweeps else ""),
            "earlier_default": bool(per_seed[seeds[0]]["_changed_defaults"]),  # set by row_name above
            "settings": ("; ".join(f"seed {s}: {tuned_runs.settings_line(per_seed[s]['method'], sweeps[s])}"
                                   for s in seeds) if sweeps else settings_text(per_seed[seeds[0]])),
            "sweeps": [sweeps[s] for s in seeds] if sweeps else None,
            "diagnosis": diagnosis([per_seed[s] for s in seeds], by_seed_baseline_run),
        })
    teacher = stats(r["teacher_top1"] for r in runs if r["teacher_top1"] is not None)
    # the teacher's margin per seed: its top-1 recorded in the run that recorded that seed's baseline
    margin = stats(by_path[b[2]]["teacher_top1"] - b[0] for b in baselines.values()
                   if by_path[b[2]]["teacher_top1"] is not None)
    spread = rows[0]["top1"]["std"] if baselines else None
    # how much better the student alone fits its training data than the test split, per seed
    fits = [(ex.last_epoch(by_path[b[2]].get("baseline_history") or {}, "accuracy"), b[0])
            for b in baselines.values()]
    overfit = stats(train - test for train, test in fits if train is not None)
    return {"rows": rows, "teacher_top1": teacher["mean"], "teacher_margin": margin,
            "baseline_spread": spread, "baseline_overfit": overfit,
            "seeds": sorted({r["seed"] for r in runs}, key=str)}


def run_settings(run: dict) -> tuple[dict, bool]:
    """(each method's hyper-parameters in `run`, whether the run recorded them):
    a run made before metrics.json recorded them is rebuilt from its recorded
    method, method_args and run-length defaults with this commit's defaults."""
    if run.get("method_settings"):
        return run["method_settings"], True
    return MethodDefaults.active.settings(run), False


class MethodDefaults:
    """This commit's method settings for each (method, method_args, run-length defaults,
    train_limit) a page's runs name, read from `ARCHIVE/method_defaults.json` when the
    archive has it, so the page regenerates without TensorFlow; a key it lacks is computed
    from the code (which imports the methods, and so TensorFlow). `--archive` writes the
    file back; tests/test_results_doc.py checks every entry against the code."""

    FILE = "method_defaults.json"
    active: "MethodDefaults"

    def __init__(self, path: str | None = None, refresh: bool = False):
        self.path = path
        self.known = {} if refresh or not path or not os.path.exists(path) else _read_json(path)
        self.used: dict[str, dict] = {}

    @staticmethod
    def key(run: dict) -> str:
        return json.dumps([run["method"], run["method_args"] or "", run.get("run_length_defaults") or {},
                           run["budget"].get("train_limit") or 1], sort_keys=True)

    def settings(self, run: dict) -> dict:
        key = self.key(run)
        if key not in self.known:
            self.known[key] = computed_settings(run)
        self.used[key] = self.known[key]
        return self.used[key]

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(dict(sorted(self.used.items())), f, indent=1)
            f.write("\n")


MethodDefaults.active = MethodDefaults()


def computed_settings(run: dict) -> dict:
    """The settings this commit's methods take for `run`'s method, method_args and
    run-length defaults (imports the methods, and so TensorFlow)."""
    from kdkeras import methods as methods_lib

    args = methods_lib.parse_method_args(run["method_args"])
    for name, scaled in run.get("run_length_defaults", {}).items():
        args[name] = {**scaled, **args.get(name, {})}
    methods = methods_lib.from_spec(run["method"], args, num_examples=run["budget"].get("train_limit") or 1)
    return json.loads(json.dumps(methods_lib.method_settings(methods), default=str))


def settings_text(run: dict) -> str:
    """One line: the student's CE weight and each method's settings (taps left out
    when they are the methods' defaults)."""
    settings, recorded = run_settings(run)
    parts = [f"CE weight {run['student_loss_weight']}"] if run.get("student_loss_weight") is not None else []
    for name, config in settings.items():
        shown = ", ".join(f"{k}={v}" for k, v in config.items() if v is not None)
        scaled = run.get("run_length_defaults", {}).get(name)
        parts.append(f"{name}: {shown}" + (f" (scaled to the run's length: {scaled})" if scaled else ""))
    return "; ".join(parts) + ("" if recorded else " (rebuilt from the recorded method arguments with "
                                                  "this commit's defaults)")


def _mean(values: Iterable) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _command(runs: list[dict], path: str) -> str | None:
    return next((r["command"] for r in runs if r["path"] == path), None)


def summarize(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Sections (one per group of comparable runs, in the order the roots were
    given and their runs found) and the runs left out as superseded by a newer
    run of the same group, row and seed."""
    kept, superseded = _dedupe(runs)
    groups: dict[tuple, list[dict]] = {}
    for run in kept:
        groups.setdefault(group_key(run), []).append(run)
    sections = []
    for key in groups:
        group = groups[key]
        first = group[0]
        sections.append({
            "dataset": first["dataset"], "teacher": first["teacher"], "student": first["student"],
            "student_args": first["student_args"], "budget": first["budget"], "other": first["other"],
            **summarize_group(group),
        })
    return sections, superseded


# -- writing ------------------------------------------------------------------------------------
def _pct(s: dict) -> str:
    return format_mean_std(s["mean"], s["std"])


def _gain(s: dict) -> str:
    return format_mean_std(s["mean"], s["std"], signed=True)


def _name(model: Any) -> str:
    """A teacher/student as the reader knows it: the folder of a saved model, or the zoo name."""
    text = str(model)
    if text.endswith(".keras"):
        return os.path.basename(os.path.dirname(text)) or os.path.basename(text)
    return text


def section_title(section: dict) -> str:
    b = section["budget"]
    train = "full train set" if b["train_limit"] is None else f"{b['train_limit']:,} train"
    args = section.get("student_args") or {}
    student = _name(section["student"]) + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(args.items())) + ")"
                                           if args else "")
    return (f"{section['dataset']}: {_name(section['teacher'])} -> {student}, "
            f"{train}, {b['epochs']} epoch{'' if b['epochs'] == 1 else 's'}")


def budget_line(section: dict) -> str:
    b, o = section["budget"], section["other"]
    parts = [f"train_limit={b['train_limit'] or 'all'}", f"test_limit={b['test_limit'] or 'all'}",
             f"epochs={b['epochs']}", f"batch_size={b['batch_size']}", f"lr={b['lr']}"]
    parts += [f"{k}={v}" for k, v in o.items() if v is not None]
    if section["student_args"]:
        parts.append(f"student_args={section['student_args']}")
    return ", ".join(parts)


def _loss_size(row: dict) -> str:
    """Whether a row's loss to the baseline passes the page's rule or stays within the seeds' noise."""
    gain = row["gain_over_baseline"]
    if gain["std"] is None:
        return "one seed, no spread"
    return ("a clear loss, larger than its std" if row["clear_loss"]
            else "within the seeds' noise, not larger than its std")


def section_markdown(section: dict) -> list[str]:
    """One section's paragraphs: set-up, checks, the table, the runs behind each row."""
    from kdkeras.vis import markdown_table

    margin = section["teacher_margin"]
    teacher = "–" if section["teacher_top1"] is None else f"{100 * section['teacher_top1']:.2f}"
    seeds = ", ".join(map(str, section["seeds"]))
    text = [
        f"Teacher `{section['teacher']}` (top-1 {teacher}%, {_gain(margin)} points over the student "
        f"trained alone), student `{section['student']}`. Budget: {budget_line(section)}. Seeds: {seeds}. "
        "Cells are mean ± sample std over seeds in percent; gains are paired by seed (each seed's "
        "run against the baseline and the KD run of the same seed) in percentage points.",
    ]
    checks = []
    spread = section["baseline_spread"]
    if spread is None:
        checks.append("**No baseline spread:** fewer than two seeds with a baseline; "
                      "the budget's noise is unmeasured.")
    elif 100 * spread >= MAX_BASELINE_SPREAD:
        checks.append(f"**Budget too small:** the baseline's seed-to-seed std is {100 * spread:.2f} points "
                      f"(needs < {MAX_BASELINE_SPREAD}); differences below it are noise.")
    if margin["mean"] is not None and margin["mean"] < WEAK_TEACHER_MARGIN:
        checks.append(f"**Weak teacher:** only {100 * margin['mean']:+.2f} points better than the student "
                      "trained alone; methods that give the teacher most of the loss weight may lose.")
    losers = [r for r in section["rows"] if r["below_baseline"]]
    if losers:
        checks.append("**Below the baseline** (mean paired gain < 0): " + "; ".join(
            f"`{r['method']}` (" + "; ".join(filter(None, [_loss_size(r), diagnosis_text(r.get("diagnosis"), below=True)])) + ")"
            for r in losers) + ".")
    earlier = [r["method"] for r in section["rows"] if r.get("earlier_default")]
    if earlier:
        checks.append("**Earlier defaults:** " + ", ".join(f"`{name}`" for name in earlier)
                      + " ran with a default that has changed since; the method's section in "
                      "[methods.md](methods.md) says why, with the measurement.")
    overfit = section.get("baseline_overfit") or {}
    if overfit.get("mean") is not None:
        checks.append(f"**The student alone's generalisation gap:** its last-epoch training accuracy is "
                      f"{_gain(overfit)} points above its test top-1; a method that works as a regulariser "
                      "(label smoothing, a virtual teacher) can win back at most that much.")
    tuned = [r for r in section["rows"] if r.get("sweeps")]
    if tuned:
        checks.append("**Tuned rows** (settings chosen per seed on a validation split carved from that "
                      "seed's training examples, never on the test split; `recipes/tune.py`, Optuna, the "
                      "first trial at the published defaults): " + "; ".join(
                          f"`{r['method']}`: {tuned_runs.budget_text(r['sweeps'])}" for r in tuned)
                      + ". Each seed's choice is listed under the table.")
    winners = [r for r in section["rows"] if r.get("beats_kd_clearly")]
    if any(r["method"] == REFERENCE for r in section["rows"]):  # a section without KD compares with the baseline only
        checks.append(
            "**Beats KD clearly** (paired gain over KD larger than its own std): " + ", ".join(
                f"`{r['method']}` {_gain(r['gain_over_kd'])}" for r in winners) + "."
            if winners else "**No method beats KD clearly** (no paired gain over KD is larger than its own std).")
    text += checks
    table = []
    for r in section["rows"]:
        flag = "below baseline" if r["below_baseline"] else ""
        note = "; ".join(filter(None, [r["note"], flag, "beats KD clearly" if r["beats_kd_clearly"] else ""]))
        method = f"**{r['method']}** ⚠" if r["below_baseline"] else r["method"]
        seconds = "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        table.append([method, r["n"], _pct(r["top1"]), _gain(r["gain_over_baseline"]),
                      _gain(r["gain_over_kd"]), seconds, note])
    text.append(markdown_table(["method", "seeds", "student top-1 (%)", "gain over baseline (pp)",
                                "gain over KD (pp)", "train s (mean)", "note"], table, align="lrrrrrl"))
    runs = ["<details><summary>Runs behind each row (metrics.json and command)</summary>", ""]
    for r in section["rows"]:
        for run in r["runs"]:
            command = f"`{run['command']}`" if run["command"] else "(command not recorded)"
            runs.append(f"- {r['method']}, seed {run['seed']}: `{run['path']}`: {command}")
    runs += ["", "</details>"]
    text.append("\n".join(runs))
    settings = ["<details><summary>Hyper-parameters of each row (the methods' defaults unless the "
                "row names its arguments)</summary>", ""]
    settings += [f"- {r['method']}: {r['settings']}" for r in section["rows"] if r.get("settings")]
    settings += ["", "</details>"]
    text.append("\n".join(settings))
    notes = [f"- {r['method']}: {diagnosis_text(r['diagnosis'], r['below_baseline'])}" for r in section["rows"] if r.get("diagnosis")]
    if notes:
        text.append("\n".join(["<details><summary>What the training histories say (mean over seeds: the "
                                "method's logged term, first and last epoch; the student's final training "
                                "accuracy against the baseline's)</summary>", "", *notes, "", "</details>"]))
    return text


def experiment_markdown(experiments: list[dict], page_dir: str) -> list[str]:
    """The experiments' paragraphs: per recipe and setting, the table over seeds,
    the plot (drawn next to the page, under results_plots/), the verdict on the
    paper's claim and the runs behind it."""
    if not experiments:
        return []
    lines = ["## Experiments of the papers", "",
             "Each experiment recipe run once per seed with the same flags otherwise; rows are mean ± "
             "sample std over seeds, gains paired by seed. " + ex.RULE, ""]
    counts: dict[str, int] = {}
    for section in experiments:
        stem = section["experiment"]
        counts[stem] = counts.get(stem, 0) + 1
        plot = os.path.join(page_dir, "results_plots", f"{stem}_{counts[stem]}.png")
        os.makedirs(os.path.dirname(plot), exist_ok=True)
        ex.section_plot(section, plot)
        section["plot"] = _display_path(plot)
        seeds = ", ".join(str(s) for s in section["seeds"])
        commands = [c.replace(ROOT + os.sep, "") for c in section["commands"] if c]
        lines += [f"### {section['title']}", "",
                  f"Setting: {ex.setting_text(section)}; seeds {seeds}.", "",
                  ex.section_table(section), "",
                  f"![{section['title']}](results_plots/{os.path.basename(plot)})", "",
                  f"**Verdict.** {section['verdict']}", "",
                  "Runs: " + ", ".join(f"`{_display_path(p)}`" for p in section["paths"]) + ".", ""]
        if commands:
            lines += [f"Command (seed {section['seeds'][0]}): `{commands[0]}`", ""]
    return lines


def markdown(sections: list[dict], command: str, experiments: list[str] | None = None) -> str:
    """The full page: how it was made, then one section per group, then the
    experiments' paragraphs (`experiment_markdown`)."""
    lines = [
        "# Results: every method against the student alone and against KD",
        "",
        f"Generated by `{command}` from saved runs; do not edit by hand (rerun it). "
        f"A budget is large enough when the baseline's seed-to-seed std is below {MAX_BASELINE_SPREAD} "
        "point; a method flagged ⚠ loses to the baseline on average. Nothing is picked on the test "
        "split: every row runs with the settings listed under its table (the methods' published "
        "defaults unless the row names its arguments; a `(tuned)` row's, chosen per seed on a "
        "validation split carved from the training examples; a `(tuned; trials scored on their own "
        "split)` row's sweep scored each trial on a split of that trial's own examples, the earlier "
        "protocol), no best-epoch choice; the final "
        "student is the last epoch's.",
        "",
    ]
    for section in sections:
        lines += [f"## {section_title(section)}", ""]
        for paragraph in section_markdown(section):
            lines += [paragraph, ""]
    lines += experiments or []
    return "\n".join(lines).rstrip() + "\n"


def readme_block(sections: list[dict], page: str, experiments: Sequence[dict] = ()) -> str:
    """A short version for the README: per section, each method's paired gain
    over the baseline, then whether each experiment's claim held, linking the full page."""
    from kdkeras.vis import markdown_table

    lines = [f"Gain of each method over the student trained alone, paired by seed (mean ± std, "
             f"percentage points; full tables, spreads and the runs behind them: [{page}]({page})). "
             f"Rows and sections with fewer than {README_MIN_SEEDS} seeds (probes) are on the page only.", ""]
    for section in sections:
        rows = [r for r in section["rows"] if r["n"] >= README_MIN_SEEDS]
        if not rows or rows[0]["method"] != "baseline":
            continue
        lines += [f"**{section_title(section)}** (teacher {_gain(section['teacher_margin'])} over the "
                  "student alone)", ""]
        rows = [[r["method"] + (" ⚠" if r["below_baseline"] else ""), r["n"], _pct(r["top1"]),
                 _gain(r["gain_over_baseline"])] for r in rows]
        lines += [markdown_table(["method", "seeds", "top-1 (%)", "gain (pp)"], rows, align="lrrr"), ""]
    if experiments:
        lines += ["The papers' experiments, over seeds (verdicts and plots on the page):", ""]
        lines += [f"- {e['title']}{_distinguishing_setting(e, experiments)} ({len(e['seeds'])} seeds): the claim "
                  f"{'held' if e['held'] else 'did not hold in full'}." for e in experiments]
    return "\n".join(lines).rstrip() + "\n"


#: the README's short tables leave out rows and sections with fewer seeds than this
README_MIN_SEEDS = 2


def _distinguishing_setting(experiment: dict, experiments: Sequence[dict]) -> str:
    """`, key=value, ...` for the settings in which `experiment` differs from the
    other sections of the same recipe ("" when it is the only one)."""
    others = [e for e in experiments if e["experiment"] == experiment["experiment"] and e is not experiment]
    if not others:
        return ""
    keys = sorted(k for k in experiment["setting"]
                  if any(o["setting"].get(k) != experiment["setting"][k] for o in others))
    keys = [k for k in keys if k != "rows"] or keys  # each row's weights only when nothing else differs
    return "".join(f", {k}={experiment['setting'][k]}" for k in keys)


def _jsonable(section: dict) -> dict:
    return json.loads(json.dumps(section, default=str))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("roots", nargs="+", help="run roots: folders searched recursively for metrics.json")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "results.md"),
                   help="Markdown page (default docs/results.md); the JSON goes next to it")
    p.add_argument("--experiments", nargs="+", default=[],
                   help="folders searched recursively for the experiment recipes' JSON "
                        "(teacher_free.json, reversed_kd.json, defective_kd.json, bias_variance.json), "
                        "one run per seed; each recipe and setting becomes a section with its plot")
    p.add_argument("--readme_output", default=None,
                   help="also write the README's short block here (it is always printed)")
    p.add_argument("--readme_link", default=None,
                   help="the page's link in the README block (default: OUTPUT relative to the repository)")
    p.add_argument("--archive", default=None,
                   help="copy each run's metrics.json and run_config.json under this folder "
                        "(ARCHIVE/<root name>/<path in the root>) and cite those copies, so a page "
                        "kept in the repository points at records kept with it; ARCHIVE/"
                        f"{MethodDefaults.FILE} keeps this commit's method settings for them")
    p.add_argument("--refresh_method_defaults", action="store_true",
                   help=f"recompute the archive's {MethodDefaults.FILE} from the code (after a default changed)")
    return p.parse_args(argv)


#: the files of a run kept by --archive: the distillation runs' and the experiment recipes'
EXPERIMENT_RECORDS = tuple(f"{stem}.json" for stem in ex.EXPERIMENTS)
RECORDS = {name: (name, "run_config.json") for name in ("metrics.json", *EXPERIMENT_RECORDS)}


def archive_runs(roots: Sequence[str], archive: str, records: Sequence[str] = ("metrics.json",)) -> list[str]:
    """Copy the run records (`records`, e.g. metrics.json, with their
    run_config.json) of `roots` into `archive/<root name>/...`, keeping each
    root's layout; returns the new roots. A root may be an archived folder
    itself: new runs of a root with the same name are added to it (runs of the
    same row and seed: the newest wins), so a page grows without the old run
    folders."""
    import shutil

    copied = []
    for root in roots:
        target = os.path.join(archive, os.path.basename(os.path.normpath(root)))
        paths = [p for record in records for p in glob.glob(os.path.join(root, "**", record), recursive=True)
                 if not tuned_runs.is_trial_run(p)]
        for path in paths:
            folder = os.path.dirname(os.path.relpath(path, root))
            os.makedirs(os.path.join(target, folder), exist_ok=True)
            names = list(RECORDS[os.path.basename(path)])
            if tuned_runs.sweep_folder(path):  # a sweep's winner: the sweep's report beside it
                names += [os.path.join(os.pardir, name) for name in tuned_runs.SWEEP_RECORDS]
            for name in names:
                source, copy = os.path.join(os.path.dirname(path), name), os.path.join(target, folder, name)
                if os.path.exists(source) and not (os.path.exists(copy) and os.path.samefile(source, copy)):
                    shutil.copy2(source, copy)  # keeps mtime: newest wins
        if target not in copied:
            copied.append(target)
    return copied


def main(argv: Sequence[str] | None = None) -> dict:
    """Generate the page, its JSON and the README block; returns the JSON payload."""
    args = parse_args(argv)
    command = " ".join(["python", "benchmarks/results_doc.py", *map(shlex.quote, sys.argv[1:] if argv is None
                                                                     else argv)])
    for root in args.experiments:
        if not os.path.isdir(root):
            raise NoRunsError(f"Experiment root {root!r} is not a folder.")
    roots = archive_runs(args.roots, args.archive) if args.archive else args.roots
    experiment_roots = (archive_runs(args.experiments, args.archive, EXPERIMENT_RECORDS)
                        if args.archive else args.experiments)
    archive = args.archive or (os.path.dirname(os.path.normpath(roots[0])) if roots else None)
    defaults_path = os.path.join(archive, MethodDefaults.FILE) if archive else None
    MethodDefaults.active = defaults = MethodDefaults(defaults_path, refresh=args.refresh_method_defaults)
    try:
        runs, skipped = load_runs(roots)
        sections, superseded = summarize(runs)
    finally:
        MethodDefaults.active = MethodDefaults()
    if args.archive or args.refresh_method_defaults:
        defaults.write(defaults_path)
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    experiments = ex.load_experiments(experiment_roots)
    if experiment_roots and not experiments:
        raise NoRunsError(f"Experiment roots {experiment_roots} hold no experiment recipe JSON "
                          f"({', '.join(EXPERIMENT_RECORDS)}).")
    experiment_lines = experiment_markdown(experiments, os.path.dirname(output))
    with open(output, "w") as f:
        f.write(markdown(sections, command, experiment_lines))
    payload = {
        "command": command, "roots": [_display_path(r) for r in roots],
        "max_baseline_spread_points": MAX_BASELINE_SPREAD,
        "sections": [_jsonable(s) for s in sections],
        "experiments": [_jsonable(s) for s in experiments],
        "skipped_not_distillation_runs": skipped,
        "superseded": [r["path"] for r in superseded],
    }
    json_path = os.path.splitext(output)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=2)
    link = args.readme_link or os.path.relpath(output, ROOT)
    block = readme_block(sections, link, experiments)
    if args.readme_output:
        os.makedirs(os.path.dirname(os.path.abspath(args.readme_output)), exist_ok=True)
        with open(args.readme_output, "w") as f:
            f.write(block)
    for path in payload["superseded"]:
        print(f"note: {path} superseded by a newer run of the same method and seed", file=sys.stderr)
    print(f"wrote {_display_path(output)} and {_display_path(json_path)}: {len(sections)} section(s), "
          f"{len(runs) - len(superseded)} runs\n\n{block}")
    return payload


if __name__ == "__main__":
    try:
        main()
    except NoRunsError as err:
        sys.exit(f"results_doc.py: {err}")
