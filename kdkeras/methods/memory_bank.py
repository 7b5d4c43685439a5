"""CRD's memory: two banks of unit vectors (one per network) with a label per
slot, a draw count for the negatives, and the two NCE normalisers; how
negatives are drawn from them and how an anchor scores their slots.

Everything here is state the Distiller saves and never trains, or a pure
function of it; the NCE loss that reads it is `CRD` in `contrastive.py`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from kdkeras.methods.base import as_float32

BANK_INITS = ("random", "empty")
# Redraws of rejected per-sample negatives before the rest are masked out.
_RESAMPLE_ROUNDS = 4
_UNSEEN = -1
# The stream of a draw's key that evaluation draws from (training uses 0..rounds).
_EVAL_STREAM = 1 << 20


def gather_replicas(*tensors):
    """Concatenate each tensor over the replicas (identity on one device), so
    every replica applies the same bank update to its copy of the bank."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensors
    return tuple(ctx.all_gather(t, axis=0) for t in tensors)


def bank_table(bank):
    """The tf.Variable behind a Keras variable (so reads are sparse gathers,
    never a copy of the whole bank), or the array itself."""
    return bank.value if isinstance(bank, keras.Variable) else bank


@keras.saving.register_keras_serializable(package="kdkeras")
class ContrastMemory(keras.layers.Layer):
    """CRD's state: two `num_examples x feat_dim` banks of unit vectors, the
    label of each slot and the two NCE normalisers, all non-trainable (saved
    with the Distiller, never trained).

    With `init="random"` the banks start uniform in `[-s, s]`,
    `s = 1 / sqrt(feat_dim / 3)` (rows of norm about 1), as in the reference;
    with `init="empty"` they start at zero, a row that no unit vector has been
    written to yet (the momentum update then writes a sample's first embedding
    as it is). `labels` holds -1 for a slot whose
    sample has not been seen yet; `log_normalizers` holds NaN until the first
    training batch sets log Z for each direction (student anchor, teacher
    anchor); Z is kept as its log so small temperatures cannot overflow it.

    Args:
        num_examples: number of slots, the size of the training split.
        feat_dim: embedding size.
        momentum: weight of the old slot in the update
            `slot <- normalise(m * slot + (1 - m) * v)`.
        init: `"random"` or `"empty"` (zero rows), see above.
        seed: seed of the negatives' draws (default: drawn from NumPy's
            global generator, which `keras.utils.set_random_seed` seeds).
    """

    def __init__(self, num_examples: int, feat_dim: int = 128, momentum: float = 0.5,
                 seed: int | None = None, init: str = "random", **kwargs):
        super().__init__(**kwargs)
        if init not in BANK_INITS:
            raise ValueError(f"ContrastMemory init must be one of {BANK_INITS}, got {init!r}.")
        self.num_examples = int(num_examples)
        self.feat_dim = int(feat_dim)
        self.momentum = float(momentum)
        self.init = init
        self.seed = int(np.random.randint(0, 2**31 - 1)) if seed is None else int(seed)

    def build(self, input_shape=None):
        stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)
        shape = (self.num_examples, self.feat_dim)

        def bank(name):  # one initializer each: a shared one would give both banks the same rows
            start = (keras.initializers.RandomUniform(-stdv, stdv) if self.init == "random"
                     else keras.initializers.Zeros())
            return self.add_weight(
                shape=shape, initializer=start,
                dtype="float32", trainable=False, autocast=False, name=name,
            )

        self.bank_student = bank("bank_student")
        self.bank_teacher = bank("bank_teacher")
        self.labels = self.add_weight(
            shape=(self.num_examples,), initializer=keras.initializers.Constant(_UNSEEN),
            dtype="int32", trainable=False, autocast=False, name="labels",
        )
        self.log_normalizers = self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant(float("nan")),
            dtype="float32", trainable=False, autocast=False, name="log_normalizers",
        )
        self.draws = self.add_weight(
            shape=(2,), initializer=lambda shape, dtype=None: tf.constant([self.seed, 0], "int32"),
            dtype="int32", trainable=False, autocast=False, name="draws",
        )
        self.built = True

    @property
    def bank_bytes(self) -> int:
        """Bytes held by the two banks and the label bank."""
        return self.num_examples * (2 * self.feat_dim * 4 + 4)

    def next_draw_key(self, advance: bool = True):
        """The stateless key `(seed, n)` of this draw. A training draw advances
        n (on every replica alike, as the banks); an evaluation draw writes
        nothing and takes a stream of its own."""
        state = self.draws.value
        key = tf.identity(state)
        if not advance:
            return tf.random.experimental.stateless_fold_in(key, _EVAL_STREAM)
        with tf.control_dependencies([key]):
            state.assign_add(tf.constant([0, 1], "int32"))
        return key

    def write_labels(self, index, y) -> None:
        index, y = gather_replicas(index, y)
        self.labels.value.scatter_update(tf.IndexedSlices(tf.cast(y, "int32"), index))

    def update(self, index, v_student, v_teacher) -> None:
        """Momentum update of the slots `index` with the (unit) embeddings,
        each renormalised to unit length; gradients never flow here."""
        index, v_student, v_teacher = gather_replicas(
            index, tf.stop_gradient(v_student), tf.stop_gradient(v_teacher)
        )
        m = self.momentum
        for bank, v in ((self.bank_student, v_student), (self.bank_teacher, v_teacher)):
            table = bank.value
            slot = m * tf.gather(table, index) + (1.0 - m) * tf.cast(v, "float32")
            table.scatter_update(tf.IndexedSlices(tf.math.l2_normalize(slot, axis=-1), index))

    def get_config(self):
        return {
            **super().get_config(),
            "num_examples": self.num_examples,
            "feat_dim": self.feat_dim,
            "momentum": self.momentum,
            "seed": self.seed,
            "init": self.init,
        }



def draw_negatives(key, y, index, labels, num_slots: int, num_negatives: int, per_sample: bool):
    """Negative slots drawn on device from the stateless key `key` (a draw of
    `ContrastMemory.next_draw_key`), with replacement.

    `y` (B,) int32 labels; `index` (B,) each sample's own slot, never a kept
    negative (None: no slot, at evaluation); `labels` the label bank, whose
    slots of the sample's class are never kept either, or None to draw from
    every class. Returns `(neg_index, valid)`: `neg_index` int32 `(K,)` shared
    by the batch, or `(B, K)` with `per_sample` (excluded draws redrawn up to
    four times); `valid` a float32 `(B, K)` mask of the negatives each sample
    keeps, or None when all are kept.
    """
    n, k = num_slots, num_negatives
    batch = tf.shape(y)[0]
    by_class = labels is not None
    labels = bank_table(labels) if by_class else None
    if index is not None:
        index = tf.cast(tf.reshape(index, (-1,)), "int32")

    def draw(shape, high, part=0):  # uniform int32 in [0, high), the part-th stream of this key
        seed = tf.random.experimental.stateless_fold_in(key, part)
        return tf.random.stateless_uniform(shape, seed, 0, high, dtype="int32")

    def excluded(neg):  # (B, K) bool, neg broadcastable to (B, K)
        bad = tf.zeros_like(neg, dtype="bool") if index is None else tf.equal(neg, index[:, None])
        if by_class:
            bad = bad | tf.equal(tf.gather(labels, neg), y[:, None])
        return bad

    if not per_sample:
        neg = draw((k,), n)
        if index is None and not by_class:
            return neg, None
        return neg, 1.0 - tf.cast(excluded(neg[None, :]), "float32")
    if not by_class:
        if index is None:
            return draw((batch, k), n), None
        # Uniform over the N - 1 other slots: skip over the sample's own.
        skip = draw((batch, k), n - 1)
        return skip + tf.cast(skip >= index[:, None], "int32"), None
    neg = draw((batch, k), n)
    for part in range(1, _RESAMPLE_ROUNDS + 1):
        neg = tf.where(excluded(neg), draw((batch, k), n, part), neg)
    return neg, 1.0 - tf.cast(excluded(neg), "float32")


def _filled(rows):
    """Whether each bank row has been written: a written row is a unit vector, an empty one zero."""
    return tf.reduce_sum(tf.square(as_float32(rows)), axis=-1) > 0.5


def score_slots(anchor, partner, bank, index, neg_index, score_all: bool, empty_slots: bool):
    """The scores `anchor . slot` of each anchor (B, D) against its positive slot
    and its negative slots in `bank`, gradients reaching the anchor only.

    `index` (B,): the positive slots, or None to take the live pair
    `anchor . partner` as the positive; `neg_index`: `(K,)` shared or `(B, K)`
    per-sample negative slots. `score_all` (per-sample negatives only) reads
    the bank once through a `(B x N)` matmul instead of gathering `B x K x D`
    rows. With `empty_slots` a zero row is an empty slot: an empty positive
    gives way to the live pair. Returns `(pos (B,), neg (B, K), neg_filled)`,
    `neg_filled` the float32 `(B, K)` mask of filled negatives (None without
    `empty_slots`).
    """
    table = bank_table(bank)
    pos_slots = None if index is None else tf.cast(index, "int32")
    if score_all:
        # Per-sample negatives from one (B x N) score matrix: the same
        # scores as a B x K x D gather, reading the bank once.
        every = tf.matmul(anchor, tf.stop_gradient(as_float32(table)), transpose_b=True)
        neg = tf.gather(every, neg_index, batch_dims=1)
        if pos_slots is not None:
            pos = tf.gather(every, pos_slots[:, None], batch_dims=1)[:, 0]
        if empty_slots:
            slot_filled = _filled(table)
            neg_filled = tf.gather(slot_filled, neg_index)
            pos_filled = None if pos_slots is None else tf.gather(slot_filled, pos_slots)
    else:
        keys = tf.stop_gradient(as_float32(tf.gather(table, neg_index)))
        if neg_index.shape.rank == 1:
            neg = tf.matmul(anchor, keys, transpose_b=True)  # (B, K)
        else:
            neg = tf.einsum("bd,bkd->bk", anchor, keys)
        if pos_slots is not None:
            pos_key = tf.stop_gradient(as_float32(tf.gather(table, pos_slots)))
            pos = tf.reduce_sum(anchor * pos_key, axis=-1)
        if empty_slots:
            neg_filled = _filled(keys)
            pos_filled = None if pos_slots is None else _filled(pos_key)
    if pos_slots is None or empty_slots:
        live = tf.reduce_sum(anchor * tf.stop_gradient(partner), axis=-1)
        pos = live if pos_slots is None else tf.where(pos_filled, pos, live)
    if not empty_slots:
        return pos, neg, None
    return pos, neg, tf.broadcast_to(tf.cast(neg_filled, "float32"), tf.shape(neg))
