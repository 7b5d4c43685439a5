"""`Distiller`: a Keras model that trains a student from a frozen teacher.

One training step runs the teacher's tap model once (inference mode, outside
the gradient tape), or reads its outputs from a teacher cache that came with
the batch (`x["teacher"]`, see `kdkeras.cache`), and the student's tap model
once, hands both dictionaries of named tensors to every method, and minimises

    student_loss_weight * compiled_loss(y, z_s) + sum_i weight_i * term_i

over the student's weights and the methods' own trainable parts. Every term
is reduced per replica the way Keras scales a `Loss` under `tf.distribute`
(divided by the number of replicas), so N replicas give the same update as
one device on the same global batch. A strong view that a method reads (MLKD)
and copies of the batch a method makes (SSKD's rotations) run stacked with the
batch, in the same single pass (`kdkeras.two_views`, `kdkeras.batch_copies`).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from keras import ops

from kdkeras import batch_copies, checks
from kdkeras import taps as taps_lib
from kdkeras.keys import INPUT_TAP, LOGITS, TEACHER, grad_key, split_inputs
from kdkeras.methods.base import Method, StepContext, check_weight, sparse_labels
from kdkeras.nonfinite import StopOnNonFiniteLoss, all_finite, has_nonfinite_stop
from kdkeras.replicas import num_replicas, replica_scale
from kdkeras.split_gradients import split_packer
from kdkeras.tap_plan import TapPlan, plan_taps
from kdkeras.two_views import run_on_views, strong_view, student_loss_on_views

__all__ = ["Distiller", "cached_teacher_outputs"]


def cached_teacher_outputs(x):
    """The teacher's cached outputs a batch carries (`x["teacher"]`), or None."""
    if isinstance(x, dict) and TEACHER in x:
        return {k: tf.stop_gradient(v) for k, v in x[TEACHER].items()}
    return None


@keras.saving.register_keras_serializable(package="kdkeras")
class Distiller(keras.Model):
    """Trains `student` to match `teacher` through a list of methods.

    Each step hands every method the tapped outputs of both networks and a
    `kdkeras.methods.StepContext` (training flag, dataset index, epoch), so a
    method needs nothing from the Distiller beyond its declared taps and
    `gradient_keys`. Which layers each method reads, and its name in the logs,
    come from `plan` (`kdkeras.tap_plan.plan_taps`); no method is changed.

    Args:
        teacher: a built Keras model returning logits, or `None` when every
            method is teacher-free. It is frozen and always run with
            `training=False`.
        student: a built Keras model returning logits.
        methods: distillation methods (`kdkeras.methods.*`), each a term.
        student_loss_weight: weight of the student's own supervised loss
            (the loss given to `compile`, sparse cross-entropy on logits by
            default).
        teacher_cache: a `kdkeras.cache.TeacherCache` the batches are read
            with (`kdkeras.data.load(..., teacher_cache=cache)`): the teacher's
            outputs come with each batch, so `teacher` may be None (it is
            then never needed in memory). Methods whose teacher taps are not
            given read the ones the cache was built for.
        stop_on_nonfinite: `fit` stops at the first NaN/inf loss, logit or gradient (weights put back
            to the epoch's start) and raises `NonFiniteLossError` naming the epoch
            and batch; False trains on.

    Example:

    ```python
    distiller = kdkeras.Distiller(teacher, student,
                                  methods=[kdkeras.methods.KD(temperature=4.0, weight=0.9)],
                                  student_loss_weight=0.1)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=test_ds, epochs=5)
    distiller.student.save("student.keras")
    ```
    """

    #: each method's term name and the layers it reads (`kdkeras.tap_plan.plan_taps`)
    plan: TapPlan

    def __init__(
        self,
        teacher: keras.Model | None,
        student: keras.Model,
        methods: Sequence[Method] = (),
        student_loss_weight: float = 1.0,
        name: str = "distiller",
        teacher_cache=None,
        stop_on_nonfinite: bool = True,
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        methods = list(methods)
        for method in methods:
            if not isinstance(method, Method):
                raise TypeError(
                    "Distiller methods must be kdkeras.methods.Method instances "
                    f"(e.g. kdkeras.methods.get('kd')); got {method!r}."
                )
        checks.check_models(teacher, student, methods, teacher_cache)
        object.__setattr__(self, "teacher_cache", teacher_cache)
        self.teacher = teacher
        self.student = student
        self.student_loss_weight = check_weight(student_loss_weight, "student_loss_weight")
        self.methods = methods
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        if teacher is not None:
            teacher.trainable = False
        # The 0-based epoch and the run length of the current `fit`, read by
        # warm-ups through the step context. Only `epoch` is saved (as before);
        # `fit` sets both.
        self.epoch = keras.Variable(0, dtype="int32", trainable=False, name="epoch")
        object.__setattr__(
            self, "_fit_epochs", keras.Variable(1, dtype="int32", trainable=False, name="fit_epochs")
        )
        self._build_taps()
        self._make_trackers()
        self.built = True

    # -- construction ------------------------------------------------------------
    def _build_taps(self):
        plan = plan_taps(self.methods, self.teacher, self.student, self.teacher_cache)
        # The plan and the tap models share the networks' layers; keep them out
        # of Keras' tracking so weights are not listed (or saved) twice.
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "_grad_keys", plan.gradient_keys)
        object.__setattr__(self, "_copier", batch_copies.copying_method(
            self.methods, self.teacher_cache, plan.gradient_keys))
        object.__setattr__(
            self, "_teacher_tap",
            taps_lib.build_tap_model(self.teacher, plan.teacher_outputs) if self.teacher is not None else None,
        )
        object.__setattr__(self, "_student_tap", taps_lib.build_tap_model(self.student, plan.student_outputs))
        object.__setattr__(self, "_teacher_train_tap", self._cut_teacher_tap())
        for method in self.methods:
            method.build_from_taps(*plan.build_shapes(method))
            if method.reads_teacher_weights and self.teacher is not None:
                method.read_teacher(self.teacher)

    def _cut_teacher_tap(self):
        """The teacher model `train_step` runs: when no method reads the teacher's
        logits (or its CE gradient), the tap model cut after its last tap, so the
        teacher's tail is not computed. `test_step` keeps the whole teacher, for
        the agreement metric."""
        tap = self._teacher_tap
        if tap is None or self._grad_keys or any(m.uses_teacher_logits for m in self.methods):
            return tap
        outputs = {k: v for k, v in tap.output.items() if k != LOGITS}
        if not outputs:
            return tap
        return keras.Model(tap.inputs, outputs, name=f"{tap.name}_cut")

    def _make_trackers(self):
        mean = keras.metrics.Mean
        self._student_loss_tracker = mean(name="student_loss")
        self._term_trackers = {}
        for method, entry in zip(self.methods, self.plan.entries):
            self._term_trackers[entry.term] = mean(name=entry.term)
            for key in method.log_keys:
                name = f"{entry.term}_{key}"
                self._term_trackers[name] = mean(name=name)
        has_teacher = self.teacher is not None or self.teacher_cache is not None
        self._agreement_tracker = mean(name="agreement") if has_teacher else None

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Keras' `compile`; the loss defaults to sparse cross-entropy on logits."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Keras skips custom `compile` methods on load unless this is defined.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras' `fit`, with the epoch counter that warm-ups read kept in step (and
        the stop at a non-finite loss, unless `stop_on_nonfinite=False`)."""
        callbacks = list(callbacks or []) + [_EpochCounter(self.epoch, self._fit_epochs)]
        if self.stop_on_nonfinite and not has_nonfinite_stop(callbacks):
            callbacks.append(StopOnNonFiniteLoss())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # -- forward --------------------------------------------------------------------
    def call(self, inputs, training=False):
        images, _ = split_inputs(inputs)
        return self.student(images, training=training)

    def teacher_outputs(self, images, y=None, tap_model=None):
        """The teacher's tap outputs, in inference mode and without gradient
        (`tap_model` defaults to the whole teacher's)."""
        tap_model = self._teacher_tap if tap_model is None else tap_model
        if tap_model is None:
            return None
        out = self._run(tap_model, images, y, training=False)
        return {k: tf.stop_gradient(v) for k, v in out.items()}

    def _run(self, tap_model, images, y, training):
        """One pass of a tap model; with gradient keys, also the gradient of the
        network's summed CE w.r.t. the input or taps (a backward pass, not a
        second forward; nested in the outer tape for the student, so the
        student's term gets its second-order gradient)."""
        if not self._grad_keys or y is None:
            return dict(tap_model(images, training=training))
        images = ops.convert_to_tensor(images)
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            inner.watch(images)
            out = dict(tap_model(images, training=training))
            labels = sparse_labels(y)
            ce = ops.sum(
                keras.losses.sparse_categorical_crossentropy(
                    labels, ops.cast(out[LOGITS], "float32"), from_logits=True
                )
            )
        targets = [images if k == INPUT_TAP else out[k] for k in self._grad_keys]
        for key, grad in zip(self._grad_keys, inner.gradient(ce, targets)):
            out[grad_key(key)] = grad
        return out

    def _terms(self, teacher_out, student_out, y, sample_weight, index, training, methods):
        """The replica-scaled task loss (the student's own, with its regularisers) and
        distillation loss (the methods' terms and theirs), and the unscaled logs; only a
        copying method reads its copies' rows."""
        stacked = (teacher_out, student_out)
        teacher_out, student_out = (batch_copies.own_rows(out, self._copier, y) for out in stacked)
        student_loss = student_loss_on_views(self._compile_loss, y, student_out, sample_weight)
        if student_loss is None:
            student_loss = ops.zeros(())
        # The compiled loss is already divided by the replica count; log it whole.
        logs = {"student_loss": student_loss * num_replicas()}
        task = self.student_loss_weight * student_loss
        if self.student.losses:
            task = task + replica_scale(ops.sum(self.student.losses))
        distill = ops.zeros(())
        labels = sparse_labels(y)
        context = StepContext(training=training, index=index, epoch=self.epoch, epochs=self._fit_epochs)
        for method in methods:
            name = self.plan.entry(method).term
            t_out, s_out = stacked if method is self._copier else (teacher_out, student_out)
            term = method.compute_loss(t_out, s_out, labels, context)
            if isinstance(term, dict):
                for key, value in term.items():
                    logs[f"{name}_{key}"] = value
                term = sum(term.values())
            term = ops.cast(term, "float32")
            logs[name] = term
            distill = distill + method.weight * replica_scale(term)
        for method in methods:
            if method.losses:
                distill = distill + replica_scale(ops.sum(method.losses))
        return task, distill, logs

    def _teacher_or_fail(self, images, y, tap_model):
        out = self.teacher_outputs(images, y, tap_model)
        if out is None and any(m.requires_teacher for m in self.methods):
            raise ValueError(
                "This Distiller has no teacher model, and the batch carries no cached teacher "
                "outputs: train on kdkeras.data.load(..., teacher_cache=cache) batches.")
        return out

    def _check_index(self, index):
        checks.check_index(index, [self.plan.entry(m).term for m in self.methods if m.requires_index])

    def _checked_labels(self, y):
        return checks.checked_labels(y, self.loss, int(checks.output_dim(self.student)))

    # -- steps ------------------------------------------------------------------------
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images, index = split_inputs(x)
        y = self._checked_labels(y)
        self._check_index(index)
        strong = strong_view(x, self.methods, required=True)  # then both views run as one batch
        images = batch_copies.stack(images, self._copier)
        teacher_out = cached_teacher_outputs(x)
        if teacher_out is None and any(m.requires_teacher for m in self.methods):  # not for agreement alone
            teacher_out = run_on_views(lambda i, t: self._teacher_or_fail(i, t, self._teacher_train_tap),
                                       images, strong, y)
        # An optimiser that takes the task and distillation gradients apart gets both,
        # from one forward pass (`kdkeras.split_gradients`); any other the sum's.
        split = split_packer(self.optimizer)
        with tf.GradientTape(persistent=split is not None) as tape:
            student_out = run_on_views(lambda i, t: self._run(self._student_tap, i, t, training=True),
                                       images, strong, y)
            task, distill, logs = self._terms(teacher_out, student_out, y, sample_weight, index, True,
                                              self.methods)
            total = task + distill
            scaled = [self.optimizer.scale_loss(part) for part in ([total] if split is None else [task, distill])]
        variables = self.trainable_variables
        grads = [tape.gradient(part, variables) for part in scaled]
        grads = grads[0] if split is None else split(*grads, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        # a loss-scale optimiser skips non-finite steps itself (and lowers its scale)
        checked = None if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) else all_finite(grads)
        return self._update_metrics(total, logs, teacher_out, student_out, y, sample_weight, checked)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images, index = split_inputs(x)
        y = self._checked_labels(y)
        strong = strong_view(x, self.methods, required=False)
        images = batch_copies.stack(images, self._copier)
        teacher_out = cached_teacher_outputs(x)
        if teacher_out is None:
            teacher_out = run_on_views(self.teacher_outputs, images, strong, y)
        student_out = run_on_views(lambda i, t: self._run(self._student_tap, i, t, training=False),
                                   images, strong, y)
        methods = self.methods
        if teacher_out is None:
            # No teacher in memory and no cached outputs for this data: score the
            # student alone (teacher-free terms still count).
            methods = [m for m in methods if not m.requires_teacher]
        if index is None:
            # Index-based methods (memory banks) cannot score held-out data.
            methods = [m for m in methods if not m.requires_index]
        task, distill, logs = self._terms(teacher_out, student_out, y, sample_weight, index, False, methods)
        total = task + distill
        return self._update_metrics(total, logs, teacher_out, student_out, y, sample_weight)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        images, _ = split_inputs(x)
        return self.student(images, training=False)

    def _update_metrics(self, total, logs, teacher_out, student_out, y, sample_weight, grads_finite=None):
        teacher_out, student_out = (batch_copies.own_rows(out, self._copier, y) for out in (teacher_out, student_out))
        logits = student_out[LOGITS]
        batch = tf.shape(logits)[0]
        unscaled = total * num_replicas() if num_replicas() > 1 else total
        # A NaN/inf logit or gradient logs a NaN loss, so the non-finite stop sees it where a
        # fused graph-mode CPU kernel (conv + batch norm + ReLU) hides a NaN input from the loss.
        finite = all_finite([logits])
        if grads_finite is not None:
            finite = ops.logical_and(finite, grads_finite)
        unscaled = ops.where(finite, unscaled, ops.full_like(unscaled, float("nan")))
        self._loss_tracker.update_state(unscaled, sample_weight=batch)
        for key, value in logs.items():
            tracker = self._student_loss_tracker if key == "student_loss" else self._term_trackers[key]
            tracker.update_state(value, sample_weight=batch)
        agreement = self._agreement_tracker is not None and teacher_out is not None and LOGITS in teacher_out
        if agreement:
            same = ops.equal(ops.argmax(teacher_out[LOGITS], axis=-1), ops.argmax(logits, axis=-1))
            self._agreement_tracker.update_state(ops.cast(same, "float32"))
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, logits, sample_weight)
        result = self.get_metrics_result()
        if not agreement:  # the teacher ran without its logits (cut after its last tap)
            result.pop("agreement", None)
        return result

    # -- serialisation --------------------------------------------------------------
    def get_config(self) -> dict:
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "teacher": serialize(self.teacher) if self.teacher is not None else None,
            "student": serialize(self.student),
            "methods": [serialize(m) for m in self.methods],
            "student_loss_weight": self.student_loss_weight,
            "stop_on_nonfinite": self.stop_on_nonfinite,
            "teacher_cache": self.teacher_cache.path if self.teacher_cache is not None else None,
            "teacher_cache_entries": (list(self.teacher_cache.entries)
                                      if self.teacher_cache is not None else None),
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "Distiller":
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        teacher = config.pop("teacher")
        config["teacher"] = deserialize(teacher) if teacher is not None else None
        config["student"] = deserialize(config["student"])
        config["methods"] = [deserialize(m) for m in config["methods"]]
        entries = config.pop("teacher_cache_entries", None)
        if config.get("teacher_cache"):
            from kdkeras.cache import TeacherCache

            cache = TeacherCache.open(config["teacher_cache"], verify=False)
            config["teacher_cache"] = cache.select(entries) if entries else cache
        return cls(**config)


class _EpochCounter(keras.callbacks.Callback):
    """Keeps the Distiller's `epoch` variable equal to Keras' epoch number, so
    warm-ups follow the epoch after a resume with `initial_epoch`, and its run
    length equal to the `epochs` of the `fit` call."""

    def __init__(self, epoch, epochs):
        super().__init__()
        self._epoch = epoch
        self._epochs = epochs

    def on_train_begin(self, logs=None):
        self._epochs.assign(max(int(self.params.get("epochs") or 1), 1))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch.assign(epoch)
