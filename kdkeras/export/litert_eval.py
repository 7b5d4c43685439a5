"""Evaluate .tflite files with the LiteRT runtime (`ai_edge_litert`).

`tf.lite.Interpreter` is deprecated; the standalone LiteRT interpreter is
what ships to devices, so accuracy and latency are measured with it.
Integer models are fed through their own input quantisation parameters
and their outputs dequantised, so top-1 and logits are comparable with
the float Keras model.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from .batches import iter_batches, to_numpy

if TYPE_CHECKING:  # keras is imported by callers; only the annotations name it
    import keras


class _Runner:
    """One LiteRT interpreter for a single-input, single-output classifier.

    Float inputs are quantised with the input tensor's (scale, zero_point)
    when it is int8/uint8, outputs dequantised with the output's own.
    With a dynamic batch dimension, whole batches are run at once after
    `resize_tensor_input`; otherwise (or if that fails) example by example.
    """

    def __init__(self, path: str, num_threads: int | None, batched: bool = True):
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"expected a single-input, single-output model, got "
                f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input = inputs[0]
        self.output = outputs[0]
        signature = self.input.get("shape_signature", self.input["shape"])
        self.batched = batched and len(signature) > 0 and int(signature[0]) == -1
        self._batch = None  # batch size the tensors are currently allocated for

    def _allocate(self, n: int) -> None:
        if self._batch != n:
            shape = list(self.input["shape"])
            shape[0] = n
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self._batch = n

    def quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero_point = self.input["quantization"]
            if scale == 0:
                raise ValueError("integer input tensor without quantisation parameters")
            info = np.iinfo(dtype)
            q = np.round(x / scale + zero_point)
            return np.clip(q, info.min, info.max).astype(dtype)
        return x.astype(dtype, copy=False)

    def dequantize(self, y: np.ndarray) -> np.ndarray:
        if y.dtype in (np.int8, np.uint8, np.int16):
            scale, zero_point = self.output["quantization"]
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32, copy=False)

    def _invoke(self, q: np.ndarray) -> np.ndarray:
        self._allocate(q.shape[0])
        self.interpreter.set_tensor(self.input["index"], q)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float logits (N, ...) for a float batch x (N, H, W, C)."""
        q = self.quantize(x)
        if self.batched:
            try:
                return self.dequantize(self._invoke(q))
            except (RuntimeError, ValueError):
                self.batched = False  # fall back to one example at a time
                self._batch = None
        return np.concatenate(
            [self.dequantize(self._invoke(q[i:i + 1])) for i in range(len(q))], axis=0)

    def latency_ms(self, example: np.ndarray, runs: int, warmup: int) -> float:
        """Mean wall-clock ms of one single-image invoke (warm-up excluded)."""
        self._allocate(1)
        self.interpreter.set_tensor(self.input["index"], self.quantize(example[:1]))
        for _ in range(warmup):
            self.interpreter.invoke()
        start = time.perf_counter()
        for _ in range(runs):
            self.interpreter.invoke()
        return (time.perf_counter() - start) * 1000.0 / runs


def _top1(logits: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is None or len(labels) == 0:
        return float("nan")
    return float(np.mean(logits.reshape(len(labels), -1).argmax(-1) == labels))


def evaluate_tflite(
    path: str,
    dataset: Any,
    num_threads: int | None = None,
    max_batches: int | None = None,
    *,
    latency_runs: int = 100,
    warmup_runs: int = 10,
) -> dict:
    """Accuracy, latency and size of a .tflite classifier on `dataset`.

    Runs the whole dataset (or its first `max_batches` batches) through the
    LiteRT interpreter with `num_threads` threads (default: all CPU cores)
    and times `latency_runs` single-image invokes after `warmup_runs`
    warm-up invokes, once with one thread and once with os.cpu_count().

    Returns {"top1", "num_examples", "latency_ms", "latency_ms_all_threads",
    "size_bytes", "logits" (float, dequantised, dataset order), "labels"}.
    """
    all_threads = os.cpu_count() or 1
    main_threads = num_threads if num_threads is not None else all_threads
    runner = _Runner(path, main_threads)

    logits, labels, first = [], [], None
    for x, y in iter_batches(dataset, max_batches):
        if first is None and len(x):
            first = x[:1]
        logits.append(runner.run(x))
        if y is not None:
            labels.append(y)
    if first is None:
        raise ValueError("dataset yielded no examples")
    logits_arr = np.concatenate(logits, axis=0)
    labels_arr = np.concatenate(labels) if labels else None

    single = runner if main_threads == 1 else _Runner(path, 1)
    latency_1 = single.latency_ms(first, latency_runs, warmup_runs)
    multi = runner if main_threads == all_threads else _Runner(path, all_threads)
    latency_all = multi.latency_ms(first, latency_runs, warmup_runs)

    return {
        "top1": _top1(logits_arr, labels_arr),
        "num_examples": int(len(logits_arr)),
        "latency_ms": float(latency_1),
        "latency_ms_all_threads": float(latency_all),
        "size_bytes": int(os.path.getsize(path)),
        "logits": logits_arr,
        "labels": labels_arr,
    }


def compare_with_keras(
    model: keras.Model,
    path: str,
    dataset: Any,
    max_batches: int | None = None,
) -> dict:
    """Run the Keras model and the .tflite file on the same batches and compare.

    The dataset is iterated once and every batch goes to both models, so a
    reshuffling tf.data pipeline cannot misalign the two sets of logits.
    Returns {"keras_top1", "tflite_top1", "max_abs_logit_diff",
    "top1_agreement", "num_examples"}.
    """
    runner = _Runner(path, os.cpu_count() or 1)
    k_logits, t_logits, labels = [], [], []
    for x, y in iter_batches(dataset, max_batches):
        k_logits.append(np.asarray(to_numpy(model(x, training=False)), dtype=np.float32))
        t_logits.append(runner.run(x))
        if y is not None:
            labels.append(y)
    if not k_logits:
        raise ValueError("dataset yielded no examples")
    k = np.concatenate(k_logits).reshape(sum(len(a) for a in k_logits), -1)
    t = np.concatenate(t_logits).reshape(k.shape)
    lab = np.concatenate(labels) if labels else None
    return {
        "keras_top1": _top1(k, lab),
        "tflite_top1": _top1(t, lab),
        **logit_agreement(k, t),
        "num_examples": int(len(k)),
    }


def logit_agreement(reference: np.ndarray, logits: np.ndarray) -> dict:
    """How far `logits` (N, K) are from `reference` (e.g. the Keras model's on
    the same examples): `max_abs_logit_diff` and `top1_agreement` (0..1)."""
    reference = np.asarray(reference, np.float32)
    logits = np.asarray(logits, np.float32).reshape(reference.shape)
    return {
        "max_abs_logit_diff": float(np.max(np.abs(reference - logits))),
        "top1_agreement": float(np.mean(reference.argmax(-1) == logits.argmax(-1))),
    }
