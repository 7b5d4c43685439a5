"""A sweep whose objective sleeps instead of training: each trial reports a made-up
validation top-1 per "epoch" and records which process ran it. Used by test_tune to
kill a sweep mid-trial and to share one SQLite study between processes (no TensorFlow).

Run as `python -m tests.tune_sweep_check URL TRIALS SECONDS_PER_EPOCH EPOCHS HEARTBEAT GRACE`.
"""

import os
import sys
import time

from kdkeras.tune.study import open_study, progress_line, run_sweep


def objective(seconds: float, epochs: int):
    def run(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("pid", os.getpid())
        for epoch in range(epochs):
            time.sleep(seconds)
            trial.report(x * (epoch + 1) / epochs, epoch)
        return x
    return run


if __name__ == "__main__":
    url, trials, seconds, epochs, heartbeat, grace = sys.argv[1:7]
    study = open_study("sleepy", url, heartbeat=int(heartbeat), grace=int(grace))
    run_sweep(study, objective(float(seconds), int(epochs)), int(trials), progress=progress_line(int(trials)))
