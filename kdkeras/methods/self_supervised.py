"""SSKD (Xu et al., ECCV 2020): knowledge distillation meets self-supervision.

Both networks also see each batch rotated by 90, 180 and 270 degrees: the
rotations are the method's `batch_copies`, made in the training step and run in
the same pass as the batch (`kdkeras.batch_copies`), so the stack is `[x, rot90(x),
rot180(x), rot270(x)]` and the rotated rows come copy after copy. A projection head
on each network's embedding (Linear-ReLU-Linear at the embedding's width) gives the
cosine similarity of every rotated image to every upright one of the batch, a
`(3B, B)` matrix whose right answer in row `r * B + i` is column `i`.

The teacher's head is trained first, alone (`SSKDTeacherHead`, its init stage: the
teacher frozen, CE on those similarities); then `SSKD` reads it frozen and trains
the student and the student's head on CE, KD on the upright logits, KD on the
rotated logits and KD on the similarity rows, the last two over the rows the
teacher ranks best (`kept_rows`). Formulas: docs/methods.md.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from kdkeras import tap_detection
from kdkeras.keys import LOGITS
from kdkeras.methods.base import InitStage, Method, StepContext, as_float32, kl_div, sparse_labels
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Float

#: copies per image: rotations by 90, 180 and 270 degrees
ROTATED = 3
#: the init stage that trains the teacher's head
TEACHER_HEAD_STAGE = "sskd_teacher_head"


def rotations(images) -> list:
    """The batch rotated by 90, 180 and 270 degrees (counter-clockwise, as `np.rot90`
    on each NHWC image); square images only, so that the copies stack with the batch."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[1] is None or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"SSKD rotates each image by 90 degrees, so it needs square NHWC images; got a batch of shape "
            f"{tuple(images.shape)}. Resize or crop the images to a square (e.g. in the model's input).")
    return [tf.image.rot90(images, k) for k in range(1, ROTATED + 1)]


def copy_similarities(vectors):
    """Cosine similarity of each rotated row to each upright row of a stack's vectors
    (`(4B, D)` -> `(3B, B)`), in float32; norms floored at 1e-8 as PyTorch's."""
    v = as_float32(vectors)
    v = v / ops.maximum(ops.sqrt(ops.sum(v * v, axis=-1, keepdims=True)), 1e-8)
    batch = ops.shape(v)[0] // (ROTATED + 1)
    return ops.matmul(v[batch:], ops.transpose(v[:batch]))


def copy_sources(batch):
    """Each rotated row's upright image, `(3B,)`: row `r * B + i` comes from image `i`."""
    return ops.tile(ops.arange(batch, dtype="int32"), [ROTATED])


def kept_rows(scores, target, ratio: float):
    """Float mask `(N,)` of the rows whose target the scores rank best: every row
    ranking its target first, plus `floor(ratio * wrong)` of the `wrong` others, those
    ranking it highest (ties: the earlier row). A target's rank is the number of
    scores above it."""
    scores = as_float32(scores)
    target_score = ops.take_along_axis(scores, ops.expand_dims(ops.cast(target, "int32"), -1), axis=-1)
    rank = ops.sum(ops.cast(scores > target_score, "int32"), axis=-1)
    wrong = ops.sum(ops.cast(rank > 0, "float32"))
    keep = ops.cast(ops.shape(rank)[0], "float32") - wrong + ops.floor(wrong * ratio)
    position = tf.math.invert_permutation(tf.argsort(rank, stable=True))
    return ops.cast(ops.cast(position, "float32") < keep, "float32")


def masked_kd(z_t, z_s, temperature: float, mask):
    """`T^2 * sum_i mask_i KL(softmax(z_t_i / T) || softmax(z_s_i / T)) / sum_i mask_i`
    (0 when no row is kept)."""
    log_pt = ops.log_softmax(as_float32(z_t) / temperature, axis=-1)
    log_ps = ops.log_softmax(as_float32(z_s) / temperature, axis=-1)
    kept = ops.sum(mask)
    return ops.sum(mask * kl_div(log_pt, log_ps)) / ops.maximum(kept, 1.0) * (temperature * temperature)


def _torch_linear(dim: int, name: str, activation=None) -> keras.layers.Dense:
    """A float32 Dense(dim) on a dim-wide input, initialised as PyTorch's `nn.Linear`:
    kernel and bias uniform in +-1/sqrt(dim)."""
    bound = 1.0 / math.sqrt(dim)
    return keras.layers.Dense(
        dim, activation=activation, name=name, dtype="float32",
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound))


@keras.saving.register_keras_serializable(package="kdkeras")
class ProjectionHead(keras.layers.Layer):
    """SSKD's self-supervision head: Dense(d) -> ReLU -> Dense(d) on a flattened
    feature of width d, in float32, initialised as PyTorch's `nn.Linear`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = self.out = None

    def build(self, input_shape):
        dim = int(math.prod(input_shape[1:]))
        self.hidden = _torch_linear(dim, "hidden", activation="relu")
        self.out = _torch_linear(dim, "out")
        self.hidden.build((None, dim))
        self.out.build((None, dim))
        self.built = True

    def call(self, x):
        x = as_float32(x)
        return self.out(self.hidden(ops.reshape(x, (-1, int(math.prod(x.shape[1:]))))))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(math.prod(input_shape[1:])))


class _Rotating(Method):
    """A method whose networks also run on the batch's three rotations, reading each
    network's embedding (one tap each)."""

    def batch_copies(self, images) -> list:
        return rotations(images)

    def default_taps(self, model, role):
        return [tap_detection.embedding_layer(model)]

    def check_taps(self, teacher_shapes, student_shapes) -> None:
        teacher, student = self.tap_names()
        if len(teacher) != 1 or len(student) != 1:
            raise ValueError(f"{type(self).__name__} taps exactly one layer per network (the embedding); got "
                             f"teacher_layers={teacher}, student_layers={student}.")
        for role, shapes, layer in (("teacher", teacher_shapes, teacher[0]), ("student", student_shapes, student[0])):
            if any(d is None for d in shapes[layer][1:]):
                raise ValueError(f"{type(self).__name__} needs a static shape for the {role} tap {layer!r}, "
                                 f"got {shapes[layer]}.")


@register_method()
class SSKDTeacherHead(_Rotating):
    """SSKD's init-stage term: the teacher's head learns which upright image each
    rotated one comes from, `mean_rows CE(sim_t[row], source(row))` on the raw cosine
    similarities (`copy_similarities`), weight 1. `SSKD` makes one (named as itself)
    holding the very head it then reads frozen; it reads the teacher alone."""

    uses_teacher_logits = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = None

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_taps(teacher_shapes, student_shapes)
        layer = self.tap_names()[0][0]
        self.head = ProjectionHead(name="teacher_head")
        self.head.build(tuple(teacher_shapes[layer]))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        sim = copy_similarities(self.head(teacher[self.tap_names()[0][0]]))
        ce = keras.losses.sparse_categorical_crossentropy(copy_sources(ops.shape(sim)[1]), sim, from_logits=True)
        return ops.mean(ce)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"SSKD {name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _ratio(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"SSKD {name} must be in [0, 1] (the share of the teacher's wrong rows kept), "
                         f"got {value!r}.")
    return float(value)


@register_method("sskd")
class SSKD(_Rotating):
    """Xu et al. (ECCV 2020), self-supervision knowledge distillation.

    On the stack of the batch and its rotations (rows `0..B-1` upright, then
    `3B` rotated ones carrying their image's label), with `KD_T(a, b) =
    T^2 KL(softmax(a / T) || softmax(b / T))` averaged over the rows used:

    * `kd = KD_T(z_t, z_s)` over the upright rows;
    * `tf = KD_T_tf(z_t, z_s)` over the rotated rows `kept_rows` keeps by the
      rank of the label in `z_t` (`tf_ratio` of the wrongly ranked ones);
    * `ss = KD_T_ss(sim_t, sim_s)` over the rows of the `(3B, B)` similarity
      matrices (`copy_similarities` of each network's head) kept by the rank of
      the right column in `sim_t` (`ss_ratio` of the wrong ones).

    The term is `kd_weight * kd + tf_weight * tf + ss_weight * ss`, logged as
    `{"kd", "tf", "ss"}`; the CE on the upright rows is the Distiller's (0.1).
    The teacher's head is trained in the init stage `sskd_teacher_head`
    (`teacher_head_term`) and read frozen here; the student's head trains
    with the student.

    Which rows a ratio keeps (label 0 ranked 1st, 3rd, 3rd, 2nd: of the 3 wrong rows
    half, rounded down, is kept, the best ranked first):

    >>> import numpy as np
    >>> z = np.array([[3, 1, 0], [0, 1, 3], [0, 3, 1], [1, 0, 3]], "float32")
    >>> [float(v) for v in kept_rows(z, np.zeros(4, "int32"), 0.5)]
    [1.0, 0.0, 0.0, 1.0]
    """

    default_weight = 1.0
    #: the reference's --ce-weight
    default_student_loss_weight = 0.1
    log_keys = ("kd", "tf", "ss")
    search_space = {"temperature": Float(1.0, 10.0, log=True), "ss_weight": Float(2.5, 40.0, log=True),
                    "ss_temperature": Float(0.1, 2.0, log=True)}

    def __init__(self, temperature: float = 4.0, tf_temperature: float | None = None,
                 ss_temperature: float = 0.5, kd_weight: float = 0.9, tf_weight: float = 2.7,
                 ss_weight: float = 10.0, tf_ratio: float = 1.0, ss_ratio: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _positive("temperature", temperature)
        self.tf_temperature = _positive("tf_temperature", self.temperature if tf_temperature is None
                                        else tf_temperature)
        self.ss_temperature = _positive("ss_temperature", ss_temperature)
        for name, value in (("kd_weight", kd_weight), ("tf_weight", tf_weight), ("ss_weight", ss_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or not math.isfinite(value):
                raise ValueError(f"SSKD {name} must be a finite number >= 0, got {value!r}.")
        self.kd_weight, self.tf_weight, self.ss_weight = float(kd_weight), float(tf_weight), float(ss_weight)
        self.tf_ratio, self.ss_ratio = _ratio("tf_ratio", tf_ratio), _ratio("ss_ratio", ss_ratio)
        self.teacher_head = self.student_head = None
        # Not tracked as a sublayer: SSKD holds the teacher's head once (`teacher_head`),
        # and making SSKD trainable must not train the init stage's term.
        term = SSKDTeacherHead(teacher_layers=self.teacher_layers, student_layers=self.student_layers,
                               name=self.name)
        object.__setattr__(self, "_teacher_head_term", term)

    @property
    def teacher_head_term(self) -> SSKDTeacherHead:
        """The init stage's term, holding the teacher's head SSKD reads."""
        return self._teacher_head_term

    def init_stages(self) -> list[InitStage]:
        """The teacher's head alone (the student frozen, no CE), as the reference
        trains it before the student."""
        return [InitStage(TEACHER_HEAD_STAGE, (self._teacher_head_term,), train_student=False,
                          student_loss_weight=0.0)]

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_taps(teacher_shapes, student_shapes)
        term = self._teacher_head_term
        teacher_layers, student_layers = self.tap_names()
        if not term._parts_built:  # no init stage ran: the head SSKD reads is built for SSKD's taps
            term.teacher_layers, term.student_layers = teacher_layers, student_layers
            term.build_from_taps(teacher_shapes, student_shapes)
        elif term.tap_names()[0] != teacher_layers:
            raise ValueError(f"SSKD {self.name!r} reads teacher tap {teacher_layers}, but its teacher head was "
                             f"trained on {term.tap_names()[0]}: give SSKD and its init stage the same taps.")
        self.teacher_head = term.head
        self.teacher_head.trainable = False  # read, never trained, by SSKD's own term
        self.student_head = ProjectionHead(name="student_head")
        self.student_head.build(tuple(student_shapes[student_layers[0]]))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        (t_layer,), (s_layer,) = self.tap_names()
        z_t, z_s = as_float32(teacher[LOGITS]), as_float32(student[LOGITS])
        batch = ops.shape(z_t)[0] // (ROTATED + 1)
        upright = ops.ones((batch,), "float32")
        kd = masked_kd(z_t[:batch], z_s[:batch], self.temperature, upright)
        labels = ops.tile(sparse_labels(y), [ROTATED])
        tf_kept = kept_rows(z_t[batch:], labels, self.tf_ratio)
        tf_term = masked_kd(z_t[batch:], z_s[batch:], self.tf_temperature, tf_kept)
        sim_t = ops.stop_gradient(copy_similarities(self.teacher_head(teacher[t_layer])))
        sim_s = copy_similarities(self.student_head(student[s_layer]))
        ss_kept = kept_rows(sim_t, copy_sources(batch), self.ss_ratio)
        ss = masked_kd(sim_t, sim_s, self.ss_temperature, ss_kept)
        return {"kd": self.kd_weight * kd, "tf": self.tf_weight * tf_term, "ss": self.ss_weight * ss}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "tf_temperature": self.tf_temperature,
                "ss_temperature": self.ss_temperature, "kd_weight": self.kd_weight, "tf_weight": self.tf_weight,
                "ss_weight": self.ss_weight, "tf_ratio": self.tf_ratio, "ss_ratio": self.ss_ratio}
