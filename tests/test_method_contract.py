"""The method contract: a new method with an init stage, a gradient tap or an
epoch-dependent term trains through `Distiller`, `default_stages` and
`run_stages` without either of them naming it; the CE-weight defaults; specs."""

import ast
import inspect
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import kdkeras
from kdkeras import distiller as distiller_lib
from kdkeras import keys
from kdkeras import stages as stages_lib
from kdkeras import tap_plan as tap_plan_lib
from kdkeras.methods import (
    KD,
    InitStage,
    Method,
    StepContext,
    default_student_loss_weight,
    from_spec,
    method_names,
    parse_method_args,
)
from kdkeras.methods import registry as methods_registry
from kdkeras.stages import default_stages, needs_init_stage, run_stages
from tests.helpers import tiny_cnn, tiny_data


def _weights(ws):
    return [w.numpy().copy() for w in ws]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _all_differ(a, b):
    return all(not np.array_equal(x, y) for x, y in zip(a, b))


# -- a method with its own init stage -------------------------------------------------------


class ConnectorFit(Method):
    """Test-only init-stage term: fits a Dense connector from the student's
    embedding to the teacher's, `mean((connector(s) - t)^2)`."""

    def build_parts(self, teacher_shapes, student_shapes):
        self.connector = keras.layers.Dense(teacher_shapes["embedding"][-1], name="connector")
        self.connector.build(student_shapes["embedding"])

    def compute_loss(self, teacher, student, y, context=None):
        return ops.mean((self.connector(student["embedding"]) - teacher["embedding"]) ** 2)


class PretrainedConnector(Method):
    """Test-only: its init stage trains a term of its own (`fit`, the student
    frozen, no CE); then it reads the connector that term trained, frozen, and
    trains the student through it: `mean(|connector(s) - t|)`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        fit = ConnectorFit(teacher_layers=self.teacher_layers, student_layers=self.student_layers,
                           name=f"{self.name}_fit")
        object.__setattr__(self, "fit", fit)  # shares its part, not a sublayer

    def init_stages(self):
        return [InitStage("connector_init", (self.fit,), train_student=False)]

    def build_parts(self, teacher_shapes, student_shapes):
        self.fit.build_from_taps(teacher_shapes, student_shapes)  # built already after its stage
        self.connector = self.fit.connector

    def compute_loss(self, teacher, student, y, context=None):
        return ops.mean(ops.abs(self.connector(student["embedding"]) - teacher["embedding"]))


class InitOnly(Method):
    """Test-only: trained alone (with the student) in a shared `init` stage, then
    left out of the main stage, as AB and FSP are."""

    in_main_stage = False

    def init_stages(self):
        return [InitStage("init", (self,))]

    def compute_loss(self, teacher, student, y, context=None):
        return ops.mean((student[keys.LOGITS] - teacher[keys.LOGITS]) ** 2)


def test_own_init_stage_term_trains_the_shared_part_alone_then_the_student_through_it(tmp_path):
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    conn = PretrainedConnector(teacher_layers=["embedding"], student_layers=["embedding"])
    kd = KD()
    assert PretrainedConnector.has_init_stage and not KD.has_init_stage
    assert needs_init_stage([kd, conn]) and not needs_init_stage([kd])
    stages = default_stages([kd, conn], init_epochs=2, epochs=1, student_loss_weight=0.1)
    assert [s.name for s in stages] == ["connector_init", "main"]
    init, main = stages
    assert init.methods == [conn.fit] and init.epochs == 2 and not init.train_student
    assert init.student_loss_weight == 0.0
    assert main.methods == [kd, conn] and main.student_loss_weight == 0.1 and main.epochs == 1
    assert list(main.frozen) == [conn.fit]

    x, y = tiny_data(32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen[self.model.name + "_begin"] = _weights(conn.fit.weights)

        def on_train_end(self, logs=None):
            seen[self.model.name] = (_weights(student.trainable_weights), _weights(conn.fit.weights))

    s0, t0 = _weights(student.trainable_weights), _weights(teacher.weights)
    hist = run_stages(teacher, student, stages, ds, output_dir=str(tmp_path), callbacks=[Spy()],
                      optimizer_fn=lambda s: keras.optimizers.Adam(1e-2), verbose=0)
    assert len(hist["connector_init"]["loss"]) == 2 and "kd" not in hist["connector_init"]
    assert "pretrained_connector_fit" in hist["connector_init"]
    assert {"kd", "pretrained_connector"} <= set(hist["main"])
    s_init, c_init = seen["stage_connector_init"]
    s_main, c_main = seen["stage_main"]
    assert _all_differ(seen["stage_connector_init_begin"], c_init)  # the init stage trained it
    assert _same(s0, s_init)  # while the student was frozen
    assert _all_differ(s_init, s_main)  # and trained in the main stage
    assert c_init and _same(c_init, c_main)  # the connector was frozen in the main stage
    assert conn.connector is conn.fit.connector  # one part, two method objects
    assert _same(t0, teacher.weights)


def test_init_stages_merge_by_name_and_part_only_stages_run_first():
    a, b = InitOnly(name="a"), InitOnly(name="b")
    conn = PretrainedConnector(name="conn")
    stages = default_stages([a, conn, b, KD()], init_epochs=3, epochs=4, student_loss_weight=0.5)
    assert [s.name for s in stages] == ["connector_init", "init", "main"]
    assert stages[0].methods == [conn.fit] and stages[0].epochs == 3 and not stages[0].train_student
    assert stages[1].methods == [a, b] and stages[1].epochs == 3
    assert stages[1].student_loss_weight == 0.0 and stages[1].train_student
    assert [m.name for m in stages[2].methods] == ["conn", "kd"]  # InitOnly left out
    assert stages[2].epochs == 4 and stages[2].student_loss_weight == 0.5
    assert [m.name for m in stages[2].frozen] == ["conn_fit", "a", "b"]

    class Clash(InitOnly):
        def init_stages(self):
            return [InitStage("init", (self,), student_loss_weight=0.5)]

    with pytest.raises(ValueError, match="'init' differ"):
        default_stages([a, Clash()], init_epochs=1, epochs=1, student_loss_weight=1.0)


def test_an_init_stage_declared_as_anything_but_init_stage_data_is_refused():
    class Undeclared(InitOnly):
        def init_stages(self):
            return [kdkeras.Stage("init", [self], 1)]

    with pytest.raises(TypeError, match=r"init_stages must return InitStage objects, got Stage\(name='init'"):
        default_stages([Undeclared()], init_epochs=1, epochs=1, student_loss_weight=1.0)


def _names_used(module) -> set[str]:
    """Names, attributes and string constants (docstrings left out) in a module's code."""
    tree = ast.parse(inspect.getsource(module))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            used.add(node.value)
    return used


def test_stages_and_distiller_name_no_method_and_the_distiller_no_stage():
    """`stages.py`, `distiller.py` and `tap_plan.py` (code, not prose) use no method
    class, registered name or method-specific stage name; the Distiller nothing of staging."""
    banned = {cls.__name__ for cls in methods_registry._REGISTRY.values()}
    banned |= set(method_names()) | {"FTParaphraser", "paraphraser_term", "ft_paraphraser", "has_init_stage"}
    for module in (stages_lib, distiller_lib, tap_plan_lib):
        used = _names_used(module)
        assert not used & banned, (module.__name__, used & banned)
    staging = {"init_stages", "in_main_stage", "InitStage", "Stage", "stages", "frozen", "current_weight"}
    assert not _names_used(distiller_lib) & staging
    assert {"init_stages", "in_main_stage", "InitStage"} <= _names_used(stages_lib)  # it reads the declarations


def _module_imports() -> dict[str, set[str]]:
    """Each kdkeras module's kdkeras modules imported at import time (module level,
    `TYPE_CHECKING` blocks included; a submodule's parent packages left out)."""
    root = os.path.dirname(kdkeras.__file__)
    paths = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(root))[:-3]
                paths[re.sub(r"\.__init__$", "", rel.replace(os.sep, "."))] = os.path.join(folder, f)
    graph = {}
    for name, path in paths.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        nodes = [n for top in tree.body for n in ([top] + (top.body if isinstance(top, ast.If) else []))]
        deps = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(paths)
                deps |= subs or {node.module}
        graph[name] = {d for d in deps if d in paths and d != name and not name.startswith(d + ".")}
    return graph


def test_no_import_circle_in_kdkeras():
    graph = _module_imports()
    assert "kdkeras.methods.base" in graph and "kdkeras.stage" not in graph
    assert "kdkeras.distiller" in graph["kdkeras.stages"]  # the graph sees what stages.py imports
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for dep in sorted(graph[module]):
            assert state.get(dep) != "open", " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


# -- a method that reads a gradient tap -----------------------------------------------------


class TapGradNorms(Method):
    """Test-only: the squared norms of each network's CE gradient w.r.t. `relu1`."""

    gradient_keys = ("relu1",)
    log_keys = ("teacher", "student")

    def compute_loss(self, teacher, student, y, context=None):
        key = keys.grad_key("relu1")
        return {"teacher": ops.sum(teacher[key] ** 2), "student": ops.sum(student[key] ** 2)}


def _tap_grad(net, x, y):
    """d(sum CE)/d(relu1 output), by running the layers after `relu1` by hand."""
    trunk = keras.Model(net.input, net.get_layer("relu1").output)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    feature = trunk(tf.constant(x), training=False)
    with tf.GradientTape() as tape:
        tape.watch(feature)
        h = feature
        for name in ("conv2", "relu2", "embedding", "logits"):
            h = net.get_layer(name)(h)
        loss = ce(y, h)
    return tape.gradient(loss, feature).numpy()


def test_gradient_tap_equals_an_independent_tape_and_trains():
    teacher = tiny_cnn(width=8, name="teacher", batchnorm=False)
    student = tiny_cnn(width=4, name="student", batchnorm=False)
    d = kdkeras.Distiller(teacher, student, [TapGradNorms(weight=1.0)], student_loss_weight=0.0)
    x, y = tiny_data(8)
    g_t, g_s = _tap_grad(teacher, x, y), _tap_grad(student, x, y)
    assert g_t.shape == (8, 8, 8, 8) and np.abs(g_s).sum() > 0
    d.compile(optimizer=keras.optimizers.SGD(1e-2))
    logs = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["tap_grad_norms_teacher"], np.sum(g_t.astype("float64") ** 2), rtol=1e-4)
    np.testing.assert_allclose(logs["tap_grad_norms_student"], np.sum(g_s.astype("float64") ** 2), rtol=1e-4)
    head = [w for w in student.trainable_weights if "conv1" not in w.path]
    before = _weights(head)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert _all_differ(before, head)  # the term's second-order gradient reached the student


# -- a method that reads the step context ---------------------------------------------------


class ContextProbe(Method):
    """Test-only, weight 0: logs what the step context says."""

    default_weight = 0.0
    log_keys = ("epoch", "epochs", "training", "has_index")
    requires_teacher = False

    def compute_loss(self, teacher, student, y, context=None):
        return {
            "epoch": ops.cast(context.epoch, "float32"),
            "epochs": ops.cast(context.epochs, "float32"),
            "training": ops.convert_to_tensor(float(context.training)),
            "has_index": ops.convert_to_tensor(float(context.index is not None)),
        }


def test_step_context_gives_the_fitted_epoch_run_length_and_flags():
    probe = ContextProbe()
    assert not hasattr(probe, "epoch")  # nothing injected into the method
    d = kdkeras.Distiller(None, tiny_cnn(width=4, name="student"), [probe])
    d.compile(optimizer="sgd")
    x, y = tiny_data(16)
    inputs = {keys.IMAGE: x, keys.INDEX: np.arange(16)}
    hist = d.fit(inputs, y, batch_size=8, epochs=3, validation_data=(x, y), verbose=0).history
    assert hist["context_probe_epoch"] == [0.0, 1.0, 2.0]
    assert hist["context_probe_epochs"] == [3.0, 3.0, 3.0]
    assert hist["context_probe_training"] == [1.0] * 3 and hist["val_context_probe_training"] == [0.0] * 3
    assert hist["context_probe_has_index"] == [1.0] * 3 and hist["val_context_probe_has_index"] == [0.0] * 3
    hist = d.fit(inputs, y, batch_size=8, epochs=5, initial_epoch=3, verbose=0).history
    assert hist["context_probe_epoch"] == [3.0, 4.0] and hist["context_probe_epochs"] == [5.0, 5.0]


def test_compute_loss_outside_a_distiller_has_no_context():
    z = np.array([[1.0, 2.0, 0.0]], "float32")
    kd = KD(temperature=2.0)
    plain = float(kd.compute_loss({keys.LOGITS: z}, {keys.LOGITS: z[:, ::-1].copy()}, None))
    via_call = float(kd({keys.LOGITS: z}, {keys.LOGITS: z[:, ::-1].copy()}, None))
    assert plain > 0 and via_call == plain
    assert StepContext() == StepContext(training=False, index=None, epoch=None, epochs=None)


# -- CE-weight defaults, specs --------------------------------------------------------------


@pytest.mark.parametrize("spec, want", [("kd", 0.1), ("lsr", 0.0), ("kd+at", 0.1), ("at", 1.0),
                                        ("virtual_teacher", 0.9), ("dkd+wsl", 1.0), ("", 1.0)])
def test_default_student_loss_weight(spec, want):
    methods = from_spec(spec) if spec else []
    assert default_student_loss_weight(methods) == want


def test_a_new_methods_declared_ce_weight_takes_part_in_the_mix():
    class HalfCE(Method):
        default_student_loss_weight = 0.05

        def compute_loss(self, teacher, student, y, context=None):
            return ops.zeros(())

    assert default_student_loss_weight([HalfCE()]) == 0.05
    assert default_student_loss_weight([KD(), HalfCE()]) == 0.05
    assert default_student_loss_weight(from_spec("at") + [HalfCE()]) == 0.05


def _documented_methods() -> dict[str, list[str]]:
    """docs/methods.md's table at a glance: each registered name -> its row's cells."""
    path = os.path.join(os.path.dirname(os.path.dirname(kdkeras.__file__)), "docs", "methods.md")
    with open(path) as f:
        text = f.read()
    table = text[text.index("| name | class |"):].split("\n\n")[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`(\w+)`", cells[0]):
            rows[name] = cells
    return rows


def test_each_methods_declared_weights_and_init_stage_are_the_documented_ones():
    rows = _documented_methods()
    registered = {n for n in method_names() if not n.startswith("test_")}
    assert set(rows) == registered
    for name, (_, cls, _, weight, ce, _, init) in rows.items():
        method = methods_registry.method_class(name)
        assert f"`{method.__name__}`" == cls, name
        assert method.default_weight == float(weight), (name, method.default_weight, weight)
        assert method.default_student_loss_weight == float(ce), (name, method.default_student_loss_weight, ce)
        assert method.has_init_stage == (init == "yes"), name


def test_from_spec_builds_methods_with_their_arguments():
    kd, at = from_spec(" KD + at ", "kd.temperature=2,at.weight=500,at.mode=gradient")
    assert (type(kd).__name__, kd.temperature, kd.weight) == ("KD", 2.0, 0.9)
    assert (type(at).__name__, at.weight, at.mode) == ("AT", 500.0, "gradient")
    kd, crd = from_spec("kd+crd", {"crd": {"num_negatives": 4}}, num_examples=10)
    assert (crd.num_examples, crd.num_negatives) == (10, 4) and not hasattr(kd, "num_examples")


def test_parse_method_args_types_and_errors():
    assert parse_method_args("kd.temperature=4, KD.x=0.5,at.flag=true,at.v=none,at.s=abc") == {
        "kd": {"temperature": 4, "x": 0.5}, "at": {"flag": True, "v": None, "s": "abc"},
    }
    assert parse_method_args(None) == {} and parse_method_args("") == {}
    for bad in ("temperature=4", "kd.temperature", "kd.=4"):
        with pytest.raises(ValueError, match=rf"{bad!r}.*expected [A-Z.]*=VALUE"):
            parse_method_args(bad)


def test_from_spec_errors_name_the_bad_value_and_the_accepted_names():
    with pytest.raises(ValueError, match=r"'kdd'.*Accepted.*'kd'.*Did you mean \['kd'"):
        from_spec("kdd+at")
    with pytest.raises(ValueError, match=r"Empty method spec.*'at'.*'kd'"):
        from_spec(" + ")
    with pytest.raises(ValueError, match=r"\['at'\].*not in the spec 'kd'.*\['kd'\]"):
        from_spec("kd", "at.weight=5")
    with pytest.raises(ValueError, match=r"\['temprature'\].*'kd'.*Accepted arguments:.*'temperature'"):
        from_spec("kd", "kd.temprature=2")
    with pytest.raises(ValueError, match=r"KD temperature must be > 0, got 0"):
        from_spec("kd", "kd.temperature=0")
