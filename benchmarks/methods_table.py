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

With a saved teacher, the runs read the teacher's outputs from teacher-output
caches (`--teacher_cache`, default `OUTPUT_DIR/teacher_cache`): one cache per
set of teacher layers the methods read (KD, DKD and WSL share the logits-only
one; AT, NST and VID the stage outputs; ...), built by the first run that
needs it and reused by the others, so the teacher runs once per example
instead of once per example per method per epoch (`--teacher_cache=none`
runs it online, for comparison).

Each run writes `OUTPUT_DIR/<method>/metrics.json` and `log.txt`; `--resume`
skips methods whose metrics.json exists. FT, AB and FSP also run their
initialisation stage (`--init_epochs`, default a quarter of `--epochs`, at
least 1), which their train seconds include.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.join(ROOT, "recipes", "distill.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", None, "Saved .keras teacher (or a zoo name, trained by every run).")
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_string("dataset", "fashion_mnist", "Data set name (as recipes/distill.py takes it).")
flags.DEFINE_list("methods", None, "Methods to run (default: every registry name); KD and the baseline always run.")
flags.DEFINE_integer("epochs", 10, "Training epochs of every run.")
flags.DEFINE_integer("init_epochs", None, "Epochs of the init stage of FT/AB/FSP (default: distill.py's).")
flags.DEFINE_integer("train_limit", None, "Use only the first N training examples.")
flags.DEFINE_integer("test_limit", None, "Use only the first N test examples.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("lr", 0.05, "Peak learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of every run (same initial student weights).")
flags.DEFINE_string("output_dir", None, "Folder of the runs (default: the folder of --output, else runs/methods_table).")
flags.DEFINE_string("output", None, "Markdown table path (default: OUTPUT_DIR/table.md); JSON goes next to it.")
flags.DEFINE_bool("resume", False, "Skip methods whose metrics.json already exists.")
flags.DEFINE_string("teacher_cache", "auto",
                    "Root folder of the teacher-output caches ('auto': OUTPUT_DIR/teacher_cache; 'none': "
                    "run the teacher online in every run).")
flags.DEFINE_string("extra_args", "", "More flags for every distill.py run, e.g. '--teacher_epochs=1 --augment=off'.")
flags.mark_flag_as_required("teacher")

REFERENCE = "kd"


def paths() -> tuple[str, str, str]:
    """(output_dir, table.md, table.json)."""
    output_dir = FLAGS.output_dir or (os.path.dirname(FLAGS.output) if FLAGS.output else None)
    output_dir = output_dir or os.path.join("runs", "methods_table")
    table = FLAGS.output or os.path.join(output_dir, "table.md")
    return output_dir, table, os.path.splitext(table)[0] + ".json"


def registry_names() -> list[str]:
    """Every registered method once (aliases such as tfkd_reg -> virtual_teacher dropped)."""
    import kdkeras

    by_class = {}
    for name in kdkeras.methods.method_names():
        cls = type(kdkeras.methods.from_spec(name, num_examples=1)[0])
        by_class.setdefault(cls, getattr(cls, "_registered_name", None) or name)
    return list(by_class.values())


def method_list() -> list[str]:
    """KD (with the baseline) first, then the others in the order given."""
    names = FLAGS.methods or registry_names()
    names = [n.strip().lower() for n in names if n.strip()]
    return [REFERENCE] + [n for n in dict.fromkeys(names) if n != REFERENCE]


def distill_args(method: str, run_dir: str) -> list[str]:
    args = [
        f"--teacher={FLAGS.teacher}", f"--student={FLAGS.student}", f"--dataset={FLAGS.dataset}",
        f"--method={method}", f"--epochs={FLAGS.epochs}", f"--batch_size={FLAGS.batch_size}",
        f"--lr={FLAGS.lr}", f"--seed={FLAGS.seed}", f"--output_dir={run_dir}",
    ]
    for name in ("train_limit", "test_limit", "init_epochs"):
        if getattr(FLAGS, name) is not None:
            args.append(f"--{name}={getattr(FLAGS, name)}")
    if method == REFERENCE:
        args.append("--baseline")
    cache = cache_folder(method)
    if cache:
        args.append(f"--teacher_cache={cache}")
    return args + shlex.split(FLAGS.extra_args)


_TEACHER: dict = {}


def cache_folder(method: str) -> str | None:
    """The teacher cache a method's run reads: one per set of teacher layers
    (None with --teacher_cache=none, a zoo-name teacher, a teacher-free method,
    or a method reading teacher gradients)."""
    if FLAGS.teacher_cache.lower() == "none" or not FLAGS.teacher.endswith(".keras"):
        return None
    import hashlib

    import kdkeras
    from kdkeras.cache import CacheError, teacher_taps

    if "model" not in _TEACHER:
        _TEACHER["model"] = kdkeras.training.load_model(FLAGS.teacher)
    methods = kdkeras.methods.from_spec(method, num_examples=1)
    if not any(m.requires_teacher for m in methods):
        return None
    try:
        taps, _ = teacher_taps(_TEACHER["model"], methods)
    except CacheError:
        return None
    key = "logits" if not taps else "taps_" + hashlib.sha1(",".join(sorted(taps)).encode()).hexdigest()[:10]
    root = FLAGS.teacher_cache
    if root.lower() == "auto":
        root = os.path.join(paths()[0], "teacher_cache")
    return os.path.join(root, key)


def run_one(method: str, output_dir: str) -> dict:
    """Run distill.py for one method; returns its metrics, or a failure record."""
    run_dir = os.path.join(output_dir, method)
    metrics_path = os.path.join(run_dir, "metrics.json")
    if FLAGS.resume and os.path.exists(metrics_path):
        metrics = _read(metrics_path)
        if method != REFERENCE or "baseline_top1" in metrics:
            print(f"[{method}] resumed from {metrics_path}", flush=True)
            return metrics
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, DISTILL] + distill_args(method, run_dir)
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


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _gain(v) -> str:
    return "–" if v is None else f"{100 * v:+.2f}"


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    budget = (f"{FLAGS.epochs} epochs, train_limit={FLAGS.train_limit}, test_limit={FLAGS.test_limit}, "
              f"batch {FLAGS.batch_size}, lr {FLAGS.lr}, seed {FLAGS.seed}")
    lines = [
        f"# Distillation methods on {FLAGS.dataset}: {FLAGS.student} student",
        "",
        f"Command: `{command}`",
        "",
        f"Teacher `{FLAGS.teacher}` (top-1 {_pct(summary['teacher_top1'])}%), student `{FLAGS.student}`; "
        f"every run: {budget}; each method alone with its published default weight "
        f"(recipes/distill.py); gains in percentage points.",
        "",
    ]
    from kdkeras.vis import markdown_table

    table = [[r["method"], _pct(r["student_top1"]), _gain(r["gain_over_baseline"]), _gain(r["gain_over_kd"]),
              "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}", r["note"]] for r in rows]
    lines.append(markdown_table(["method", "student top-1 (%)", "gain over baseline (pp)", "gain over KD (pp)",
                                 "train s", "note"], table, align="lrrrrl"))
    return "\n".join(lines) + "\n"


def write(results: dict, table_md: str, table_json: str, command: str) -> None:
    rows, summary = build_rows(results)
    os.makedirs(os.path.dirname(os.path.abspath(table_md)), exist_ok=True)
    with open(table_md, "w") as f:
        f.write(markdown(rows, summary, command))
    payload = {
        "command": command, **summary, "rows": rows,
        "config": {k: getattr(FLAGS, k) for k in (
            "teacher", "student", "dataset", "epochs", "init_epochs", "train_limit", "test_limit",
            "batch_size", "lr", "seed", "extra_args", "teacher_cache")},
        "methods": list(results),
    }
    with open(table_json, "w") as f:
        json.dump(payload, f, indent=2)


def main(argv):
    del argv
    output_dir, table_md, table_json = paths()
    # --resume only reads finished runs back; the table's command is the one that makes it.
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), ROOT)]
                       + [shlex.quote(a) for a in sys.argv[1:] if a not in ("--resume", "--resume=true")])
    results = {}
    start = time.perf_counter()
    for method in method_list():
        results[method] = run_one(method, output_dir)
        write(results, table_md, table_json, command)
    print(f"\nwrote {table_md} and {table_json} ({time.perf_counter() - start:.0f}s)\n")
    with open(table_md) as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main)
