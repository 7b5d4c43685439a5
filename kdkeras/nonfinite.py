"""Stop training at a non-finite loss: one NaN pixel or a diverging learning rate
otherwise turns every weight into NaN without a word. The Distiller stops so by
default, and every recipe's fit (`kdkeras.training`); a module of its own so that
both import it (`kdkeras.training` imports the Distiller)."""

from __future__ import annotations

import keras
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (bad input data, or a diverging rate)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop `fit` at the first batch whose loss is NaN or infinite, put back the
    weights the model had when that epoch began (the last known good ones) and
    raise `NonFiniteLossError` naming the epoch and batch (or, where every loss stayed
    finite, the epoch whose weights became NaN): unlike Keras' `TerminateOnNaN` the run
    fails instead of saving a model of NaNs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._good = self.model.get_weights()

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get("loss")
        if value is None or np.all(np.isfinite(np.asarray(value, dtype="float64"))):
            return
        self.model.set_weights(self._good)
        self.model.stop_training = True
        raise NonFiniteLossError(
            f"The training loss became {float(np.asarray(value))} at epoch {self._epoch + 1}, batch "
            f"{batch + 1} (1-based): a NaN/inf in the data (check the images and labels of that batch) "
            "or a learning rate that diverges (try a smaller one: --lr). The model's weights were put back "
            "to those at the start of that epoch; nothing was saved as finished.")

    def on_epoch_end(self, epoch, logs=None):
        # a plain model's compiled loss can stay finite on a NaN batch (a fused graph-mode
        # CPU kernel) while its gradients are NaN: its weights then tell
        weights = self.model.get_weights()
        if all(np.all(np.isfinite(w)) for w in weights if np.issubdtype(np.asarray(w).dtype, np.floating)):
            return
        self.model.set_weights(self._good)
        self.model.stop_training = True
        raise NonFiniteLossError(
            f"The model's weights became NaN/inf during epoch {epoch + 1} although every logged loss was "
            "finite: a NaN/inf in the data (check the images and labels) or a learning rate that diverges "
            "(try a smaller one: --lr). The weights were put back to those at the start of that epoch; "
            "nothing was saved as finished.")


def all_finite(tensors):
    """A scalar boolean tensor: whether every element of `tensors` (None skipped) is finite."""
    values = [t.values if type(t).__name__ == "IndexedSlices" else t for t in tensors if t is not None]
    checks = [keras.ops.all(keras.ops.isfinite(t)) for t in values]
    return keras.ops.all(keras.ops.stack(checks)) if checks else keras.ops.convert_to_tensor(True)


def has_nonfinite_stop(callbacks) -> bool:
    """Whether `callbacks` already stop at a non-finite loss."""
    return any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks)
