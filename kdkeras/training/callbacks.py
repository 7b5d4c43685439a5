"""The callbacks every fit runs with: stop at a non-finite loss, crash-safe backups,
the whole run's history across resumes, and optional TensorBoard logs."""

from __future__ import annotations

import json
import os
import shutil
import time

import keras
import numpy as np

from kdkeras.files import write_json
from kdkeras.nonfinite import NonFiniteLossError, StopOnNonFiniteLoss  # noqa: F401  (re-exported)


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, written atomically: Keras writes the weights, then
    the epoch, in place, so a crash between the two resumes epoch k's weights as
    epoch k-1 (a silently wrong model). Here each backup is written whole into
    `DIR.partial` and swapped in by renames; an interrupted write leaves the
    previous complete backup (or none), never a mixed one."""

    def on_train_begin(self, logs=None):
        backup = self.backup_dir
        if not os.path.exists(backup) and os.path.exists(backup + ".old"):
            os.rename(backup + ".old", backup)  # crashed between the two renames
        for leftover in (backup + ".partial", backup + ".old"):
            shutil.rmtree(leftover, ignore_errors=True)
        super().on_train_begin(logs)

    def _save_model(self):
        backup, partial, old = self.backup_dir, self.backup_dir + ".partial", self.backup_dir + ".old"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        self.model.save_weights(os.path.join(partial, os.path.basename(self._weights_path)), overwrite=True)
        meta = os.path.join(partial, os.path.basename(self._training_metadata_path))
        with open(meta, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(backup):
            os.rename(backup, old)
        os.rename(partial, backup)
        shutil.rmtree(old, ignore_errors=True)


class HistoryKeeper(keras.callbacks.Callback):
    """Records each finished epoch's logs and the seconds spent so far in `path`
    (beside the backup), so a resumed `fit` can report the whole run's history
    and time, not only the epochs of the last process (`merged`)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.first_epoch, self._epochs, self._prior_seconds = None, {}, 0.0
        self._start = time.perf_counter()

    def _records(self) -> dict:
        if not os.path.exists(self.path):
            return {"epochs": {}, "seconds": 0.0}
        with open(self.path) as f:
            return json.load(f)

    def on_train_begin(self, logs=None):
        self.first_epoch, self._epochs, self._prior_seconds = None, {}, 0.0
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            records = self._records()
            kept = {k: v for k, v in records["epochs"].items() if int(k) < epoch}
            self._prior_seconds = records["seconds"] if kept else 0.0
            self._epochs = kept

    def on_epoch_end(self, epoch, logs=None):
        self._epochs[str(epoch)] = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
        seconds = self._prior_seconds + time.perf_counter() - self._start
        write_json(self.path, {"epochs": self._epochs, "seconds": seconds}, atomic=True)

    def merged(self, history: dict, seconds: float) -> tuple[dict, float]:
        """`history`/`seconds` of this fit with the epochs an earlier process finished
        before the resume put in front; then forget the record."""
        earlier = [self._epochs[k] for k in sorted(self._epochs, key=int)
                   if self.first_epoch is not None and int(k) < self.first_epoch]
        if os.path.exists(self.path):
            os.remove(self.path)
        if not earlier:
            return history, seconds
        merged = {key: [e.get(key) for e in earlier] + list(values) for key, values in history.items()}
        return merged, seconds + self._prior_seconds


def callbacks_for(
    output_dir: str | None, tensorboard: bool = False, backup: bool = True, tag: str = "run"
) -> list[keras.callbacks.Callback]:
    """Crash-safe training (an atomic BackupAndRestore) and optional TensorBoard logs."""
    cbs: list[keras.callbacks.Callback] = []
    if output_dir:
        if backup:
            cbs.append(SafeBackupAndRestore(os.path.join(output_dir, "backup", tag)))
        if tensorboard:
            cbs.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard", tag)))
    return cbs
