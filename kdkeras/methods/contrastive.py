"""Contrastive representation distillation (CRD, Tian et al. 2020).

The student's and the teacher's penultimate features are embedded to unit
vectors; two memory banks (one per network) keep a momentum average of every
training sample's embedding. Each sample's embedding must pick its own slot in
the other network's bank out of K negatives under an NCE loss, in both
directions.

The reference gathers `B x (K + 1) x D` bank rows per bank per step. Here the
negatives are drawn on device and, in the default `mode="shared"`, one set of K
slots serves the whole batch: one `K x D` gather and one `(B x D) @ (D x K)`
matmul per direction, with each sample's own slot (and, for
`negatives="other_classes"`, its class) masked out. `mode="exact"` draws K
negatives per sample like the reference; when the bank is small (CIFAR sizes)
it scores every slot with one `(B x D) @ (D x N)` matmul and picks each
sample's K scores, rather than gather `B x K x D` rows. The banks, the draws
of negatives and the scoring of slots are in `memory_bank.py`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdkeras import tap_detection
from kdkeras.keys import IMAGE, INDEX
from kdkeras.methods.base import (
    Method,
    StepContext,
    as_float32,
    is_training,
    sparse_labels,
)
from kdkeras.methods.memory_bank import BANK_INITS, ContrastMemory, bank_table, draw_negatives, score_slots
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Float

# The reference's epsilon in the NCE posterior `P / (P + K / N + eps)`.
_NCE_EPS = 1e-7
# Exact mode scores all N slots when N * this <= K * D (CIFAR sizes), and
# gathers the B x K x D negative rows otherwise (ImageNet sizes).
_SCORE_ALL_FACTOR = 4

NEGATIVES = ("other_classes", "uniform")
MODES = ("shared", "exact")


def _log_mean_exp_replicas(x):
    """`log(mean over replicas of exp(x))` for a scalar `x` (x on one device)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    every = ctx.all_gather(tf.reshape(x, (1,)), axis=0)
    return tf.reduce_logsumexp(every) - math.log(ctx.num_replicas_in_sync)


def _score_all_slots(num_slots: float, num_negatives: int, feat_dim: int) -> bool:
    """Per-sample negatives: score every slot (a B x N matmul, the bank read
    once) rather than gather B x K x D rows, when the bank is small enough."""
    return num_slots * _SCORE_ALL_FACTOR <= num_negatives * feat_dim


@register_method("crd")
class CRD(Method):
    """Contrastive representation distillation with memory banks (Tian 2020).

    Linear heads embed the tapped penultimate features of both networks to
    `feat_dim`, L2-normalised (`v_s`, `v_t`). For the student anchor the
    positive is the sample's slot in the teacher bank, the noise K slots drawn
    from it; with `P = exp(v . key / T) / Z`, `c = K / N`, the NCE loss is
    `-log(P_pos / (P_pos + c)) - sum_k log(c / (P_k + c))`, averaged over the
    batch; the teacher anchor does the same on the student bank and the two
    are summed (logged as `<name>_student` and `<name>_teacher`). Z is
    `mean(exp(scores / T)) * N` over the first training batch, then fixed.
    After the loss each sample's slot in each bank moves towards its new
    embedding with momentum `momentum` and is renormalised.

    Negatives are drawn on device each step, never the sample's own slot,
    from a stateless generator keyed by a seed and a draw count kept with the
    banks (so a resumed run draws what the uninterrupted one would have):
    `negatives="other_classes"` (the reference) also never draws a slot whose
    known label is the sample's class. Labels are learnt as samples are seen
    (a label bank written from `y` each training step), or given up front with
    `labels=`; a slot not seen yet still holds its random initial vector, which
    carries no class, and may be drawn. In `mode="shared"` one set of K slots
    serves the whole batch and excluded slots are masked per sample; in
    `mode="exact"` each sample draws its own K, excluded draws are redrawn
    (the few left after four redraws are masked). Masked negatives are made up
    for by scaling the kept ones' sum to K terms. Draws are with replacement.

    `bank_init="random"` (the reference) starts the banks at random vectors,
    so in the first epoch each sample's positive is a random vector and after
    it still half of one (momentum 0.5): noise targets that a long run
    outgrows and a short one does not. `bank_init="empty"` starts them at
    zero: a sample whose slot is still empty takes the live pair `v_s . v_t`
    as its positive (as at evaluation), its first embedding fills the slot
    as it is, and empty slots are never negatives.

    Args:
        feat_dim: embedding size (128 in the paper).
        num_negatives: K, the negatives per sample (16384 in the paper).
        temperature: T of the scores (0.07).
        momentum: bank momentum (0.5).
        negatives: `"other_classes"` or `"uniform"` (all slots but the
            sample's own).
        bank_init: `"random"` (the reference) or `"empty"`, see above.
        mode: `"shared"` (one negative set per batch, one matmul) or
            `"exact"` (K per sample, as the reference; scored through a
            `B x N` matmul when `N * 4 <= K * feat_dim`, else a `B x K x D`
            gather).
        num_examples: N, the number of training samples (the bank size); the
            dataset's `index` must lie in `[0, N)`. Required before training.
        labels: optional int array of the N training labels; without it the
            label bank fills up as samples are seen (exact after one epoch).
        seed: seed of the negatives' draws (default: one drawn from NumPy's
            global generator when the banks are built).
        weight, teacher_layers, student_layers, name: see `Method`. The default
            taps are each network's embedding (the layer feeding its logits).

    Evaluation (`training=False`) updates nothing; held-out samples have no
    slot, so their positive is the live pair `v_s . v_t`.
    """

    uses_teacher_logits = False
    default_weight = 0.8
    search_space = {"weight": Float(0.02, 3.2, log=True), "temperature": Float(0.03, 0.3, log=True)}
    requires_index = True
    log_keys = ("student", "teacher")

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negatives: str = "other_classes",
        mode: str = "shared",
        bank_init: str = "random",
        num_examples: int | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if feat_dim < 1 or num_negatives < 1:
            raise ValueError(
                f"CRD feat_dim and num_negatives must be >= 1, got {feat_dim!r}, {num_negatives!r}."
            )
        if temperature <= 0:
            raise ValueError(f"CRD temperature must be > 0, got {temperature!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"CRD momentum must be in [0, 1), got {momentum!r}.")
        if negatives not in NEGATIVES:
            raise ValueError(f"CRD negatives must be one of {NEGATIVES}, got {negatives!r}.")
        if mode not in MODES:
            raise ValueError(f"CRD mode must be one of {MODES}, got {mode!r}.")
        if bank_init not in BANK_INITS:
            raise ValueError(f"CRD bank_init must be one of {BANK_INITS}, got {bank_init!r}.")
        self.bank_init = bank_init
        self.feat_dim = int(feat_dim)
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.negatives = negatives
        self.mode = mode
        self.seed = None if seed is None else int(seed)
        if num_examples is not None and (isinstance(num_examples, bool) or int(num_examples) != num_examples
                                         or num_examples < 1):
            raise ValueError(f"CRD num_examples must be the size of the training split, an int >= 1; "
                             f"got {num_examples!r}.")
        self.num_examples = None if num_examples is None else int(num_examples)
        self._initial_labels = None if labels is None else np.asarray(labels, "int32").reshape(-1)
        if self._initial_labels is not None:
            if self.num_examples is None:
                self.num_examples = len(self._initial_labels)
            elif len(self._initial_labels) != self.num_examples:
                raise ValueError(
                    f"CRD got {len(self._initial_labels)} labels for num_examples="
                    f"{self.num_examples}; give one label per training sample."
                )
        self.embed_student = None
        self.embed_teacher = None
        self.memory = None

    # -- taps and parts --------------------------------------------------------------
    def default_taps(self, model: keras.Model, role: str) -> list[str]:
        return [embedding_layer_name(model)]

    def build_parts(self, teacher_shapes, student_shapes) -> None:
        if self.num_examples is None:
            raise ValueError(
                "CRD needs num_examples (the number of training samples) to size "
                "its memory banks: pass CRD(num_examples=..., ...), e.g. "
                "kdkeras.data.info(name).splits[info.train_split]. The dataset's index "
                "must lie in [0, num_examples)."
            )
        teacher_layers, student_layers = self.tap_names()
        if len(teacher_layers) != 1 or len(student_layers) != 1:
            raise ValueError(
                "CRD taps exactly one layer per network (the penultimate features); "
                f"got teacher_layers={teacher_layers}, student_layers={student_layers}."
            )
        dims = {}
        for role, shapes, layer in (
            ("student", student_shapes, student_layers[0]),
            ("teacher", teacher_shapes, teacher_layers[0]),
        ):
            shape = shapes[layer][1:]
            if any(d is None for d in shape):
                raise ValueError(
                    f"CRD needs a static shape for the {role} tap {layer!r}, got {shapes[layer]}."
                )
            dims[role] = int(np.prod(shape))
        self.embed_student = keras.layers.Dense(self.feat_dim, dtype="float32", name="embed_student")
        self.embed_student.build((None, dims["student"]))
        self.embed_teacher = keras.layers.Dense(self.feat_dim, dtype="float32", name="embed_teacher")
        self.embed_teacher.build((None, dims["teacher"]))
        self.memory = ContrastMemory(
            self.num_examples, self.feat_dim, self.momentum, seed=self.seed, init=self.bank_init,
            name="memory"
        )
        self.memory.build()
        if self._initial_labels is not None:
            self.memory.labels.assign(self._initial_labels)

    @property
    def bank_bytes(self) -> int:
        """Bytes of the memory banks (two float32 `N x feat_dim` and N labels)."""
        if self.num_examples is None:
            raise ValueError("CRD bank size is unknown until num_examples is given.")
        return self.num_examples * (2 * self.feat_dim * 4 + 4)

    # -- pieces (public so they can be checked on fixed inputs) ---------------------
    def embed(self, features, head):
        """Flatten, project with `head`, L2-normalise, in float32."""
        f = as_float32(features)
        f = tf.reshape(f, (-1, int(np.prod(f.shape[1:]))))
        return tf.math.l2_normalize(head(f), axis=-1)

    def sample_negatives(self, y, index=None, labels=None, training: bool = True):
        """Draw negative slots on device.

        Returns `(neg_index, valid)`: `neg_index` is int32 `(K,)` in shared mode
        or `(B, K)` in exact mode; `valid` is a float32 `(B, K)` mask of the
        negatives each sample keeps, or None when all are kept. `index` (B,) is
        each sample's own slot (None: no slot, at evaluation); `labels` is the
        label bank (default: this method's); `training=False` draws without
        advancing the banks' draw count.
        """
        by_class = self.negatives == "other_classes"
        if by_class and labels is None:
            labels = self.memory.labels
        key = self.memory.next_draw_key(advance=training)
        return draw_negatives(key, sparse_labels(y), index, labels if by_class else None,
                              self.num_examples, self.num_negatives, per_sample=self.mode == "exact")

    def nce_loss(self, v_s, v_t, bank_s, bank_t, index, neg_index, valid=None, log_z=None):
        """Both NCE directions on unit embeddings `v_s`, `v_t` (B, D).

        `bank_s`/`bank_t`: the banks (`N x D` arrays or variables); `index`
        (B,): the positive slots, or None to take the live pair as positive;
        `neg_index`: `(K,)` shared or `(B, K)` per-sample negative slots;
        `valid`: optional `(B, K)` 0/1 mask of kept negatives; `log_z`: the
        logs of the two normalisers `(Z_student_anchor, Z_teacher_anchor)`,
        None or NaN entries meaning "estimate from these scores" (the first
        batch: `Z = mean(exp(scores / T)) * N`). With `bank_init="empty"` a
        zero row is an empty slot: a positive slot that is empty gives way to
        the live pair and an empty negative is masked out.

        Returns `({"student": loss, "teacher": loss}, log_z_used)`.
        """
        v_s = as_float32(v_s)
        v_t = as_float32(v_t)
        n = float(self.num_examples if self.num_examples is not None else bank_table(bank_s).shape[0])
        k = neg_index.shape[-1]
        neg_index = tf.cast(neg_index, "int32")
        log_c = math.log(k / n)
        log_c_eps = math.log(k / n + _NCE_EPS)
        if valid is not None:
            valid = as_float32(valid)
        if log_z is None:
            log_z = tf.constant([np.nan, np.nan])
        log_z = as_float32(log_z)

        score_all = neg_index.shape.rank == 2 and _score_all_slots(n, k, v_s.shape[-1])

        empty_slots = self.bank_init == "empty"

        def direction(anchor, partner, bank, log_z_given):
            pos, neg, neg_filled = score_slots(anchor, partner, bank, index, neg_index, score_all, empty_slots)
            valid_here = valid
            if neg_filled is not None:
                valid_here = neg_filled if valid is None else valid * neg_filled
            pos = pos / self.temperature  # (B,)
            neg = neg / self.temperature
            # Z = mean(exp(scores / T)) * N over the positive and kept negatives.
            all_scores = tf.concat([pos[:, None], neg], axis=1)
            if valid_here is None:
                log_mean = tf.reduce_logsumexp(all_scores) - math.log(
                    float(k + 1)
                ) - tf.math.log(tf.cast(tf.shape(pos)[0], "float32"))
            else:
                keep = tf.concat([tf.ones_like(pos[:, None]), valid_here], axis=1)
                masked = tf.where(keep > 0, all_scores, tf.fill(tf.shape(all_scores), -np.inf))
                log_mean = tf.reduce_logsumexp(masked) - tf.math.log(tf.reduce_sum(keep))
            log_z_est = tf.stop_gradient(_log_mean_exp_replicas(log_mean) + math.log(n))
            log_z = tf.where(tf.math.is_nan(log_z_given), log_z_est, log_z_given)
            log_p_pos = pos - log_z
            log_p_neg = neg - log_z
            # log(P / (P + c + eps)) and log(c / (P + c + eps)), in log space.
            log_d1 = log_p_pos - (log_c_eps + tf.nn.softplus(log_p_pos - log_c_eps))
            log_d0 = log_c - (log_c_eps + tf.nn.softplus(log_p_neg - log_c_eps))
            if valid_here is None:
                neg_term = tf.reduce_sum(log_d0, axis=1)
            else:
                kept = tf.reduce_sum(valid_here, axis=1)
                neg_term = tf.reduce_sum(valid_here * log_d0, axis=1) * (k / tf.maximum(kept, 1.0))
            return -tf.reduce_mean(log_d1 + neg_term), log_z

        loss_s, log_z_s = direction(v_s, v_t, bank_t, log_z[0])
        loss_t, log_z_t = direction(v_t, v_s, bank_s, log_z[1])
        return {"student": loss_s, "teacher": loss_t}, tf.stack([log_z_s, log_z_t])

    def _checked_index(self, index):
        """The batch's dataset indices as int32, asserted inside [0, num_examples)."""
        index = tf.reshape(index, (-1,))
        accepted = (f"CRD's memory banks have num_examples={self.num_examples} slots: each dataset index "
                    f"must lie in [0, {self.num_examples}). Pass num_examples=the size of the training "
                    "split (kdkeras.data.load(..., with_index=True) numbers its examples 0..N-1).")
        checks = [
            tf.debugging.assert_less(tf.cast(index, "int64"), tf.constant(self.num_examples, "int64"),
                                     message=f"A dataset index is >= num_examples. {accepted}", summarize=4),
            tf.debugging.assert_non_negative(index, message=f"A dataset index is negative. {accepted}",
                                             summarize=4),
        ]
        with tf.control_dependencies([c for c in checks if c is not None]):
            return tf.identity(tf.cast(index, "int32"))

    # -- the term ------------------------------------------------------------------------
    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        if self.memory is None:
            raise ValueError("CRD is not built: use it inside a kdkeras.Distiller.")
        training = is_training(context)
        index = None if context is None else context.index
        (teacher_layer,), (student_layer,) = self.tap_names()
        v_s = self.embed(student[student_layer], self.embed_student)
        v_t = self.embed(teacher[teacher_layer], self.embed_teacher)
        y = sparse_labels(y)
        memory = self.memory
        pos_index = None
        if training:
            if index is None:
                raise ValueError(
                    "CRD needs each sample's dataset index in training: feed x as "
                    f"{{{IMAGE!r}: images, {INDEX!r}: indices}} "
                    "(kdkeras.data.load(..., with_index=True))."
                )
            pos_index = self._checked_index(index)
            # Labels first, so this batch's own classes are already excluded.
            memory.write_labels(pos_index, y)
        neg_index, valid = self.sample_negatives(y, pos_index, training=training)
        losses, log_z = self.nce_loss(
            v_s, v_t, memory.bank_student, memory.bank_teacher, pos_index, neg_index,
            valid, log_z=memory.log_normalizers,
        )
        if training:
            memory.log_normalizers.assign(log_z)  # changes only at the first batch
            memory.update(pos_index, v_s, v_t)
        return losses

    def get_config(self):
        return {
            **super().get_config(),
            "feat_dim": self.feat_dim,
            "num_negatives": self.num_negatives,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "negatives": self.negatives,
            "mode": self.mode,
            "bank_init": self.bank_init,
            "num_examples": self.num_examples,
            "seed": self.seed,
        }


def embedding_layer_name(model: keras.Model) -> str:
    """Name of the layer whose output feeds the logits Dense of `model` (CRD's
    default tap; `kdkeras.tap_detection.embedding_layer`)."""
    return tap_detection.embedding_layer(model)
