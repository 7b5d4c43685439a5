"""The experiment recipes' results over seeds, for the results page.

Reads the JSON that `recipes/teacher_free.py`, `reversed_kd.py`,
`defective_kd.py` and `bias_variance.py` write (one run per seed), groups the
runs of one setting, and reports per row the mean +- sample std over seeds,
the differences paired by seed, and whether the paper's claim held. A claim
holds for a row when its paired difference points the claimed way by more
than its own seed-to-seed std (`clear`); the rule is printed with the verdict.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Sequence

from kdkeras.analysis.stats import format_mean_std, mean_std

#: recipe output stem -> the payload keys that define one setting (runs that
#: differ only in their seed are the seeds of one section)
SETTING_KEYS = {
    "teacher_free": ("dataset", "student", "teacher", "epochs", "train_limit"),
    "reversed_kd": ("dataset", "weak", "strong", "epochs", "train_limit", "kd_temperature", "kd_alpha"),
    "defective_kd": ("dataset", "teacher", "student", "defect", "epochs", "teacher_epochs", "train_limit",
                     "kd_temperature", "kd_alpha"),
    "bias_variance": ("dataset", "student", "teacher", "methods", "method_args", "num_models", "resample",
                      "epochs", "train_limit"),
}
EXPERIMENTS = tuple(SETTING_KEYS)

#: the rule behind every verdict, printed under each section
RULE = ("A difference is *clear* when its mean over seeds, paired by seed, points the claimed way by "
        "more than its own sample std; with one seed there is no spread and nothing is clear.")


def clear(mean: float | None, std: float | None, sign: int = 1) -> bool:
    """True when `sign * mean` is positive and larger than the seeds' std."""
    return mean is not None and std is not None and sign * mean > 0 and sign * mean > std


def points(mean: float | None, std: float | None) -> str:
    """A fraction's mean +- std as signed percentage points."""
    return format_mean_std(mean, std, signed=True, empty="-")


def percent(mean: float | None, std: float | None) -> str:
    """A fraction's mean +- std as a percentage."""
    return format_mean_std(mean, std, empty="-")


def _paired(runs: Sequence[dict], value: Callable[[dict], float | None]) -> dict:
    values = [value(r) for r in runs]
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "per_seed": values}


def _difference(runs: Sequence[dict], row: str, other: str, term: str = "top1") -> dict:
    """`row`'s `term` minus `other`'s, per seed (each run's `results`), over seeds."""
    return _paired(runs, lambda r: r["results"][row][term] - r["results"][other][term])


# -- loading ------------------------------------------------------------------------------------


def experiment_setting(stem: str, payload: dict) -> dict:
    """What makes two runs of a recipe comparable: its SETTING_KEYS, and for
    teacher-free KD (whose JSON keeps its weights only per row) each row's settings,
    so runs with other temperatures or weights never share a section."""
    setting = {k: payload.get(k) for k in SETTING_KEYS[stem]}
    if stem == "teacher_free":
        setting["rows"] = "; ".join(f"{row} {out.get('settings')}" for row, out in payload.get("results", {}).items()
                                    if row != "baseline" and out.get("settings"))
    return setting


def load_experiments(roots: Sequence[str]) -> list[dict]:
    """Every experiment section under `roots`: the runs of one recipe and one
    setting, one per seed (the newest file wins when a seed repeats), summarised."""
    sections = []
    for stem in EXPERIMENTS:
        groups: dict[str, dict[Any, tuple[float, dict]]] = {}
        for root in roots:
            for path in sorted(glob.glob(os.path.join(root, "**", f"{stem}.json"), recursive=True)):
                with open(path) as f:
                    payload = json.load(f)
                payload["_path"] = path
                setting = experiment_setting(stem, payload)
                key = json.dumps(setting, sort_keys=True, default=str)
                by_seed = groups.setdefault(key, {})
                mtime = os.path.getmtime(path)
                if payload.get("seed") not in by_seed or by_seed[payload.get("seed")][0] <= mtime:
                    by_seed[payload.get("seed")] = (mtime, payload)
        for key, by_seed in groups.items():
            runs = [p for _, (_, p) in sorted(by_seed.items(), key=lambda kv: -1 if kv[0] is None else kv[0])]
            section = SUMMARIZERS[stem](runs)
            section.update(experiment=stem, setting=json.loads(key), seeds=[r.get("seed") for r in runs],
                           paths=[r["_path"] for r in runs], commands=[r.get("command") for r in runs])
            sections.append(section)
    return sections


# -- row experiments: teacher-free and Re-KD ------------------------------------------------------


def last_epoch(history: dict, key: str) -> float | None:
    """The last epoch's value of `key` in a Keras history dict (None when absent)."""
    values = history.get(key) or []
    return float(values[-1]) if values else None


def _train_accuracy(result: dict) -> float | None:
    """The last epoch's training accuracy of a recipe row."""
    return last_epoch(result.get("history") or {}, "accuracy")


def _row_stats(runs: Sequence[dict], row: str, reference: str | None) -> dict:
    """A row's top-1 over seeds and, against its reference row, the top-1 gain
    and the final training accuracy's difference (both paired by seed): a
    regulariser that costs training accuracy in a short run shows there."""
    top1 = _paired(runs, lambda r: r["results"][row]["top1"])
    gain = train_gap = None
    if reference is not None:
        gain = _difference(runs, row, reference)
        gaps = [(_train_accuracy(r["results"][row]), _train_accuracy(r["results"][reference])) for r in runs]
        if all(a is not None and b is not None for a, b in gaps):
            train_gap = _paired(gaps, lambda ab: ab[0] - ab[1])
    seconds = mean_std(r["results"][row].get("train_seconds") for r in runs)[0]
    return {"row": row, "top1": top1, "reference": reference, "gain": gain, "train_gap": train_gap,
            "train_seconds": seconds}


def _common_rows(runs: Sequence[dict]) -> list[str]:
    rows = list(runs[0]["results"])
    return [row for row in rows if all(row in r["results"] for r in runs)]


TEACHER_FREE_ROWS = ("LSR", "Tf-KD self", "Tf-KD reg")


def summarize_teacher_free(runs: Sequence[dict]) -> dict:
    """Rows against the student alone and against KD; the claim: label smoothing,
    self-KD and the virtual teacher beat the student alone and come close to KD."""
    names = _common_rows(runs)
    rows = [_row_stats(runs, name, None if name == "baseline" else "baseline") for name in names]
    has_kd = "KD" in names
    for row in rows:
        row["vs_kd"] = _difference(runs, row["row"], "KD") if has_kd and row["row"] != "KD" else None
    held, missed = [], []
    for row in rows:
        if row["row"] not in TEACHER_FREE_ROWS:
            continue
        gain, vs_kd = row["gain"], row["vs_kd"]
        beats = clear(gain["mean"], gain["std"])
        # "close to KD": not clearly behind it
        close = vs_kd is None or not clear(vs_kd["mean"], vs_kd["std"], sign=-1)
        text = (f"{row['row']} {points(gain['mean'], gain['std'])} pp over the student alone"
                + ("" if vs_kd is None else f", {points(vs_kd['mean'], vs_kd['std'])} pp against KD"))
        if beats and close:
            held.append(text)
        else:
            missed.append(text + fit_note(row))
    kd = next((r for r in rows if r["row"] == "KD"), None)
    verdict = ("Claim (Tf-KD): label smoothing, self-distillation and the hand-made virtual teacher "
               "improve the student about as much as KD does. Here "
               + (f"KD gains {points(kd['gain']['mean'], kd['gain']['std'])} pp. " if kd else "no KD row was run. ")
               + _held_text(held, missed,
                            "clearly above the student alone and not clearly behind KD"))
    overfit = generalisation_gap(runs, "baseline")
    if overfit is not None:
        verdict += (f" The student alone ends its last epoch {points(overfit['mean'], overfit['std'])} pp more "
                    "accurate on its training data than on the test split: that gap is all a regulariser "
                    "(label smoothing, the virtual teacher) can close.")
    return {"title": "Teacher-free KD", "rows": rows, "verdict": verdict, "held": bool(held) and not missed,
            "columns": "vs_kd" if has_kd else None, "generalisation_gap": overfit}


def generalisation_gap(runs: Sequence[dict], row: str) -> dict | None:
    """How far a row's last-epoch training accuracy is above its test top-1, per
    seed (None when a run has no training history)."""
    pairs = [(_train_accuracy(r["results"][row]), r["results"][row]["top1"]) for r in runs]
    if any(train is None for train, _ in pairs):
        return None
    return _paired(pairs, lambda p: p[0] - p[1])


REKD_REFERENCE = {"Re-KD": "strong alone", "normal KD": "weak alone"}


def summarize_reversed_kd(runs: Sequence[dict]) -> dict:
    """Each KD run against the same model trained alone; the claim: the strong
    model taught by the weak one beats the strong model alone."""
    rows = [_row_stats(runs, name, REKD_REFERENCE.get(name)) for name in _common_rows(runs)]
    by_name = {r["row"]: r for r in rows}
    rekd = by_name.get("Re-KD")
    held = rekd is not None and clear(rekd["gain"]["mean"], rekd["gain"]["std"])
    verdict = "Claim (Re-KD): a weaker teacher still improves a stronger student. "
    if rekd is None:
        verdict += "No Re-KD row was run."
    else:
        verdict += (f"Here the strong model taught by the weak one scores "
                    f"{points(rekd['gain']['mean'], rekd['gain']['std'])} pp against the strong model alone: "
                    + ("the claim held (a clear gain)." if held else
                       "the claim did not hold: "
                       + ("it clearly loses" if clear(rekd["gain"]["mean"], rekd["gain"]["std"], sign=-1)
                          else "no clear gain") + f"{fit_note(rekd)}."))
        weak, strong = by_name.get("weak alone"), by_name.get("strong alone")
        if weak and strong:
            gap = _difference(runs, "strong alone", "weak alone")
            verdict += f" The strong model alone beats the weak one by {points(gap['mean'], gap['std'])} pp"
            verdict += "." if clear(gap["mean"], gap["std"]) else ", which is not clear: the pair is not weak/strong here."
    return {"title": "Reversed KD", "rows": rows, "verdict": verdict, "held": held, "columns": None}


def fit_note(row: dict) -> str:
    """Why a row may miss, when its history says so: it clearly ends with a
    lower training accuracy than its reference (it holds the model back from
    fitting its data in this budget), or it loses on test data while fitting
    its training data no worse (what it loses is generalisation)."""
    gap, gain = row.get("train_gap"), row.get("gain")
    if gap is None:
        return ""
    text = f" (final training accuracy {points(gap['mean'], gap['std'])} pp against {row['reference']}'s: "
    if clear(gap["mean"], gap["std"], sign=-1):
        return text + "it holds the model back from fitting its data at this budget)"
    if gain is not None and gain["mean"] is not None and gain["mean"] < 0:
        return text + "it fits its training data no worse, so what it loses is generalisation)"
    return ""


def _held_text(held: list[str], missed: list[str], meaning: str) -> str:
    parts = []
    if held:
        parts.append(f"It held ({meaning}) for: " + "; ".join(held) + ".")
    if missed:
        parts.append("It did not hold for: " + "; ".join(missed) + ".")
    return " ".join(parts) or "No row to judge."


# -- De-KD: student against teacher accuracy ------------------------------------------------------


def summarize_defective_kd(runs: Sequence[dict]) -> dict:
    """Per teacher level: teacher and student top-1 and the student's gain over
    the student alone, paired by seed; the claim: a poorly trained teacher, even
    one below the student alone, still improves the student."""
    levels = [p["level"] for p in runs[0]["points"]]
    baseline = _paired(runs, lambda r: r["baseline_top1"])
    rows = []
    for level in levels:
        found = [next((p for p in r["points"] if p["level"] == level), None) for r in runs]
        if any(p is None for p in found):
            continue
        rows.append({"level": level, "teacher": found[0].get("teacher"),
                     "teacher_top1": _paired(found, lambda p: p["teacher_top1"]),
                     "student_top1": _paired(found, lambda p: p["student_top1"]),
                     "gain": _paired(found, lambda p: p["gain"])})
    weak = [r for r in rows if r["teacher_top1"]["mean"] < baseline["mean"]]
    held, missed = [], []
    for r in weak:
        (held if clear(r["gain"]["mean"], r["gain"]["std"]) else missed).append(
            f"{r['level']} (teacher {percent(r['teacher_top1']['mean'], None)}%, student "
            f"{points(r['gain']['mean'], r['gain']['std'])} pp)")
    verdict = ("Claim (De-KD): a poorly trained teacher, even one less accurate than the student trained "
               f"alone ({percent(baseline['mean'], baseline['std'])}% here), still improves the student. ")
    verdict += (_held_text(held, missed, "a clear gain from a teacher below the student alone") if weak else
                "No teacher level here is below the student alone, so the claim was not tested.")
    hurt = [r for r in weak if clear(r["gain"]["mean"], r["gain"]["std"], sign=-1)]
    alpha = runs[0].get("kd_alpha")
    if hurt and alpha is not None:
        pull = ("the student follows its teacher's soft labels more than the true ones" if alpha > 0.5 else
                "the teacher's soft labels pull as hard as the true ones" if alpha == 0.5 else
                "even a minority weight on a wrong teacher's soft labels costs the student")
        verdict += (f" {len(hurt)} of {len(weak)} such teachers clearly hurt the student: with the KD term "
                    f"weighted {alpha:g} and cross-entropy {1 - alpha:.2g}, {pull}.")
    return {"title": "Defective KD", "rows": rows, "baseline": baseline, "verdict": verdict,
            "held": bool(held) and not missed, "columns": None}


# -- bias-variance --------------------------------------------------------------------------------

BV_TERMS = ("bias", "variance", "expected_ce_measured", "top1")


def summarize_bias_variance(runs: Sequence[dict]) -> dict:
    """Per method: bias, variance, expected CE and top-1 over repetitions (each
    seed trains its own M models: their std is the estimate's sampling noise),
    and the differences from plain CE paired by seed. The claim: KD's soft
    labels lower the variance and raise the bias; WSL lowers the bias KD adds."""
    names = [n for n in runs[0]["results"] if all(n in r["results"] for r in runs)]
    rows = []
    for name in names:
        terms = BV_TERMS + tuple(t for t in ("regularization_share",)
                                 if all(r["results"][name].get(t) is not None for r in runs))
        row = {"row": name, **{t: _paired(runs, lambda r, t=t: r["results"][name][t]) for t in terms}}
        for term in ("bias", "variance"):
            row[f"{term}_vs_ce"] = (None if name == "ce" or "ce" not in names else
                                    _difference(runs, name, "ce", term))
        rows.append(row)
    by_name = {r["row"]: r for r in rows}
    checks = []
    if "kd" in by_name and "ce" in by_name:
        kd = by_name["kd"]
        checks.append(("KD's variance is below CE's", kd["variance_vs_ce"], -1))
        checks.append(("KD's bias is above CE's", kd["bias_vs_ce"], 1))
    if "wsl" in by_name and "kd" in by_name:
        diff = _difference(runs, "wsl", "kd", "bias")
        checks.append(("WSL's bias is below KD's", diff, -1))
    held, missed = [], []
    for text, d, sign in checks:
        spread = "one seed, no spread" if d["std"] is None else f"± {d['std']:.4f}"
        (held if clear(d["mean"], d["std"], sign) else missed).append(f"{text} ({d['mean']:+.4f} nats, {spread})")
    verdict = ("Claim (soft labels' bias-variance trade-off): KD lowers the variance of the student's "
               "error and raises its bias against plain CE, and WSL takes back part of that bias. "
               + (_held_text(held, missed, "clear") if checks else "The runs lack CE or KD, so it was not tested."))
    return {"title": "Bias-variance of CE, KD and WSL", "rows": rows, "verdict": verdict,
            "held": bool(held) and not missed, "columns": None}


SUMMARIZERS: dict[str, Callable[[Sequence[dict]], dict]] = {
    "teacher_free": summarize_teacher_free,
    "reversed_kd": summarize_reversed_kd,
    "defective_kd": summarize_defective_kd,
    "bias_variance": summarize_bias_variance,
}


# -- Markdown and plots ---------------------------------------------------------------------------


def section_table(section: dict) -> str:
    """The section's rows as a Markdown table."""
    from kdkeras.vis.report import markdown_table

    stem = section["experiment"]
    if stem == "defective_kd":
        rows = [[str(r["level"]), r["teacher"] or "-", percent(r["teacher_top1"]["mean"], r["teacher_top1"]["std"]),
                 percent(r["student_top1"]["mean"], r["student_top1"]["std"]),
                 points(r["gain"]["mean"], r["gain"]["std"])] for r in section["rows"]]
        b = section["baseline"]
        rows.append(["-", "none (student alone)", "-", percent(b["mean"], b["std"]), "+0.00"])
        return markdown_table([section["setting"].get("defect") or "level", "teacher training",
                               "teacher top-1 (%)", "student top-1 (%)", "gain (pp)"], rows, align="llrrr")
    if stem == "bias_variance":
        def nats(d):
            return "-" if d is None else f"{d['mean']:.4f}" + ("" if d["std"] is None else f" ± {d['std']:.4f}")
        rows = [[r["row"], percent(r["top1"]["mean"], r["top1"]["std"]), nats(r["bias"]), nats(r["variance"]),
                 nats(r["expected_ce_measured"]), nats(r["bias_vs_ce"]), nats(r["variance_vs_ce"])]
                for r in section["rows"]]
        return markdown_table(["method", "top-1 (%)", "bias", "variance", "E[CE]", "bias - CE's",
                               "variance - CE's"], rows, align="lrrrrrr")
    headers = ["run", "top-1 (%)", "gain (pp)", "against"]
    if section["columns"] == "vs_kd":
        headers.append("vs KD (pp)")
    headers += ["final train acc. vs it (pp)", "train s"]
    rows = []
    for r in section["rows"]:
        row = [r["row"], percent(r["top1"]["mean"], r["top1"]["std"]),
               "-" if r["gain"] is None else points(r["gain"]["mean"], r["gain"]["std"]), r["reference"] or "-"]
        if section["columns"] == "vs_kd":
            row.append("-" if r["vs_kd"] is None else points(r["vs_kd"]["mean"], r["vs_kd"]["std"]))
        row.append("-" if r["train_gap"] is None else points(r["train_gap"]["mean"], r["train_gap"]["std"]))
        row.append("-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}")
        rows.append(row)
    return markdown_table(headers, rows, align="lrrl" + ("r" if section["columns"] == "vs_kd" else "") + "rr")


def section_plot(section: dict, path: str) -> str:
    """The section's figure (means with the seeds' std as error bars) at `path`."""
    from kdkeras.vis import accuracy_bars, bias_variance_bars, student_vs_teacher

    stem, n = section["experiment"], len(section["seeds"])
    if stem == "defective_kd":
        pts = [{"level": r["level"], "teacher_top1": r["teacher_top1"]["mean"],
                "teacher_top1_std": r["teacher_top1"]["std"], "student_top1": r["student_top1"]["mean"],
                "student_top1_std": r["student_top1"]["std"]} for r in section["rows"]]
        return student_vs_teacher(pts, section["baseline"]["mean"], path,
                                  f"Defective KD, mean ± std over {n} seed(s)")
    if stem == "bias_variance":
        summaries = {r["row"]: {"bias": r["bias"]["mean"], "variance": r["variance"]["mean"],
                                "bias_std": r["bias"]["std"], "variance_std": r["variance"]["std"],
                                "expected_ce_measured": r["expected_ce_measured"]["mean"],
                                "top1": r["top1"]["mean"],
                                "regularization_share": (r.get("regularization_share") or {}).get("mean")}
                     for r in section["rows"]}
        return bias_variance_bars(summaries, path)
    rows = section["rows"]
    reference = next((r["top1"]["mean"] for r in rows if r["row"] in ("baseline", "strong alone")), None)
    return accuracy_bars([r["row"] for r in rows], [r["top1"]["mean"] for r in rows], path,
                         f"{section['title']}, mean ± std over {n} seed(s)", reference=reference,
                         reference_label="baseline" if stem == "teacher_free" else "strong alone",
                         highlight=[r["reference"] is not None for r in rows],
                         errors=[r["top1"]["std"] for r in rows])


def setting_text(section: dict) -> str:
    """The setting in one line: every key of the recipe's setting that was given."""
    return ", ".join(f"{k}={v}" for k, v in section["setting"].items() if v not in (None, "", []))
