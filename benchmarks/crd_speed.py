"""CRD's step time against KD's, on the same teacher/student pair and batches.

Times training steps of three Distillers built on one teacher and one student
(same weights, same synthetic CIFAR-shaped batches with dataset indices):
KD, CRD with K negatives shared across the batch (`mode="shared"`), and CRD
with K negatives per sample (`mode="exact"`, the reference's sampling). The
configurations are timed one step each in turn (rotating which goes first),
so that load on the machine hits them alike; each ratio is the median over
rounds of the per-round ratio of step times.

    python benchmarks/crd_speed.py            # resnet56 -> resnet20, N=50000
    python benchmarks/crd_speed.py --quick    # smaller pair, fewer repetitions
    python benchmarks/crd_speed.py --json out.json

Keys: `crd_over_kd` (shared, K=4096) and `crd_exact_over_kd`; the banks'
bytes and the bank rows gathered per step are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras.methods import KD  # noqa: E402
from kdkeras.methods.contrastive import CRD, _score_all_slots  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help="zoo name (default resnet56; quick: resnet20)")
    p.add_argument("--student", default=None, help="zoo name (default resnet20; quick: resnet8)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--num_classes", type=int, default=100)
    p.add_argument("--num_examples", type=int, default=50000, help="N, the bank size")
    p.add_argument("--num_negatives", type=int, default=4096, help="K")
    p.add_argument("--feat_dim", type=int, default=128)
    p.add_argument("--repetitions", type=int, default=None, help="default 5 (quick: 3)")
    p.add_argument("--steps", type=int, default=None, help="rounds = repetitions x steps, one step of each config per round (default 10; quick: 5)")
    p.add_argument("--quick", action="store_true", help="smaller pair and fewer steps (~1-3 min on 2 cores)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.teacher = args.teacher or ("resnet20" if args.quick else "resnet56")
    args.student = args.student or ("resnet8" if args.quick else "resnet20")
    args.repetitions = args.repetitions or (3 if args.quick else 5)
    args.steps = args.steps or (5 if args.quick else 10)
    return args


def make_batches(args, count: int = 4):
    """Synthetic batches `({"image", "index"}, y)`: distinct indices, like an epoch."""
    rng = np.random.default_rng(args.seed)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    order = rng.permutation(args.num_examples)
    batches = []
    for i in range(count):
        index = order[i * args.batch_size : (i + 1) * args.batch_size].astype("int64")
        x = rng.random(shape, dtype=np.float32)
        y = rng.integers(0, args.num_classes, args.batch_size).astype("int32")
        batches.append(({"image": tf.constant(x), "index": tf.constant(index)}, tf.constant(y)))
    return batches


def build_distillers(args):
    shape = (args.image_size, args.image_size, 3)
    keras.utils.set_random_seed(args.seed)
    teacher = kdkeras.models.get(args.teacher, shape, args.num_classes)
    student_weights = kdkeras.models.get(args.student, shape, args.num_classes).get_weights()
    labels = np.random.default_rng(args.seed).integers(0, args.num_classes, args.num_examples)

    def crd(mode):
        return CRD(
            feat_dim=args.feat_dim, num_negatives=args.num_negatives, mode=mode,
            num_examples=args.num_examples, labels=labels,
        )

    configs = {"kd": [KD(temperature=4.0)], "crd_shared": [crd("shared")], "crd_exact": [crd("exact")]}
    distillers = {}
    for name, methods in configs.items():
        student = kdkeras.models.get(args.student, shape, args.num_classes)
        student.set_weights(student_weights)
        d = kdkeras.Distiller(teacher, student, methods, student_loss_weight=1.0, name=name)
        d.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        distillers[name] = d
    return distillers


def time_step(distiller, batch) -> float:
    """Seconds of one training step (`train_on_batch` returns numbers, so the
    step has finished when it returns)."""
    x, y = batch
    start = time.perf_counter()
    distiller.train_on_batch(x, y)
    return time.perf_counter() - start


def run(args) -> dict:
    batches = make_batches(args)
    distillers = build_distillers(args)
    names = list(distillers)
    for d in distillers.values():  # trace and warm up
        for batch in batches[:2]:
            time_step(d, batch)
    # Interleave single steps, rotating which configuration goes first, so
    # that drifting load on the machine hits all configurations alike.
    times = {name: [] for name in names}
    for r in range(args.repetitions * args.steps):
        batch = batches[r % len(batches)]
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            times[name].append(time_step(distillers[name], batch))
    kd = np.array(times["kd"])
    over_kd = {name: float(np.median(np.array(t) / kd)) for name, t in times.items()}
    # Fastest step over fastest step: the least disturbed by other load.
    over_kd_min = {name: float(np.min(t) / np.min(kd)) for name, t in times.items()}
    crd = distillers["crd_shared"].methods[0]
    bank_bytes = int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in crd.memory.weights))
    b, k, dim, n = args.batch_size, args.num_negatives, args.feat_dim, args.num_examples
    score_all = _score_all_slots(n, k, dim)
    return {
        "crd_over_kd": over_kd["crd_shared"],
        "crd_exact_over_kd": over_kd["crd_exact"],
        "over_kd": over_kd,
        "over_kd_min": over_kd_min,
        "bank_bytes": bank_bytes,
        "bank_mib": bank_bytes / 2**20,
        # Bank bytes each step reads, both directions: shared, K + B rows;
        # exact, every row (B x N scores) or B x (K + 1) gathered rows.
        "bank_read_bytes_per_step": {
            "shared": 2 * (k + b) * dim * 4,
            "exact": 2 * n * dim * 4 if score_all else 2 * b * (k + 1) * dim * 4,
        },
        "exact_scores_all_slots": score_all,
        "reference_gather_bytes_per_step": 2 * b * (k + 1) * dim * 4,
        "step_seconds": {name: float(np.median(t)) for name, t in times.items()},
        "step_seconds_all": times,
        "config": {
            "teacher": args.teacher, "student": args.student, "batch_size": b,
            "image_size": args.image_size, "num_classes": args.num_classes,
            "num_examples": args.num_examples, "num_negatives": k, "feat_dim": dim,
            "repetitions": args.repetitions, "steps": args.steps, "quick": args.quick,
            "jit_compile": bool(distillers["kd"].jit_compile),
            "device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU x{os.cpu_count()}",
            "platform": platform.platform(), "tensorflow": tf.__version__, "keras": keras.__version__,
        },
    }


def print_table(result: dict) -> None:
    cfg = result["config"]
    print(
        f"{cfg['teacher']} -> {cfg['student']}, batch {cfg['batch_size']}, "
        f"{cfg['image_size']}px, N={cfg['num_examples']}, K={cfg['num_negatives']}, "
        f"D={cfg['feat_dim']}, {cfg['device']}, {cfg['repetitions'] * cfg['steps']} interleaved rounds"
    )
    read = result["bank_read_bytes_per_step"]
    how = "all N rows scored" if result["exact_scores_all_slots"] else "B x (K+1) rows gathered"
    rows = [
        ("kd", "-", ""),
        ("crd_shared", f"{read['shared'] / 2**20:.1f} MiB", "K + B rows gathered, one matmul"),
        ("crd_exact", f"{read['exact'] / 2**20:.1f} MiB", how),
    ]
    print(f"{'method':<12} {'ms/step':>9} {'x KD':>6} {'min x KD':>9} {'bank read/step':>15}  how")
    for name, bank_read, note in rows:
        t = result["step_seconds"][name]
        print(
            f"{name:<12} {1000 * t:9.1f} {result['over_kd'][name]:6.2f} "
            f"{result['over_kd_min'][name]:9.2f} {bank_read:>15}  {note}"
        )
    ref = result["reference_gather_bytes_per_step"] / 2**20
    print(f"(the reference gathers {ref:.1f} MiB of bank rows per step; x KD: median of per-round ratios;\n min x KD: fastest step over KD's fastest)")
    print(f"bank bytes: {result['bank_bytes']} ({result['bank_mib']:.1f} MiB: 2 x N x D float32 + N int32 labels + 2 Z)")
    print(f"crd_over_kd = {result['crd_over_kd']:.3f}")
    print(f"crd_exact_over_kd = {result['crd_exact_over_kd']:.3f}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["wall_seconds"] = time.perf_counter() - start
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
