"""DeiT students on keras-hub backbones (built from config, random weights):
the two heads and their averaged output, the backbone's variables reused, a
`DeiT` step in a Distiller, save/load, a float32 LiteRT export, clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras import keys, models
from kdkeras.methods import DeiT
from tests.helpers import assert_float32_litert_matches_keras, tiny_cnn, tiny_data

keras_hub = pytest.importorskip("keras_hub")  # a guard only: the test extra installs it

X = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")


def vit_backbone(**kwargs):
    return keras_hub.models.ViTBackbone(image_shape=(8, 8, 1), patch_size=4, num_layers=1, num_heads=2,
                                        hidden_dim=8, mlp_dim=16, **kwargs)


def _heads(model):
    return keras.Model(model.input, [model.get_layer(keys.CLS_HEAD).output,
                                     model.get_layer(keys.DIST_HEAD).output, model.output])


def test_vit_backbone_gets_a_distillation_token_two_heads_and_their_mean():
    student = models.deit_from_keras_hub(vit_backbone(), 3)
    z_cls, z_dist, out = (np.asarray(z) for z in _heads(student)(X))
    np.testing.assert_allclose(out, (z_cls + z_dist) / 2, rtol=1e-6, atol=1e-6)
    assert out.shape == (4, 3) and out.dtype == np.float32 and not np.allclose(z_cls, z_dist)
    # class token, distillation token, then the 2 x 2 patches
    assert student.get_layer("backbone").output.shape == (None, 6, 8)
    assert (student.get_layer("embedding").index, student.get_layer("dist_embedding").index) == (0, 1)


def test_the_backbones_variables_are_the_students():
    backbone = vit_backbone()
    student = models.deit_from_keras_hub(backbone, 3)
    ids = {id(w) for w in student.weights}
    assert all(id(w) in ids for w in backbone.weights)
    encoder = student.get_layer("backbone")
    new = {encoder.token.path, encoder.position.path, *(w.path for w in student.get_layer(keys.CLS_HEAD).weights),
           *(w.path for w in student.get_layer(keys.DIST_HEAD).weights)}
    assert len(student.weights) == len(backbone.weights) + len(new) == len(backbone.weights) + 6
    before = np.asarray(student(X))
    norm = backbone.get_layer("vit_encoder").layer_norm.gamma  # the backbone's final norm
    norm.assign(norm * 2.0)
    assert not np.allclose(before, np.asarray(student(X)))


def test_deit_backbone_keeps_its_own_distillation_token():
    backbone = keras_hub.models.DeiTBackbone(image_shape=(8, 8, 1), patch_size=4, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16)
    student = models.deit_from_keras_hub(backbone, 3)
    assert student.get_layer(backbone.name) is backbone
    assert len(student.weights) == len(backbone.weights) + 4  # the two heads only
    z_cls, z_dist, out = (np.asarray(z) for z in _heads(student)(X))
    np.testing.assert_allclose(out, (z_cls + z_dist) / 2, rtol=1e-6, atol=1e-6)
    seq = np.asarray(backbone(X))
    np.testing.assert_allclose(z_dist, seq[:, 1] @ student.get_layer(keys.DIST_HEAD).kernel.numpy()
                               + student.get_layer(keys.DIST_HEAD).bias.numpy(), rtol=1e-5, atol=1e-5)


def test_backbones_without_a_class_token_are_refused_clearly():
    with pytest.raises(ValueError, match=r"ViTBackbone has no layer owning a `class_token` weight.*use_class_token=True"):
        models.deit_from_keras_hub(vit_backbone(use_class_token=False), 3)
    with pytest.raises(ValueError, match=r"needs a keras-hub ViTBackbone .*; Functional has no layer owning a `class_token`"):
        models.deit_from_keras_hub(tiny_cnn(), 3)
    with pytest.raises(ValueError, match=r"got Dense, not a one-input, one-output functional model"):
        models.deit_from_keras_hub(keras.layers.Dense(3), 3)
    inp = keras.Input((4,))
    branch = keras.layers.Dense(4, name="a")(inp)
    two_inputs = keras.Model(inp, keras.layers.Add(name="sum")([inp, branch]))
    with pytest.raises(ValueError, match=r"layer 'sum' does not take the previous layer's output alone"):
        models.deit_from_keras_hub(two_inputs, 3)


def test_deit_trains_the_distillation_token_and_head_never_the_teacher():
    teacher, student = tiny_cnn(width=8, name="teacher"), models.deit_from_keras_hub(vit_backbone(), 3)
    method = DeiT(variant="soft")
    d = kdkeras.Distiller(teacher, student, [method], student_loss_weight=0.0)
    assert d.plan.entry(method).student == (keys.CLS_HEAD, keys.DIST_HEAD)
    x, y = tiny_data(8)
    encoder = student.get_layer("backbone")
    watched = {"token": encoder.token, "dist": student.get_layer(keys.DIST_HEAD).kernel,
               "cls": student.get_layer(keys.CLS_HEAD).kernel,
               "block": encoder.backbone.get_layer("vit_encoder").encoder_layers[0].mlp.dense_2.kernel}
    with tf.GradientTape(persistent=True) as tape:
        loss = method.compute_loss({keys.LOGITS: teacher(x, training=False)},
                                   dict(d._student_tap(x, training=True)), y)["dist"]
    grads = tape.gradient(loss, watched)
    assert all(np.abs(grads[k].numpy()).sum() > 0 for k in ("token", "dist", "block"))
    assert grads["cls"] is None or not np.any(grads["cls"].numpy())
    assert all(g is None for g in tape.gradient(loss, teacher.weights))
    before = {k: v.numpy().copy() for k, v in watched.items()}
    before_t = [w.numpy().copy() for w in teacher.weights]
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    d.train_on_batch(x, y)
    assert all(not np.array_equal(before[k], v.numpy()) for k, v in watched.items())
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before_t, teacher.weights))


def _perturbed_student():
    student = models.deit_from_keras_hub(vit_backbone(), 3, weight_decay=1e-4)
    rng = np.random.default_rng(3)
    for w in student.weights:  # away from any initialiser, so a load that re-initialises shows
        w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype("float32"))
    return student


def test_save_load_round_trip(tmp_path):
    student = _perturbed_student()
    path = tmp_path / "hub_deit.keras"
    student.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(_heads(student)(X), _heads(loaded)(X)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    encoder = loaded.get_layer("backbone")
    assert type(encoder) is models.DistillationTokenEncoder
    assert type(encoder.backbone) is keras_hub.models.ViTBackbone
    assert len(loaded.losses) == len(student.losses) == 2


def test_float32_litert_export_matches_keras(tmp_path):
    assert_float32_litert_matches_keras(_perturbed_student(), tmp_path / "hub_deit.tflite")


def test_zoo_name_builds_deit_micro_sizes_on_a_vit_backbone():
    model = models.get("hub_deit_micro", (28, 28, 1), 10, dropout=0.1)
    zoo = models.get("deit_micro", (28, 28, 1), 10)
    assert model.name == "hub_deit_micro" and isinstance(model.get_layer("dropout"), keras.layers.Dropout)
    backbone = model.get_layer("backbone").backbone
    assert (backbone.hidden_dim, backbone.num_layers, backbone.num_heads, backbone.mlp_dim) == (64, 4, 4, 128)
    assert abs(model.count_params() - zoo.count_params()) < 0.02 * zoo.count_params()
    assert np.asarray(model(np.zeros((2, 28, 28, 1), "float32"))).shape == (2, 10)
