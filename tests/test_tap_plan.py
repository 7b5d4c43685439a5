"""The tap plan: one pure decision of which layers each method reads from each
network, its term name and its parts' shapes, shared by the Distiller and the
teacher-cache builder."""

from dataclasses import dataclass, field

import keras
import numpy as np
import pytest

import kdkeras
from kdkeras import taps as taps_lib
from kdkeras.cache import CacheError, teacher_taps
from kdkeras.methods import AT, CRD, FSP, KD, NST, RKD, FitNet, method_settings
from kdkeras.tap_plan import plan_taps, unique_terms
from tests.helpers import tiny_cnn, tiny_data
from tests.test_methods_hints import deep_cnn


def _configs(methods):
    return [(m.name, m.get_config()) for m in methods]


def test_the_plan_is_pure_and_a_distiller_changes_no_method():
    teacher, student = deep_cnn(), tiny_cnn(width=4, name="student")
    methods = [KD(), KD(temperature=2.0), AT(), FitNet(), RKD(), AT(mode="gradient"),
               NST(teacher_layers=["relu2", "relu3"], student_layers=["relu2"])]
    before = _configs(methods)
    first, second = plan_taps(methods, teacher, student), plan_taps(methods, teacher, student)
    assert first == second
    assert _configs(methods) == before
    distiller = kdkeras.Distiller(teacher, student, methods)
    assert _configs(methods) == before  # taps still None where they were, names as given
    assert distiller.plan == first
    assert [m.teacher_layers for m in methods[:6]] == [None] * 6
    # an explicit list of another length is paired (deepest first) in the plan only
    nst = first.entry(methods[6])
    assert (nst.teacher, nst.student) == (("relu3",), ("relu2",))
    assert methods[6].teacher_layers == ["relu2", "relu3"]


def test_two_methods_of_one_name_get_distinct_term_names():
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    a, b = KD(temperature=4.0), KD(temperature=1.0)
    plan = plan_taps([a, b, AT(name="kd_2")], teacher, student)
    assert plan.terms == ("kd", "kd_3", "kd_2") and a.name == b.name == "kd"
    assert unique_terms(["at", "at", "at"]) == ["at", "at_2", "at_3"]
    d = kdkeras.Distiller(teacher, student, [a, b], student_loss_weight=0.0)
    d.compile(optimizer="sgd")
    x, y = tiny_data(16)
    logs = d.evaluate(x, y, return_dict=True, verbose=0)
    zt, zs = d.teacher(x).numpy().astype("float64"), d.student(x).numpy().astype("float64")
    from tests.test_methods_logits import np_kd

    np.testing.assert_allclose(logs["kd"], np_kd(zt, zs, 4.0), rtol=1e-3)
    np.testing.assert_allclose(logs["kd_2"], np_kd(zt, zs, 1.0), rtol=1e-3)
    assert method_settings([a, b], d.plan)["kd_2"]["temperature"] == 1.0


def test_default_taps_resolve_on_each_network_and_the_union_feeds_the_tap_models():
    teacher, student = deep_cnn(), tiny_cnn(width=4, name="student")
    at, fitnet, rkd = AT(), FitNet(), RKD()
    plan = plan_taps([KD(), at, fitnet, rkd], teacher, student)
    e_at, e_fit, e_rkd = plan.entry(at), plan.entry(fitnet), plan.entry(rkd)
    assert (e_at.teacher, e_at.student) == (("relu2", "relu3"), ("relu1", "relu2"))
    assert (e_fit.teacher, e_fit.student) == (("relu2",), ("relu1",))
    assert (e_rkd.teacher, e_rkd.student) == (("embedding",), ("embedding",))
    assert plan.teacher_outputs == ("relu2", "relu3", "embedding")
    assert plan.student_outputs == ("relu1", "relu2", "embedding")
    # the shapes a method's parts are built for: the logits and its own layers
    assert dict(e_fit.teacher_shapes) == {"logits": (None, 3), "relu2": (None, 4, 4, 8)}
    assert dict(e_fit.student_shapes) == {"logits": (None, 3), "relu1": (None, 8, 8, 4)}
    tap = taps_lib.build_tap_model(teacher, plan.teacher_outputs)
    for name in plan.teacher_outputs:
        assert tuple(tap.output[name].shape) == taps_lib.tap_shapes(teacher, [name])[name]
    d = kdkeras.Distiller(teacher, student, [at, fitnet])
    assert set(d._student_tap.output) == {"logits", "relu1", "relu2"}
    assert at.tap_names() == (["relu2", "relu3"], ["relu1", "relu2"])  # what its term reads


def test_gradient_mode_at_taps_what_it_needs():
    teacher = tiny_cnn(width=4, name="teacher", batchnorm=False)
    student = tiny_cnn(width=4, name="student", batchnorm=False)
    to_input, to_maps = AT(mode="gradient"), AT(mode="gradient", teacher_layers="relu2", student_layers="relu2")
    plan = plan_taps([to_input], teacher, student)
    (entry,) = plan.entries
    assert (entry.teacher, entry.student, entry.gradient_keys) == ((), (), ("input",))
    assert plan.gradient_keys == ("input",) and plan.teacher_outputs == () == plan.student_outputs
    plan = plan_taps([to_input, to_maps], teacher, student)
    entry = plan.entry(to_maps)
    assert (entry.teacher, entry.gradient_keys) == (("relu2",), ("relu2",))
    assert plan.gradient_keys == ("input", "relu2") and plan.teacher_outputs == ("relu2",)
    assert entry.teacher_shapes["relu2"] == (None, 4, 4, 4)
    # activation mode taps every stage output instead
    assert plan_taps([AT()], teacher, student).entries[0].teacher == ("relu1", "relu2")
    d = kdkeras.Distiller(teacher, student, [to_maps], student_loss_weight=0.0)
    x, y = tiny_data(8)
    out = d._run(d._student_tap, x, y, training=False)
    assert set(out) == {"logits", "relu2", "grad:relu2"}


@dataclass
class FakeCache:
    """What the plan reads of a `kdkeras.cache.TeacherCache`."""

    entries: dict
    method_taps: dict = field(default_factory=dict)
    path: str = "/caches/teacher"


def test_a_cached_run_takes_its_taps_and_shapes_from_the_cache():
    student = tiny_cnn(width=4, name="student")
    cache = FakeCache({"logits": (3,), "relu1": (8, 8, 6), "relu2": (4, 4, 6)},
                      {"kd": [], "at": ["relu1", "relu2"]})
    kd, at = KD(), AT()
    plan = plan_taps([kd, at], None, student, cache)
    entry = plan.entry(at)
    assert (entry.teacher, entry.student) == (("relu1", "relu2"), ("relu1", "relu2"))
    assert dict(entry.teacher_shapes) == {"logits": (None, 3), "relu1": (None, 8, 8, 6), "relu2": (None, 4, 4, 6)}
    assert plan.teacher_outputs == ()  # no teacher model to run
    assert at.teacher_layers is None
    # looked up by method name: a second AT (term at_2) reads what the cache has for "at"
    twice = plan_taps([AT(), AT()], None, student, cache)
    assert twice.terms == ("at", "at_2") and twice.entries[1].teacher == ("relu1", "relu2")
    # a logits method needs nothing the cache was built for
    assert plan_taps([KD(name="other")], None, student, FakeCache({"logits": (3,)})).entries[0].teacher == ()
    with pytest.raises(ValueError, match=r"built without method 'at' \(it has \['kd'\]\).*\['relu1'\]"):
        plan_taps([AT()], None, student, FakeCache({"logits": (3,), "relu1": (8, 8, 6)}, {"kd": []}))
    with pytest.raises(ValueError, match=r"\['conv2'\], which the teacher cache.*it has \['logits', 'relu1'"):
        plan_taps([FitNet(teacher_layers="conv2", student_layers="conv2")], None, student, cache)
    with pytest.raises(ValueError, match="CE gradients"):
        plan_taps([AT(mode="gradient")], None, student, cache)


def test_the_cache_builder_plans_without_a_student():
    teacher = deep_cnn()
    methods = [KD(), AT(), FitNet(), CRD(num_examples=10), FSP()]
    taps, per_method = teacher_taps(teacher, methods)
    assert per_method == {"kd": [], "at": ["relu1", "relu2", "relu3"], "fitnet": ["relu2"],
                          "crd": ["embedding"], "fsp": ["relu1", "relu2", "relu3"]}
    assert taps == ["relu1", "relu2", "relu3", "embedding"]
    # a sweep's methods and the run's, one list: recorded by method name, not term
    assert set(teacher_taps(teacher, [KD(), AT(), KD()])[1]) == {"kd", "at"}
    plan = plan_taps(methods, teacher)
    assert plan.student_outputs == () and all(e.student == () for e in plan.entries)
    assert all(m.teacher_layers is None for m in methods)
    with pytest.raises(CacheError, match="CE gradients"):
        teacher_taps(teacher, [AT(mode="gradient")])


def test_errors_name_the_bad_layer_and_what_is_accepted():
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    with pytest.raises(ValueError, match=r"'relu_2' not found in model 'student'.*relu2"):
        plan_taps([FitNet(teacher_layers="relu2", student_layers="relu_2")], teacher, student)
    with pytest.raises(ValueError, match="needs 4-D.*'embedding'"):
        kdkeras.Distiller(teacher, student, [AT(teacher_layers="embedding", student_layers="embedding")])
    with pytest.raises(ValueError, match="'fitnet' has no taps yet"):
        FitNet().tap_names()
    kd = KD()
    with pytest.raises(ValueError, match=r"\['kd'\] are given twice as the same object"):
        plan_taps([kd, AT(), kd], teacher, student)


def test_a_method_built_for_one_plan_refuses_another():
    student = tiny_cnn(width=4, name="student")
    fitnet = FitNet()
    kdkeras.Distiller(deep_cnn(), student, [fitnet])
    kdkeras.Distiller(deep_cnn(), student, [fitnet])  # the same networks again: the same taps
    with pytest.raises(ValueError, match=r"built for taps \(\('relu2',\), \('relu1',\)\)"):
        kdkeras.Distiller(tiny_cnn(width=8, name="teacher"), student, [fitnet])


def test_a_nested_teacher_is_planned_from_its_inner_layers():
    inner = tiny_cnn(width=8, name="backbone")
    inp = keras.Input((8, 8, 1))
    outer = keras.Model(inp, inner(inp), name="wrapper")
    shapes = taps_lib.tap_shapes(outer, ["relu1", "embedding"])
    assert shapes == {"logits": (None, 3), "relu1": (None, 8, 8, 8), "embedding": (None, 8)}
    out = taps_lib.build_tap_model(outer, ["relu1", "embedding"]).output
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
