"""Multi-worker scaling of a KD step: 1 worker against N on this machine (loopback).

Runs the same KD training (synthetic CIFAR-shaped batches, global batch B) as a
1-worker and an N-worker MultiWorkerMirroredStrategy job through
`kdkeras.launch`, and reports each job's images/s, the bytes all-reduced per
step (the student's float32 gradients) and the all-reduce share of a step (N
workers: a gradient-sized all-reduce timed alone, over the step time). Both
jobs share the machine's cores, so on one host the ratio measures overhead,
not the speed-up several hosts give.

    python benchmarks/scaling.py --quick --json runs/scaling.json

Keys: `images_per_s_1`, `images_per_s_N`, `workers_N_over_1` (images/s ratio),
`allreduce_bytes_per_step`, `allreduce_share_of_step`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2, help="workers of the multi-worker job (>= 2)")
    p.add_argument("--batch_size", type=int, default=None, help="global batch (default 128; quick: 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; quick: 10)")
    p.add_argument("--quick", action="store_true", help="resnet8 from resnet14, fewer steps (~2 min on 2 cores)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--worker_out", default=None, help=argparse.SUPPRESS)  # set for the worker processes
    p.add_argument("--strategy", default=None, help=argparse.SUPPRESS)  # added by kdkeras.launch
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or (64 if args.quick else 128)
    args.steps = args.steps or (10 if args.quick else 30)
    return args


def worker(args: argparse.Namespace) -> None:
    """One worker: time KD steps and a gradient-sized all-reduce; the chief writes them."""
    import numpy as np
    import tensorflow as tf

    import kdkeras
    from kdkeras import training

    strategy = training.get_strategy("multiworker")
    rng = np.random.default_rng(0)
    n = args.batch_size * 4
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, n).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(args.batch_size)
    with strategy.scope():
        teacher = kdkeras.models.get("resnet14" if args.quick else "resnet20", (32, 32, 3), 10)
        student = kdkeras.models.get("resnet8", (32, 32, 3), 10)
        distiller = kdkeras.Distiller(teacher, student, [kdkeras.methods.KD()], student_loss_weight=0.1)
        distiller.compile(optimizer=training.make_optimizer("sgd", 0.05, 1000, "constant"))
    distiller.fit(data, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
    start = time.perf_counter()
    distiller.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    step_seconds = (time.perf_counter() - start) / args.steps
    grads = [tf.zeros(v.shape, v.dtype) for v in distiller.trainable_variables]

    @tf.function
    def all_reduce():  # what a step all-reduces: one gradient per trainable variable
        return strategy.run(lambda: [tf.distribute.get_replica_context().all_reduce("sum", g) for g in grads])

    all_reduce()
    start = time.perf_counter()
    for _ in range(args.steps):
        all_reduce()
    reduce_seconds = (time.perf_counter() - start) / args.steps
    if training.worker_role(strategy)[0]:
        training.write_json(args.worker_out, {
            "replicas": strategy.num_replicas_in_sync, "step_seconds": step_seconds,
            "images_per_s": args.batch_size / step_seconds, "allreduce_seconds": reduce_seconds,
            "allreduce_bytes_per_step": int(sum(int(np.prod(g.shape)) * g.dtype.size for g in grads)),
        })


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker_out:
        worker(args)
        return None
    if args.workers < 2:
        raise SystemExit(f"--workers must be >= 2, got {args.workers}")
    from kdkeras.launch import launch

    flags = [f"--batch_size={args.batch_size}", f"--steps={args.steps}"] + (["--quick"] if args.quick else [])
    runs = {}
    with tempfile.TemporaryDirectory(prefix="kdkeras_scaling_") as tmp:
        for n in (1, args.workers):
            out = os.path.join(tmp, f"workers_{n}.json")
            code = launch(os.path.abspath(__file__), [*flags, f"--worker_out={out}"], workers=n)
            if code != 0:
                raise SystemExit(f"the {n}-worker job failed with code {code}")
            with open(out) as f:
                runs[n] = json.load(f)
    one, many = runs[1], runs[args.workers]
    result = {
        "workers": args.workers, "batch_size": args.batch_size, "steps": args.steps, "quick": args.quick,
        "images_per_s_1": one["images_per_s"], f"images_per_s_{args.workers}": many["images_per_s"],
        f"workers_{args.workers}_over_1": many["images_per_s"] / one["images_per_s"],
        "allreduce_bytes_per_step": many["allreduce_bytes_per_step"],
        "allreduce_share_of_step": many["allreduce_seconds"] / many["step_seconds"],
        "runs": {str(k): v for k, v in runs.items()},
    }
    for key, value in result.items():
        if key != "runs":
            print(f"{key}={value}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
