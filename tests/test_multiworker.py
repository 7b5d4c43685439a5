"""Multi-worker training (issue 13, B and C): the launcher, N workers on loopback
equal one process on the same global batch, and a job whose worker is killed -9
resumes from its backup to the same end. Run as `python -m tests.test_multiworker
worker OUT RUNS [--pause_at=RUN:E:B] --strategy=...`, this file is also the worker program.

Cost: one module fixture starts TensorFlow five times for all of it (one process
for the reference runs, a 2-worker job, the same job restarted), and each run
trains a mix at once (one Distiller; each term logged and each method's state kept
apart). The 2-worker job trains the new methods' mix and DIST uninterrupted, then the
older mix (KD, DKD, CRD, FitNet), killed -9 in its second epoch; restarted, it
skips the finished run and resumes the killed one. Both end where one process
ends on the same mix: the resumed run is both the older methods' equality case and
the resume case (a mismatch there that a 2-worker run of that mix without the kill
would not show points at the resume; to tell, run the worker program by hand)."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.helpers import ROOT, needs_fashion_mnist

# the data every equivalence run reads: 64 Fashion-MNIST images, global batch 32 (2 steps an epoch)
RUN = dict(dataset="fashion_mnist", train_limit=64, test_limit=32, batch_size=32, epochs=2, lr=0.05,
           seed=0, verbose=0)
#: kd: logits; dkd: a warm-up by epoch; crd: memory banks; fitnet: a connector with BatchNorm
METHODS = ("kd", "dkd", "crd", "fitnet")
#: every run distils with the four together (one network pass, CI time)
MIX = "+".join(METHODS)
#: the older mix's runs (label=methods): in one process (the reference) and by 2 workers killed in the
#: middle of epoch 2 (CRD's negatives are keyed by a draw count saved with its banks, so a resumed run
#: draws what the uninterrupted one drew)
REFERENCE, KILLED = "mix=" + MIX, "killed=" + MIX
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
#: seconds a worker paused by --pause_at waits to be killed before it goes on
PAUSE_SECONDS = 120


def _methods(spec: str, num_examples: int) -> list:
    """The methods of `spec` (`a+b`); FitNet's regressor (conv + BatchNorm) maps the
    student's relu1 to the teacher's (the tiny networks have no stages to find)."""
    from kdkeras import methods as methods_lib

    names = spec.split("+")
    methods = methods_lib.from_spec("+".join(n for n in names if n != "fitnet"), num_examples=num_examples) \
        if set(names) - {"fitnet"} else []
    if "fitnet" in names:
        methods.append(methods_lib.get("fitnet", teacher_layers=["relu1"], student_layers=["relu1"], weight=1.0))
    return methods


class _Pause:
    """At batch `batch` of epoch `epoch` (0-based; after the backup of the epoch
    before, in the middle of this one) write this worker's pid into
    `directory/paused.<worker>` and wait there to be killed."""

    def __init__(self, directory, epoch, batch):
        import keras

        epoch, batch = int(epoch), int(batch)

        class Pause(keras.callbacks.Callback):
            def on_epoch_begin(self, e, logs=None):
                self.epoch = e

            def on_train_batch_begin(self, b, logs=None):
                if (self.epoch, b) == (epoch, batch):
                    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
                    with open(os.path.join(directory, f"paused.{index}"), "w") as f:
                        f.write(str(os.getpid()))
                    time.sleep(PAUSE_SECONDS)

        self.callback = Pause()


def _worker(out_dir: str, runs: list, strategy_name: str, pause_at: str | None = None) -> None:
    """Distil a tiny student with BatchNorm from a tiny teacher for each run
    (`method`, or `label=method`) in turn, seeded alike whatever the strategy, and,
    on the chief, write each one's history, top-1 and weights (the student's,
    then the method's: regressor, banks) into `out_dir/<label>.json`. A run whose
    result is there already is skipped (a restarted job goes on where it died)."""
    from kdkeras import experiment, training
    from tests.helpers import tiny_cnn

    strategy, start = None, time.monotonic()
    for run in runs:
        name, _, method = run.rpartition("=")
        name = name or method
        config = experiment.RunConfig(**RUN, strategy=strategy_name,
                                      output_dir=os.path.join(out_dir, f"run_{strategy_name}_{name}"))
        strategy = strategy or experiment.start(config)  # one strategy per process
        if os.path.exists(os.path.join(out_dir, f"{name}.json")):
            continue
        training.seeded(config.seed)
        config = experiment.worker_config(config, strategy)
        data = experiment.setup_data(config, with_index="crd" in method.split("+"))
        os.makedirs(config.output_dir, exist_ok=True)
        if pause_at and pause_at.split(":")[0] == name:
            extra = data.callbacks() + [_Pause(out_dir, *pause_at.split(":")[1:]).callback]
            data.callbacks = lambda: extra
        with strategy.scope():
            training.seeded(1)
            teacher = tiny_cnn(width=8, num_classes=10, input_shape=(28, 28, 1), name="teacher")
            training.seeded(2)
            student = tiny_cnn(width=4, num_classes=10, input_shape=(28, 28, 1), name="student")
            methods = _methods(method, data.num_train)
        training.seeded(3)
        out = experiment.distill(teacher, student, methods, data, config, strategy=strategy)
        experiment.finish_worker(config, strategy)
        if training.worker_role(strategy)[0]:
            training.write_json(os.path.join(out_dir, f"{name}.json"), {
                "history": out["history"], "top1": out["top1"], "replicas": strategy.num_replicas_in_sync,
                "weights": [w.tolist() for w in student.get_weights()],
                "method_weights": {m.name: [np.array(w.numpy()).tolist() for w in m.weights] for m in methods}})
        print(f"{name}: done at {time.monotonic() - start:.1f}s", flush=True)


def _relative(a, b, floor: float = 0.1) -> float:
    """max |a - b| over max |a|, the latter at least `floor` (the scale of these
    kernels): a conv bias before a BatchNorm gets a zero gradient, its values are
    float noise (1e-7) that differ in every digit, and a bias of 0.03 carries the
    float noise of the kernels (3e-6 after DKD's four steps); a wrong step moves
    whole layers by far more."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), floor))


def _launch_workers(out_dir, names, *extra, timeout=300):
    """Run the worker program as a 2-worker job; (exit code, the launcher's output)."""
    from kdkeras.launch import launch

    out = io.StringIO()
    code = launch("-m tests.test_multiworker", ["worker", str(out_dir), ",".join(names), *extra], workers=2,
                  out=out, env=ENV, timeout=timeout)
    return code, out.getvalue()


def _results(directory, names):
    return {name: json.loads((directory / f"{name}.json").read_text()) for name in names}


#: the methods of mdistiller/torchdistill, NKD/USKD and CTKD trained at once (one Distiller, one
#: run): USKD's soft target is a statistic of the global batch (gathered from the replicas), ICKD's
#: `/ B^2` divides by the global batch once, ReviewKD's fusion modules, OFD's connectors and PAD's
#: variance head have BatchNorms (synchronised), CTKD learns a temperature, NKD's parts are
#: per-sample terms averaged over the batch, KDSVD's connectors (the teacher is twice as wide) have
#: BatchNorms too. Left out: SRD by definition (`log` of a batch sum does not split over replicas),
#: MLKD (a second view of the batch), and DIST, run alone (DIST_RUN).
NEW_METHODS = ("reviewkd", "ofd", "kdsvd", "ickd", "nkd", "uskd", "pad_l2", "ctkd")
NEW_MIX = "new=" + "+".join(NEW_METHODS)
#: seven terms at once, ICKD at weight 500 and OFD's in the thousands: their large steps carry float
#: rounding (its order differs between one device and 2 replicas) to 1e-4..5e-4 in four steps, and
#: to 2e-3 on val_pad_l2 and 1.4e-3 on val_ctkd since PAD-L2's first stage runs before them (each
#: method alone, or PAD+CTKD+NKD together, agrees to 2e-5); a wrong reduction misses by far more
#: (ICKD's per-replica `/ b^2`, N times the term: loss 101 against 124 in epoch 1, 2e-1)
NEW_TOLERANCE = 1e-2
#: DIST alone: its per-class correlation over the global batch (gathered). On these untrained
#: networks its correlations are ill-conditioned (a class's probability varies by ~1% of its mean over
#: the batch): float rounding, whose order differs between one device and 2 replicas (the BatchNorm
#: moments' all-reduce), grows to 1e-4..1e-3 in four steps (measured: dist_intra 1.1e-4, val_dist
#: 1.4e-3), so it is held to DIST_TOLERANCE; one step equals one device's to 1e-5
#: (tests/test_distribute.py). A replica correlating its own half batch misses by far more.
DIST_RUN = "dist=dist"
DIST_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both mixes trained in one process; by 2 workers, the new methods' mix, then the older
    mix killed -9 mid-run and the job restarted: the results, and what the kill left."""
    one, two = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_workers")
    single = subprocess.Popen([sys.executable, "-m", "tests.test_multiworker", "worker", str(one),
                               f"{REFERENCE},{NEW_MIX},{DIST_RUN}", "--strategy=default"], cwd=ROOT,
                              env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start, killed = time.monotonic(), {}
    label = KILLED.split("=")[0]
    job = threading.Thread(target=lambda: killed.update(
        zip(("code", "log"), _launch_workers(two, [NEW_MIX, DIST_RUN, KILLED], f"--pause_at={label}:1:1",
                                             timeout=400))))
    job.start()
    marker = two / "paused.1"
    while not (marker.exists() and marker.read_text()) and job.is_alive() and time.monotonic() - start < 400:
        time.sleep(0.2)
    assert marker.exists(), killed.get("log", "")[-4000:]
    run = two / f"run_multiworker_{label}"
    killed["backups"] = [(run / "backup" / "distill").is_dir(), (run / ".worker1" / "backup" / "distill").is_dir()]
    os.kill(int(marker.read_text()), signal.SIGKILL)  # worker 1, paused in the middle of epoch 2
    job.join(timeout=120)
    killed["result_written"] = (two / f"{label}.json").exists()
    code, log = _launch_workers(two, [NEW_MIX, DIST_RUN, KILLED])  # the same job again: it resumes
    single_log = single.communicate(timeout=300)[0]
    assert code == 0, log[-4000:]
    assert single.returncode == 0, single_log[-4000:]
    print(f"multi-worker runs: {time.monotonic() - start:.0f}s")
    return {"one": _results(one, ["mix"])["mix"], "new_one": _results(one, ["new"])["new"],
            "new_two": _results(two, ["new"])["new"], "dist_one": _results(one, ["dist"])["dist"],
            "dist_two": _results(two, ["dist"])["dist"], "killed_then_resumed": _results(two, [label])[label],
            "dir": two, "killed": killed}


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
def test_two_workers_equal_one_process_on_a_mix_of_the_new_methods(runs):
    a, b = runs["new_one"], runs["new_two"]
    assert (a["replicas"], b["replicas"]) == (1, 2)
    assert len(b["history"]["loss"]) == RUN["epochs"]
    # every term and part, in training and in evaluation (val_)
    terms = {key for key in a["history"] for m in NEW_METHODS
             if key.removeprefix("val_") == m or key.removeprefix("val_").startswith(m + "_")}
    assert terms >= {*NEW_METHODS, "uskd_target", "val_ickd", "val_uskd_target"} and set(b["history"]) >= terms
    wrong = [(key, a["history"][key], b["history"][key]) for key in ("loss", "val_loss", *sorted(terms))
             if _relative(a["history"][key], b["history"][key]) >= NEW_TOLERANCE]
    wrong += [("student", i) for i, (wa, wb) in enumerate(zip(a["weights"], b["weights"], strict=True))
              if _relative(wa, wb) >= NEW_TOLERANCE]
    # the methods' own parts: ReviewKD's fusion modules, OFD's and KDSVD's connectors, ICKD's embedding
    # and PAD's variance head (BatchNorm statistics too), USKD's weak head, CTKD's temperature
    assert {m for m in NEW_METHODS if a["method_weights"][m]} == {"reviewkd", "ofd", "kdsvd", "ickd", "pad_l2",
                                                                  "uskd", "ctkd"}
    for method in NEW_METHODS:
        parts = zip(a["method_weights"][method], b["method_weights"][method], strict=True)
        wrong += [(method, i) for i, (wa, wb) in enumerate(parts) if _relative(wa, wb) >= NEW_TOLERANCE]
    assert not wrong, wrong
    assert a["top1"] == pytest.approx(b["top1"])
    assert not (runs["dir"] / "run_multiworker_new" / ".worker1").exists()  # the other worker's folder is gone


@pytest.mark.e2e
@needs_fashion_mnist
def test_two_workers_train_dist_as_one_process_to_float_rounding(runs):
    a, b = runs["dist_one"], runs["dist_two"]
    assert (a["replicas"], b["replicas"]) == (1, 2)
    keys = ("loss", "dist", "dist_inter", "dist_intra", "val_loss", "val_dist", "val_dist_inter", "val_dist_intra")
    for key in keys:
        assert _relative(a["history"][key], b["history"][key]) < DIST_TOLERANCE, (key, a["history"][key],
                                                                                 b["history"][key])
    for i, (wa, wb) in enumerate(zip(a["weights"], b["weights"], strict=True)):
        assert _relative(wa, wb) < DIST_TOLERANCE, ("student", i)
    assert a["top1"] == pytest.approx(b["top1"])


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_job_whose_worker_is_killed_resumes_from_its_backup_to_one_process_end(runs):
    """kill -9 of worker 1 in the middle of epoch 2 (both workers' backups of
    epoch 1 written, a step of epoch 2 taken): the launcher stops the job, and
    the job restarted with the same runs resumes epoch 2 and ends as one process
    does on the same global batch: every term, the student's weights and each
    method's state (KD, DKD: none; CRD: embeddings, banks, draw count; FitNet: the
    regressor with its BatchNorm statistics)."""
    killed, label = runs["killed"], KILLED.split("=")[0]
    assert killed["code"] == -signal.SIGKILL, killed["log"][-4000:]
    assert "worker 1 exited with code -9: stopping the others" in killed["log"]
    assert killed["backups"] == [True, True] and not killed["result_written"]
    resumed, reference = runs["killed_then_resumed"], runs["one"]
    assert len(resumed["history"]["loss"]) == RUN["epochs"]  # the killed process's epoch is kept
    assert reference["replicas"] == 1 and resumed["replicas"] == 2
    for key in ("loss", *METHODS, "val_loss", "accuracy"):  # dkd: the warm-up's epoch restored
        assert _relative(reference["history"][key], resumed["history"][key]) < 1e-4, (key, resumed["history"])
    for i, (wa, wb) in enumerate(zip(reference["weights"], resumed["weights"], strict=True)):
        assert _relative(wa, wb) < 1e-4, ("student", i)
    for method in METHODS:
        parts = list(zip(reference["method_weights"][method], resumed["method_weights"][method], strict=True))
        assert (len(parts) > 0) == (method in ("crd", "fitnet")), method
        assert all(_relative(wa, wb) < 1e-4 for wa, wb in parts), method
    assert resumed["top1"] == pytest.approx(reference["top1"])
    run = runs["dir"] / f"run_multiworker_{label}"
    assert not (run / "backup").exists() and not (run / ".worker1").exists()


@pytest.mark.e2e
@needs_fashion_mnist
def test_the_distill_recipe_trains_its_teacher_and_student_to_the_end_under_the_launcher(tmp_path):
    """One launch of recipes/distill.py with a zoo teacher: the teacher is trained
    under the strategy first (as recipes/train_teacher.py trains a model: `fit_data`,
    then saved by every worker), then the student distilled; only the chief's files stay."""
    out = tmp_path / "student"
    args = ["--dataset=fashion_mnist", "--train_limit=64", "--test_limit=32", "--batch_size=32", "--epochs=1",
            "--teacher=resnet8", "--teacher_epochs=1", "--method=kd", f"--output_dir={out}"]
    proc = subprocess.run([sys.executable, "-m", "kdkeras.launch", "--workers=2", "--timeout=300",
                           "recipes/distill.py", *args], cwd=ROOT, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "[worker 1] Training teacher resnet8" in proc.stdout and "[worker 0] Training teacher" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 1 and 0 <= metrics["student_top1"] <= 1
    assert 0 <= metrics["teacher_top1"] <= 1
    assert (out / "student.keras").exists() and (out / "teacher.keras").exists()
    assert not any(p.name.startswith(".worker") for p in out.iterdir())


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        strategy = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--strategy="))
        pause = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--pause_at=")), None)
        _worker(sys.argv[2], sys.argv[3].split(","), strategy, pause)
