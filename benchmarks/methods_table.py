"""A results table of every method against the baseline student and KD.

Runs `recipes/distill.py` once per method (each as its own process, so a
crash loses only that method) on the same teacher, student, data set, budget
and seed: first KD with `--baseline` (the student trained alone, from the same
initial weights), then each method alone. Writes a Markdown table (method,
student top-1, gain over the baseline, gain over KD, train seconds) to
`--output`, and the same as JSON next to it, rewritten after every run.

    python benchmarks/methods_table.py \
        --teacher=saved_models/fashion_mnist_resnet20/model.keras --student=resnet8 \
        --dataset=fashion_mnist --train_limit=5000 --test_limit=2000 --epochs=2 \
        --output=runs/methods_table/table.md

With a saved teacher, the runs read the teacher's outputs from a teacher-output
cache (`--teacher_cache`, default `OUTPUT_DIR/teacher_cache/seed<S>`): one per
seed, holding the logits and every teacher layer that any method of the table
reads (`recipes/distill.py --teacher_cache_methods`; `--teacher_cache_methods`
here when the table runs a few methods at a time), built by the first run
and read by the others, each run reading only its own layers (a cache left
by a table of other methods is replaced). The teacher then
runs once per example (and view) for the whole table instead of once per
example per method per epoch (`--teacher_cache=none` runs it online, for
comparison). Each seed's cache is built over that seed's own batches, so a
cached table equals the online one.

`--seeds=0,1,2` repeats every run per seed (default: the one `--seed`); each
(method, seed) run writes `OUTPUT_DIR/<method>/seed<S>/metrics.json` and
`log.txt`, and the table then shows mean +- std over seeds with gains paired
by seed (each seed's KD run trains that seed's baseline). A run of the old
single-seed layout (`OUTPUT_DIR/<method>/metrics.json`) is moved into
`seed<S>/` first. `--resume` skips runs whose metrics.json exists;
`benchmarks/results_doc.py OUTPUT_DIR` turns the runs into docs/results.md.
A method entry `METHOD@dot` (e.g. `--methods=kd@dot,dkd@dot`) runs METHOD with
DOT (`--optimizer=dot`, DOT's default gap; `--dot_delta` sets another) into
`OUTPUT_DIR/METHOD@dot/seed<S>/`, never with `--baseline`: the table's KD and
baseline stay the plain-SGD ones (read back with `--resume` as usual), and the
row's gains pair with them; results_doc.py sets it in the SGD runs' section as
`METHOD (optimizer=dot)`.
FT, AB and FSP also run their initialisation stage (`--init_epochs`, default
a quarter of `--epochs`, at least 1), which their train seconds include.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from kdkeras.analysis.stats import format_mean_std, mean_std
from kdkeras.distillation_optimizers import DISTILLATION_OPTIMIZERS, DOT_DEFAULT_DELTA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.join(ROOT, "recipes", "distill.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", None, "Saved .keras teacher (or a zoo name, trained by every run).")
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_string("dataset", "fashion_mnist", "Data set name (as recipes/distill.py takes it).")
flags.DEFINE_list("methods", None,
                  "Methods to run (default: every registry name); KD and the baseline always run. "
                  "METHOD@dot runs METHOD with the DOT optimiser (--optimizer=dot) for a row of its own, "
                  "compared with the plain KD and baseline runs, which never run with DOT.")
flags.DEFINE_float("dot_delta", None, f"DOT's momentum gap for the METHOD@dot entries (default: DOT's, {DOT_DEFAULT_DELTA}).")
flags.DEFINE_integer("epochs", 10, "Training epochs of every run.")
flags.DEFINE_integer("init_epochs", None, "Epochs of the init stage of FT/AB/FSP (default: distill.py's).")
flags.DEFINE_integer("train_limit", None, "Use only the first N training examples.")
flags.DEFINE_integer("test_limit", None, "Use only the first N test examples.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("lr", 0.05, "Peak learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of every run (same initial student weights).")
flags.DEFINE_list("seeds", None, "Seeds to run every method with, e.g. 0,1,2 (default: --seed).")
flags.DEFINE_string("output_dir", None, "Folder of the runs (default: the folder of --output, else runs/methods_table).")
flags.DEFINE_string("output", None, "Markdown table path (default: OUTPUT_DIR/table.md); JSON goes next to it.")
flags.DEFINE_bool("resume", False, "Skip methods whose metrics.json already exists.")
flags.DEFINE_string("teacher_cache", "auto",
                    "Root folder of the teacher-output caches ('auto': OUTPUT_DIR/teacher_cache; 'none': "
                    "run the teacher online in every run).")
flags.DEFINE_list("teacher_cache_methods", None,
                  "Methods whose teacher layers each seed's cache holds (default: the table's --methods). "
                  "Give the whole sweep's list when running the table a few methods at a time, so "
                  "every group reads the one cache instead of rebuilding it.")
flags.DEFINE_string("extra_args", "", "More flags for every distill.py run, e.g. '--teacher_epochs=1 --augment=off'.")
flags.mark_flag_as_required("teacher")

REFERENCE = "kd"
#: METHOD@OPTIMIZER entries: the distillation optimisers a method may run with for a row
OPTIMIZER_SUFFIXES = tuple(DISTILLATION_OPTIMIZERS)


def split_entry(entry: str) -> tuple[str, str | None]:
    """A --methods entry -> (method, distillation optimiser or None): `kd@dot` -> ("kd", "dot")."""
    method, sep, optimizer = entry.partition("@")
    if not sep:
        return entry, None
    if optimizer not in OPTIMIZER_SUFFIXES or not method:
        raise ValueError(f"Method entry {entry!r}: METHOD@OPTIMIZER takes an optimizer in "
                         f"{list(OPTIMIZER_SUFFIXES)} after a method name, e.g. kd@dot.")
    return method, optimizer


def paths() -> tuple[str, str, str]:
    """(output_dir, table.md, table.json)."""
    output_dir = FLAGS.output_dir or (os.path.dirname(FLAGS.output) if FLAGS.output else None)
    output_dir = output_dir or os.path.join("runs", "methods_table")
    table = FLAGS.output or os.path.join(output_dir, "table.md")
    return output_dir, table, os.path.splitext(table)[0] + ".json"


def method_list() -> list[str]:
    """KD (with the baseline) first, then the others in the order given."""
    names = FLAGS.methods
    if not names:  # every registered method once (aliases such as tfkd_reg dropped)
        from kdkeras.methods import method_class, registered_methods

        names = registered_methods()
        # deit needs a student with a distillation token (zoo deit_*): left out for a CNN student
        token = [n for n in names if getattr(method_class(n), "requires_distillation_token", False)]
        if token and not FLAGS.student.lower().startswith("deit_"):
            print(f"{token} left out: they need a student with a distillation token (--student=deit_tiny)")
            names = [n for n in names if n not in token]
    names = [n.strip().lower() for n in names if n.strip()]
    for name in names:
        split_entry(name)  # a bad suffix fails before any run
    return [REFERENCE] + [n for n in dict.fromkeys(names) if n != REFERENCE]


def seed_list() -> list[int]:
    """The seeds of --seeds (each once, in order), default [--seed]."""
    if not FLAGS.seeds:
        return [FLAGS.seed]
    seeds = []
    for text in FLAGS.seeds:
        try:
            seeds.append(int(text))
        except ValueError:
            raise ValueError(f"--seeds takes integers, e.g. --seeds=0,1,2; got {text!r} in {FLAGS.seeds}.") from None
    return list(dict.fromkeys(seeds))


def run_folder(output_dir: str, method: str, seed: int | None = None) -> str:
    """Where one (method, seed) run lives: OUTPUT_DIR/<method>/seed<S>/."""
    return os.path.join(output_dir, method, f"seed{FLAGS.seed if seed is None else seed}")


def migrate_single_seed(output_dir: str, methods: list[str]) -> None:
    """Move runs of the old layout (OUTPUT_DIR/<method>/metrics.json, one seed) into
    OUTPUT_DIR/<method>/seed<S>/, S read from their metrics.json, so --resume and
    the results page see them; left in place (with a note) when seed<S>/ has a run."""
    for method in methods:
        folder = os.path.join(output_dir, method)
        legacy = os.path.join(folder, "metrics.json")
        if not os.path.exists(legacy):
            continue
        seed = _read(legacy).get("seed", FLAGS.seed)
        target = run_folder(output_dir, method, seed)
        if os.path.exists(os.path.join(target, "metrics.json")):
            print(f"[{method}] {legacy} (old layout) left in place: {target} already holds a run", flush=True)
            continue
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(folder):
            if not (name.startswith("seed") and os.path.isdir(os.path.join(folder, name))):
                os.replace(os.path.join(folder, name), os.path.join(target, name))
        print(f"[{method}] moved the old single-seed run into {target}", flush=True)


def distill_args(entry: str, run_dir: str, seed: int | None = None) -> list[str]:
    """distill.py's flags for one --methods entry: KD with --baseline; METHOD@dot with
    --optimizer=dot (and --dot_delta when given), no baseline."""
    method, optimizer = split_entry(entry)
    args = [
        f"--teacher={FLAGS.teacher}", f"--student={FLAGS.student}", f"--dataset={FLAGS.dataset}",
        f"--method={method}", f"--epochs={FLAGS.epochs}", f"--batch_size={FLAGS.batch_size}",
        f"--lr={FLAGS.lr}", f"--seed={FLAGS.seed if seed is None else seed}", f"--output_dir={run_dir}",
    ]
    for name in ("train_limit", "test_limit", "init_epochs"):
        if getattr(FLAGS, name) is not None:
            args.append(f"--{name}={getattr(FLAGS, name)}")
    if entry == REFERENCE:
        args.append("--baseline")
    if optimizer:
        args.append(f"--optimizer={optimizer}")
        if FLAGS.dot_delta is not None:
            args.append(f"--dot_delta={FLAGS.dot_delta}")
    return args + cache_args(method, seed) + shlex.split(FLAGS.extra_args)


_TEACHER: dict = {}


def cache_args(method: str, seed: int | None = None) -> list[str]:
    """The teacher-cache flags of a method's run: every run of one seed reads one cache
    holding the taps of all the table's methods (`--teacher_cache_methods`), so the
    first run builds it and the others only read it. None with --teacher_cache=none,
    a zoo-name teacher, a teacher-free method or one reading teacher gradients."""
    if FLAGS.teacher_cache.lower() == "none" or not FLAGS.teacher.endswith(".keras"):
        return []
    cacheable = cacheable_methods()
    if method not in cacheable:
        return []
    root = FLAGS.teacher_cache
    if root.lower() == "auto":
        root = os.path.join(paths()[0], "teacher_cache")
    seed = FLAGS.seed if seed is None else seed
    # one cache per seed: it is then built over that seed's own batches, and a cached
    # run equals the online one bit for bit
    # a cache left by a table of other methods lacks some taps: replace it (the runs of this
    # table all ask for the same taps, so it is built once per seed and then only read)
    return [f"--teacher_cache={os.path.join(root, f'seed{seed}')}",
            f"--teacher_cache_methods={','.join(cacheable)}", "--rebuild_teacher_cache"]


def cacheable_methods() -> list[str]:
    """The table's methods (and --teacher_cache_methods) that read the teacher and
    can read it from a cache."""
    if "cacheable" not in _TEACHER:
        import kdkeras
        from kdkeras.cache import CacheError, teacher_taps

        teacher = kdkeras.training.load_model(FLAGS.teacher)
        names = []
        # the same order for every group of one sweep: the listed sweep first, then the table's
        listed = [n.strip().lower() for n in FLAGS.teacher_cache_methods or [] if n.strip()]
        for name in dict.fromkeys(split_entry(n)[0] for n in [REFERENCE] + listed + method_list()):
            methods = kdkeras.methods.from_spec(name, num_examples=1)
            if not any(m.requires_teacher for m in methods):
                continue
            try:
                teacher_taps(teacher, methods)
            except CacheError:
                continue
            names.append(name)
        _TEACHER["cacheable"] = names
    return _TEACHER["cacheable"]


def run_one(method: str, output_dir: str, seed: int | None = None) -> dict:
    """Run distill.py for one method and seed (default --seed); returns its metrics, or a failure record."""
    run_dir = run_folder(output_dir, method, seed)
    metrics_path = os.path.join(run_dir, "metrics.json")
    if FLAGS.resume and os.path.exists(metrics_path):
        metrics = _read(metrics_path)
        if method != REFERENCE or "baseline_top1" in metrics:
            print(f"[{method}] resumed from {metrics_path}", flush=True)
            return metrics
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, DISTILL] + distill_args(method, run_dir, seed)
    print(f"[{method}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.perf_counter()
    with open(os.path.join(run_dir, "log.txt"), "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(metrics_path):
        error = _last_error(os.path.join(run_dir, "log.txt"))
        print(f"[{method}] FAILED rc={proc.returncode} after {wall:.0f}s: {error}", flush=True)
        return {"method": method, "failed": True, "returncode": proc.returncode, "error": error,
                "wall_seconds": wall}
    metrics = _read(metrics_path)
    print(f"[{method}] top1={metrics['student_top1']:.4f} train {metrics['train_seconds']:.0f}s "
          f"(wall {wall:.0f}s)", flush=True)
    return metrics


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _last_error(log_path: str) -> str:
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def _init_epochs(metrics: dict) -> int | None:
    stages = (metrics.get("history") or {}).get("stages") or {}
    counts = [len(next(iter(h.values()), [])) for h in stages.values() if h]
    return max(counts) if counts else None


def _diverged(metrics: dict) -> bool:
    """True when any stage ended on a non-finite training loss."""
    history = metrics.get("history") or {}
    histories = [history] + list((history.get("stages") or {}).values())
    return any(not math.isfinite(h["loss"][-1]) for h in histories if h and h.get("loss"))


def build_rows(results: dict[str, dict]) -> tuple[list[dict], dict]:
    kd = results.get(REFERENCE, {})
    baseline = kd.get("baseline_top1")
    kd_top1 = kd.get("student_top1")
    rows = []
    if baseline is not None:
        rows.append({"method": "baseline", "student_top1": baseline,
                     "train_seconds": kd.get("baseline_train_seconds"), "note": "student alone (CE)"})
    for method, m in results.items():
        if m.get("failed"):
            rows.append({"method": method, "student_top1": None, "train_seconds": None,
                         "note": f"failed (rc={m['returncode']}): {m['error']}"})
            continue
        init = _init_epochs(m)
        note = "reference" if method == REFERENCE else ""
        if init:
            note = f"+ init stage ({init} epoch{'s' if init > 1 else ''}, in train s)"
        if _diverged(m):
            note = "; ".join(filter(None, [note, "DIVERGED (non-finite loss)"]))
        rows.append({"method": method, "student_top1": m["student_top1"],
                     "train_seconds": m.get("train_seconds"), "note": note})
    for row in rows:
        top1 = row["student_top1"]
        row["gain_over_baseline"] = None if top1 is None or baseline is None else top1 - baseline
        row["gain_over_kd"] = None if top1 is None or kd_top1 is None else top1 - kd_top1
    summary = {"baseline_top1": baseline, "kd_top1": kd_top1,
               "teacher_top1": next((m.get("teacher_top1") for m in results.values()
                                     if m.get("teacher_top1") is not None), None)}
    return rows, summary


def combine_seeds(results: dict[int, dict[str, dict]]) -> tuple[list[dict], dict]:
    """The table's rows over seeds: each seed's rows (`build_rows`, gains paired
    within the seed), then per method the mean and sample std over the seeds
    where it ran (`*_std` None for one seed), failures named with their seed."""
    per_seed = {seed: build_rows(r) for seed, r in results.items()}
    entries: dict[str, list] = {"baseline": []}
    for seed, (rows, _) in per_seed.items():
        for row in rows:
            entries.setdefault(row["method"], []).append((seed, row))
    combined = []
    for method, seeded in entries.items():
        if not seeded:
            continue
        row = {"method": method, "seeds": [s for s, r in seeded if r["student_top1"] is not None]}
        for key in ("student_top1", "gain_over_baseline", "gain_over_kd"):
            row[key], row[key + "_std"] = mean_std([r[key] for _, r in seeded])
        row["train_seconds"] = mean_std([r["train_seconds"] for _, r in seeded])[0]
        notes = [(f"seed {s}: " if len(results) > 1 and r["student_top1"] is None else "") + r["note"]
                 for s, r in seeded if r["note"]]
        row["note"] = "; ".join(dict.fromkeys(notes))
        combined.append(row)
    summaries = [summary for _, summary in per_seed.values()]
    from kdkeras.experiment import teacher_margin

    margins = [teacher_margin(s["teacher_top1"], s["baseline_top1"]) for s in summaries]
    summary = {key: mean_std([s[key] for s in summaries])[0] for key in ("baseline_top1", "kd_top1", "teacher_top1")}
    summary["teacher_margin"] = mean_std(margins)[0]
    summary["baseline_top1_std"] = mean_std([s["baseline_top1"] for s in summaries])[1]
    return combined, summary


def _pct(v, std=None) -> str:
    return format_mean_std(v, std)


def _gain(v, std=None) -> str:
    return format_mean_std(v, std, signed=True)


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    seeds = seed_list()
    budget = (f"{FLAGS.epochs} epochs, train_limit={FLAGS.train_limit}, test_limit={FLAGS.test_limit}, "
              f"batch {FLAGS.batch_size}, lr {FLAGS.lr}, seed{'s' if len(seeds) > 1 else ''} "
              f"{','.join(map(str, seeds))}")
    from kdkeras.experiment import WEAK_TEACHER_MARGIN

    margin = summary.get("teacher_margin")
    weak = margin is not None and margin < WEAK_TEACHER_MARGIN
    lines = [
        f"# Distillation methods on {FLAGS.dataset}: {FLAGS.student} student",
        "",
        f"Command: `{command}`",
        "",
        f"Teacher `{FLAGS.teacher}` (top-1 {_pct(summary['teacher_top1'])}%, {_gain(margin)} points over the "
        f"student trained alone), student `{FLAGS.student}`; "
        f"every run: {budget}; each method alone with its published default weight "
        f"(recipes/distill.py); gains in percentage points"
        + (", mean ± std over seeds, paired by seed." if len(seeds) > 1 else "."),
        "",
    ]
    if weak:
        lines += [f"**Warning:** the teacher is under {100 * WEAK_TEACHER_MARGIN:g} point better than the student "
                  "trained alone; methods giving it most of the loss (KD's CE weight 0.1) may lose to the baseline.",
                  ""]
    from kdkeras.vis import markdown_table

    table = [[r["method"], _pct(r["student_top1"], r.get("student_top1_std")),
              _gain(r["gain_over_baseline"], r.get("gain_over_baseline_std")),
              _gain(r["gain_over_kd"], r.get("gain_over_kd_std")),
              "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}", r["note"]] for r in rows]
    lines.append(markdown_table(["method", "student top-1 (%)", "gain over baseline (pp)", "gain over KD (pp)",
                                 "train s", "note"], table, align="lrrrrl"))
    return "\n".join(lines) + "\n"


def write(results: dict[int, dict[str, dict]], table_md: str, table_json: str, command: str) -> None:
    """The table (Markdown and JSON) of the runs so far: {seed: {method: metrics}}."""
    rows, summary = combine_seeds(results)
    os.makedirs(os.path.dirname(os.path.abspath(table_md)), exist_ok=True)
    with open(table_md, "w") as f:
        f.write(markdown(rows, summary, command))
    payload = {
        "command": command, **summary, "rows": rows,
        "config": {k: getattr(FLAGS, k) for k in (
            "teacher", "student", "dataset", "epochs", "init_epochs", "train_limit", "test_limit",
            "batch_size", "lr", "seed", "seeds", "extra_args", "teacher_cache")},
        "seeds": list(results),
        "methods": list(dict.fromkeys(m for r in results.values() for m in r)),
        "per_seed": {str(seed): build_rows(r)[0] for seed, r in results.items()},
        "runs": {str(seed): {m: run_folder(paths()[0], m, seed) for m in r} for seed, r in results.items()},
    }
    with open(table_json, "w") as f:
        json.dump(payload, f, indent=2)


def main(argv):
    del argv
    output_dir, table_md, table_json = paths()
    # --resume only reads finished runs back; the table's command is the one that makes it.
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), ROOT)]
                       + [shlex.quote(a) for a in sys.argv[1:] if a not in ("--resume", "--resume=true")])
    results: dict[int, dict[str, dict]] = {}
    start = time.perf_counter()
    methods, seeds = method_list(), seed_list()
    migrate_single_seed(output_dir, methods)
    for seed in seeds:  # seed by seed: a whole table exists after the first
        if len(seeds) > 1:
            print(f"-- seed {seed}", flush=True)
        for method in methods:
            results.setdefault(seed, {})[method] = run_one(method, output_dir, seed)
            write(results, table_md, table_json, command)
    print(f"\nwrote {table_md} and {table_json} ({time.perf_counter() - start:.0f}s)\n")
    with open(table_md) as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main)
