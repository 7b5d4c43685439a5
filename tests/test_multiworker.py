"""Multi-worker training (issue 13, B): the launcher, and N workers on loopback
equal one process on the same global batch. Run as `python -m tests.test_multiworker
worker OUT METHOD --strategy=...`, this file is also the worker program."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ROOT, needs_fashion_mnist

# the data every equivalence run reads: 128 Fashion-MNIST images, global batch 32
RUN = dict(dataset="fashion_mnist", train_limit=128, test_limit=32, batch_size=32, epochs=2, lr=0.05,
           seed=0, verbose=0)


def _worker(out_path: str, method: str, strategy_name: str) -> None:
    """Distil a BN-free tiny student (per-replica BatchNorm statistics would differ
    from one device's by design) and, on the chief, write history and weights."""
    from kdkeras import experiment, training
    from kdkeras import methods as methods_lib
    from tests.helpers import tiny_cnn

    config = experiment.RunConfig(**RUN, strategy=strategy_name,
                                  output_dir=os.path.join(os.path.dirname(out_path), "run_" + strategy_name))
    strategy = experiment.start(config)
    config = experiment.worker_config(config, strategy)
    data = experiment.setup_data(config, with_index=method == "crd")
    with strategy.scope():
        training.seeded(1)
        teacher = tiny_cnn(width=8, num_classes=10, input_shape=(28, 28, 1), name="teacher", batchnorm=False)
        training.seeded(2)
        student = tiny_cnn(width=4, num_classes=10, input_shape=(28, 28, 1), name="student", batchnorm=False)
        methods = methods_lib.from_spec(method, num_examples=data.num_train)
    out = experiment.distill(teacher, student, methods, data, config, strategy=strategy)
    experiment.finish_worker(config, strategy)
    if training.worker_role(strategy)[0]:
        training.write_json(out_path, {"history": out["history"], "top1": out["top1"],
                                       "replicas": strategy.num_replicas_in_sync,
                                       "weights": [w.tolist() for w in student.get_weights()]})


def _relative(a, b) -> float:
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


def test_the_launcher_stops_every_worker_when_one_fails(tmp_path):
    from kdkeras.launch import launch

    script = tmp_path / "job.py"
    script.write_text(
        "import json, os, sys, time\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']\n"
        "assert sys.argv[-1] == '--strategy=multiworker' and '--strategy=default' not in sys.argv\n"
        "print('hello from', task['index'], json.loads(os.environ['TF_CONFIG'])['cluster']['worker'][0][:10])\n"
        "if task['index'] == 1:\n    sys.exit(3)\n"
        "time.sleep(60)\n")
    out, start = io.StringIO(), time.monotonic()
    code = launch(str(script), ["--strategy=default"], workers=2, out=out)
    assert code == 3 and time.monotonic() - start < 30  # worker 0 was stopped, not waited for
    text = out.getvalue()
    assert "[worker 1] hello from 1 127.0.0.1:" in text and "[worker 0] hello from 0" in text
    assert "worker 1 exited with code 3" in text


@pytest.mark.e2e
@needs_fashion_mnist
# (FitNet is left out: its regressor's BatchNorm keeps per-replica statistics, like the student's)
@pytest.mark.parametrize("method", ["kd", "dkd", "crd"])
def test_two_workers_equal_one_process_on_the_same_global_batch(tmp_path, method):
    from kdkeras.launch import launch

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    single = subprocess.Popen([sys.executable, "-m", "tests.test_multiworker", "worker", str(one), method,
                               "--strategy=default"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    out = io.StringIO()
    code = launch("-m tests.test_multiworker", ["worker", str(two), method], workers=2, out=out,
                  env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    single_out = single.communicate(timeout=300)[0]
    assert code == 0, out.getvalue()[-4000:]
    assert single.returncode == 0, single_out[-4000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["replicas"], b["replicas"]) == (1, 2)
    assert len(b["history"]["loss"]) == RUN["epochs"]
    for key in ("loss", method, "val_loss"):
        assert _relative(a["history"][key], b["history"][key]) < 1e-4, (key, a["history"][key], b["history"][key])
    for wa, wb in zip(a["weights"], b["weights"]):
        assert _relative(wa, wb) < 1e-4
    assert a["top1"] == pytest.approx(b["top1"])
    assert not (tmp_path / "run_multiworker" / ".worker1").exists()  # the other worker's folder is gone


@pytest.mark.e2e
@needs_fashion_mnist
def test_the_recipes_run_to_the_end_under_the_launcher(tmp_path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    common = ["--dataset=fashion_mnist", "--train_limit=128", "--test_limit=64", "--batch_size=64", "--epochs=1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def launch(*args):
        proc = subprocess.run([sys.executable, "-m", "kdkeras.launch", "--workers=2", "--timeout=300", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return proc.stdout

    log = launch("recipes/train_teacher.py", "--model=resnet8", f"--output_dir={teacher_dir}", *common)
    assert "[worker 1]" in log and (teacher_dir / "model.keras").exists()
    log = launch("recipes/distill.py", f"--teacher={teacher_dir / 'model.keras'}", "--method=kd",
                 f"--output_dir={student_dir}", *common)
    metrics = json.loads((student_dir / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 1 and 0 <= metrics["student_top1"] <= 1
    assert (student_dir / "student.keras").exists()
    assert not any(p.name.startswith(".worker") for p in list(teacher_dir.iterdir()) + list(student_dir.iterdir()))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        strategy = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--strategy="))
        _worker(sys.argv[2], sys.argv[3], strategy)
