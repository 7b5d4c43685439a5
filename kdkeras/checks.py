"""What a `Distiller` refuses, with what is accepted: models that cannot be
distilled together, labels the compiled loss cannot read, a batch without the
dataset index a method needs."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdkeras.keys import IMAGE, INDEX


def check_models(teacher, student, methods: Sequence, teacher_cache=None) -> None:
    """Refuse a student or teacher that is not a built Keras model returning logits
    (not a softmax), a teacher that is the student, networks of different inputs
    or classes, and teacher-reading methods with neither a teacher nor a cache."""
    if not isinstance(student, keras.Model):
        raise TypeError(f"student must be a keras.Model, got {type(student).__name__}.")
    if not student.built:
        raise ValueError(f"Student {student.name!r} must be built (call it once or give it an Input).")
    needs_teacher = [m.name for m in methods if m.requires_teacher]
    if teacher is None:
        if needs_teacher and teacher_cache is None:
            raise ValueError(
                f"Methods {needs_teacher} need a teacher, but teacher=None. Pass a "
                "teacher model or use teacher-free methods (LSR, VirtualTeacher)."
            )
        return
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model or None, got {type(teacher).__name__}.")
    if teacher is student:
        raise ValueError(
            f"The teacher and the student are the same model object ({student.name!r}): training the "
            "student would move the frozen teacher too. For self-distillation give a copy, e.g. "
            "keras.models.clone_model(model) with model.get_weights().")
    for role, model in (("teacher", teacher), ("student", student)):
        if ends_in_softmax(model):
            raise ValueError(
                f"The {role} {model.name!r} ends in a softmax (layer {model.layers[-1].name!r}): "
                "kdkeras methods read logits, and KD on probabilities trains a wrong student. "
                "Rebuild it without the final softmax (e.g. Dense(classes) with no activation, or "
                "keras.Model(model.input, model.layers[-1].input) when that layer is a Softmax).")
    if not teacher.built:
        raise ValueError(f"Teacher {teacher.name!r} must be built.")
    t_in, s_in = input_shape(teacher), input_shape(student)
    if t_in is not None and s_in is not None and t_in != s_in:
        raise ValueError(
            f"Teacher input shape {t_in} differs from student input shape {s_in}; "
            "both networks see the same batch, so build them for the same input "
            "(resize inside the model if one needs another size)."
        )
    t_out, s_out = output_dim(teacher), output_dim(student)
    if t_out is not None and s_out is not None and t_out != s_out:
        raise ValueError(
            f"Teacher has {t_out} output classes but the student has {s_out}; "
            "they must predict the same classes."
        )


def ends_in_softmax(model) -> bool:
    """True when the model's last layer is a softmax (activation or layer)."""
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


def input_shape(model) -> tuple | None:
    """The model's input shape without the batch dim, or None when it has none yet."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:])


def output_dim(model) -> int | None:
    """The size of the model's last output axis (its classes), or None."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        shape = shape[0]
    return shape[-1]


def checked_labels(y, loss, num_classes: int):
    """`y` when it holds class ids in [0, num_classes) that `loss` can read; float
    labels (which train to accuracy 0), one-hot labels under the sparse default
    loss, and ids out of range fail with what is accepted."""
    if y is None:
        return y
    y = tf.convert_to_tensor(y)
    sparse = isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
    one_hot = len(y.shape) >= 2 and y.shape[-1] not in (None, 1)
    if one_hot and sparse:
        raise ValueError(
            f"Labels of shape {tuple(y.shape)} look one-hot, but the Distiller is compiled with the "
            "sparse cross-entropy (the default), which takes class ids of shape (batch,). Give "
            "integer labels (argmax of the one-hot rows) or compile(loss="
            "keras.losses.CategoricalCrossentropy(from_logits=True)).")
    if one_hot:
        return y
    if not y.dtype.is_integer:
        raise ValueError(
            f"Labels must be integer class ids in [0, {num_classes}), got dtype {y.dtype.name}: "
            "float labels train to accuracy 0. Cast them, e.g. dataset.map(lambda x, y: "
            "(x, tf.cast(y, tf.int32))).")
    check = tf.debugging.assert_less(
        tf.cast(y, "int64"), tf.constant(num_classes, "int64"),
        message=f"Labels must be class ids in [0, {num_classes}) (the student's outputs); "
                "this batch has a label >= that. Check the data's classes against the models'.")
    check_low = tf.debugging.assert_non_negative(
        y, message=f"Labels must be class ids in [0, {num_classes}); this batch has a negative label.")
    with tf.control_dependencies([check, check_low]):
        return tf.identity(y)


def check_index(index, names: Sequence[str]) -> None:
    """Refuse a batch without dataset indices when methods `names` need them."""
    if index is None and names:
        raise ValueError(
            f"Methods {list(names)} need each sample's dataset index. Feed x as "
            f"{{{IMAGE!r}: images, {INDEX!r}: indices}}, e.g. "
            "kdkeras.data.load(..., with_index=True)."
        )
