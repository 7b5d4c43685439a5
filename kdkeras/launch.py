"""Run a script as an N-worker MultiWorkerMirroredStrategy job on this machine.

    python -m kdkeras.launch --workers=2 recipes/distill.py --teacher=T.keras --epochs=3 ...

Starts N processes of SCRIPT with its flags plus `--strategy=multiworker`, each
with a TF_CONFIG naming the N workers on free loopback ports (127.0.0.1 only)
and its own index; streams their output prefixed `[worker i]`; when a worker
fails, stops the others and exits with its code (0 when all succeed). Worker 0
is the chief: it alone writes metrics, models and reports. On several hosts,
set TF_CONFIG on each host yourself (README, "Several machines").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

HOST = "127.0.0.1"
#: seconds a worker has to exit after SIGTERM before it is killed
GRACE_SECONDS = 10.0


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on the loopback interface now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: Sequence[int], index: int) -> dict:
    """The TF_CONFIG of worker `index` of a loopback cluster on `ports`."""
    return {"cluster": {"worker": [f"{HOST}:{p}" for p in ports]},
            "task": {"type": "worker", "index": int(index)}}


def worker_command(script: str, args: Sequence[str]) -> list[str]:
    """This Python running `script` (a path, or `-m module`) with `args` and
    `--strategy=multiworker` (replacing any other --strategy)."""
    args = [a for a in args if not a.startswith("--strategy=")] + ["--strategy=multiworker"]
    return [sys.executable, *(["-m", script[3:]] if script.startswith("-m ") else [script]), *args]


def _stream(proc: subprocess.Popen, index: int, out: TextIO, lock: threading.Lock) -> None:
    for line in proc.stdout:
        with lock:
            out.write(f"[worker {index}] {line}")
            out.flush()


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(script: str, args: Sequence[str] = (), workers: int = 2, env: dict | None = None,
           out: TextIO | None = None, timeout: float | None = None) -> int:
    """Run `workers` processes of `script args` as one multi-worker job; return 0
    when all exit 0, else the first failing worker's code (the others stopped).
    `timeout` (seconds) stops them all and returns 124."""
    if int(workers) < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}.")
    out = out or sys.stdout
    ports, lock, procs, threads = free_ports(int(workers)), threading.Lock(), [], []
    for index in range(int(workers)):
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": json.dumps(tf_config(ports, index)),
                      "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(worker_command(script, args), env=worker_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs.append(proc)
        thread = threading.Thread(target=_stream, args=(proc, index, out, lock), daemon=True)
        thread.start()
        threads.append(thread)
    start, code = time.monotonic(), 0
    try:
        while [p.poll() for p in procs].count(None):  # poll every worker (no short-circuit)
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                index, code = failed[0]
                with lock:
                    out.write(f"[launch] worker {index} exited with code {code}: stopping the others\n")
                break
            if timeout is not None and time.monotonic() - start > timeout:
                code = 124
                with lock:
                    out.write(f"[launch] timed out after {timeout:.0f}s: stopping the workers\n")
                break
            time.sleep(0.2)
    finally:
        _stop(procs)
        for thread in threads:
            thread.join(timeout=5)
    if code == 0:
        code = next((p.returncode for p in procs if p.returncode != 0), 0)
    return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdkeras.launch",
        description="Run SCRIPT as an N-worker MultiWorkerMirroredStrategy job on loopback ports.")
    parser.add_argument("--workers", type=int, default=2, help="Number of worker processes (>= 1).")
    parser.add_argument("--timeout", type=float, default=None, help="Stop every worker after this many seconds.")
    parser.add_argument("script", help="The script to run (e.g. recipes/distill.py).")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="The script's own flags.")
    options = parser.parse_args(argv)
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}")
    return launch(options.script, options.args, options.workers, timeout=options.timeout)


if __name__ == "__main__":
    sys.exit(main())
