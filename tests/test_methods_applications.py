"""The methods of mdistiller and torchdistill find their default taps on keras.applications
backbones (MobileNetV2 at two widths, 64x64 so that the deepest map has the 2x2 = k + 3 singular
vectors KDSVD reads, random weights) and train one step together: the
taps each declares, connectors where widths differ, a finite term each, and a frozen teacher."""

import numpy as np
import pytest

import kdkeras
from kdkeras import methods as methods_lib

#: every feature and logit method of the two libraries that trains from one view of a batch,
#: with a teacher of other widths (MLKD reads a second view: tests/test_methods_multilevel.py)
MIX = "reviewkd+ofd+kdsvd+dist+srd+pad_l2+ickd+affinity+kta+nkd+ctkd+sskd+uskd"
#: the taps each method declares by default on this pair, (teacher, student)
WANT = {
    "reviewkd": (("block_2_add", "block_5_add", "block_12_add", "Conv_1_bn", "global_average_pooling2d"),
                 ("block_2_add", "block_5_add", "block_12_add", "out_relu", "global_average_pooling2d_1")),
    "ofd": (("block_2_add", "block_5_add", "block_12_add", "Conv_1_bn"),) * 2,
    "srd": (("global_average_pooling2d",), ("global_average_pooling2d_1",)),
    "pad_l2": (("global_average_pooling2d",), ("global_average_pooling2d_1",)),
    "ickd": (("out_relu",), ("out_relu",)),
    "affinity": (("out_relu",), ("out_relu",)),
    "kta": (("out_relu",), ("out_relu",)),
    "uskd": ((), ("block_12_add",)),
}
#: KDSVD's pairs whose widths differ (block_2_add: 16 against 8 channels; block_12_add: 48 against 32)
KDSVD_CONNECTED = 2


@pytest.fixture(scope="module")
def pair():
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    build = lambda alpha: keras.applications.MobileNetV2(  # noqa: E731
        input_shape=(64, 64, 3), alpha=alpha, weights=None, classes=10, classifier_activation=None)
    teacher, student = build(0.5), build(0.35)
    teacher.trainable = False
    return teacher, student


def test_the_new_methods_find_their_taps_on_applications_and_train_one_step(pair):
    teacher, student = pair
    methods = methods_lib.from_spec(MIX)
    distiller = kdkeras.Distiller(teacher, student, methods)
    taps = {m.name: distiller.plan.entry(m) for m in methods}
    for name, (t, s) in WANT.items():
        assert (tuple(taps[name].teacher), tuple(taps[name].student)) == (t, s), name
    kdsvd = next(m for m in methods if m.name == "kdsvd")
    assert len(kdsvd.connected) == len(kdsvd.connectors) == KDSVD_CONNECTED
    before = [w.copy() for w in teacher.get_weights()]
    distiller.compile(optimizer="sgd")
    rng = np.random.default_rng(0)
    logs = distiller.train_on_batch(rng.random((8, 64, 64, 3), dtype=np.float32), np.arange(8) % 10,
                                    return_dict=True)
    for name in [m.name for m in methods] + ["loss", "student_loss"]:
        assert np.isfinite(logs[name]) and logs[name] >= 0, (name, logs[name])
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
