"""Default taps: find a CNN's stage outputs and embedding without layer names.

Feature methods tap "stage outputs" (the last feature map at each spatial
resolution), their pre-ReLU versions, or the penultimate embedding. These
functions find them by walking a functional model's graph, so they work for
the zoo, keras.applications backbones and any functional CNN; call them to
see (and override) what a method will tap.

Rule for `stage_outputs`, applied to the Add and activation layers with 4-D
(NHWC) outputs that lie on the trunk (every input-to-output path goes through
them, which leaves out layers inside residual branches and squeeze-excitation
gates) and before the head's global pooling, grouped by spatial size in
topological order:

* the deepest resolution (the one the head pools) gives its last Add or
  activation layer (`conv5_block3_out`, `out_relu`, `final_relu`);
* any other resolution with residual `Add` layers gives its last Add, or the
  activation applied directly to it (`conv2_block3_out`, `block_2_add`,
  `stage1_block3_out`), so expansion layers that precede a strided block
  (`block_3_expand_relu`) are not mistaken for a stage output;
* a resolution without Adds gives its last activation (VGG, plain CNNs),
  except in a residual network, where the resolutions before the first
  residual Add are the stem and are skipped (ResNet50's `conv1_relu`,
  MobileNetV2's 16x16 head at 32x32 input).
"""

from __future__ import annotations

import keras

_ACTIVATIONS = (
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
)
_PASS_THROUGH = (keras.layers.Dropout, keras.layers.ActivityRegularization)
_CLASSIFIERS = (keras.layers.Dense, keras.layers.Conv2D)
_GLOBAL_POOLS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


class _Entry:
    """One layer call in a flattened graph: the layer, its node, its consumers."""

    __slots__ = ("layer", "node", "consumers", "trunk")

    def __init__(self, layer, node, consumers, trunk):
        self.layer = layer
        self.node = node
        self.consumers = consumers
        self.trunk = trunk

    @property
    def shape(self):
        outputs = self.node.outputs
        return tuple(outputs[0].shape) if len(outputs) == 1 else None


def _graph(op):
    """The functional graph of a functional or built Sequential model, else None."""
    if isinstance(op, keras.Sequential):
        op = getattr(op, "_functional", None)
    if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth") and op.inputs:
        return op
    return None


def is_functional(op) -> bool:
    """True for a functional or built Sequential Keras model (one whose graph
    can be walked and tapped)."""
    return _graph(op) is not None


def _check_functional(model):
    graph = _graph(model)
    if graph is None:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} is not a functional (or "
            "Sequential) Keras model, so its layers cannot be detected or tapped. "
            "Build it with the functional API or pass the layer names explicitly."
        )
    return graph


def _ordered_nodes(model) -> list:
    """The graph's nodes from inputs to outputs (decreasing depth)."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _trunk_flags(nodes) -> list[bool]:
    """Whether each node (in topological order) is on the trunk: every path from
    the inputs to the outputs goes through it. A node is off the trunk exactly
    when some edge jumps over its position (a residual branch, an SE gate)."""
    position = {id(node): i for i, node in enumerate(nodes)}
    jumps = [0] * (len(nodes) + 1)
    for node in nodes:
        for parent in node.parent_nodes:
            if id(parent) in position:
                a, b = position[id(parent)], position[id(node)]
                if b - a > 1:
                    jumps[a + 1] += 1
                    jumps[b] -= 1
    flags, open_edges = [], 0
    for i in range(len(nodes)):
        open_edges += jumps[i]
        flags.append(open_edges == 0)
    return flags


def _walk(model, on_trunk: bool = True) -> list[_Entry]:
    """Every tappable layer call of `model` in topological order, nested
    functional models expanded in place."""
    nodes = _ordered_nodes(_graph(model))
    consumers = {id(node): [] for node in nodes}
    uses: dict[int, int] = {}
    for node in nodes:
        uses[id(node.operation)] = uses.get(id(node.operation), 0) + 1
        for parent in node.parent_nodes:
            if id(parent) in consumers:
                consumers[id(parent)].append(node.operation)
    entries = []
    for node, trunk in zip(nodes, _trunk_flags(nodes)):
        op = node.operation
        if node.is_input or isinstance(op, keras.layers.InputLayer):
            continue
        if is_functional(op):
            entries.extend(_walk(op, on_trunk and trunk))
            continue
        # Raw ops (`x + y`) are not layers and shared layers cannot be tapped.
        if not isinstance(op, keras.layers.Layer) or uses[id(op)] > 1:
            continue
        entries.append(_Entry(op, node, consumers[id(node)], on_trunk and trunk))
    return entries


def _is_candidate(entry: _Entry) -> bool:
    return entry.trunk and isinstance(entry.layer, (keras.layers.Add, *_ACTIVATIONS))


def _stage_entries(model) -> list[_Entry]:
    entries = _walk(_check_functional(model))
    # The head starts at the first global pooling on the trunk (its 1x1
    # `keepdims` maps, as in MobileNetV3, are not a stage).
    head = [i for i, e in enumerate(entries) if e.trunk and isinstance(e.layer, _GLOBAL_POOLS)]
    if head:
        entries = entries[: head[0]]
    entries = [e for e in entries if e.shape is not None and len(e.shape) == 4]
    groups: dict[tuple, list[_Entry]] = {}
    for entry in entries:
        if _is_candidate(entry):
            groups.setdefault(tuple(entry.shape[1:3]), []).append(entry)
    if not groups:
        raise ValueError(
            f"No stage outputs found in model {model.name!r}: no Add or activation "
            "layer has a 4-D (NHWC) output. Pass the layer names explicitly."
        )
    position = {id(e): i for i, e in enumerate(entries)}
    last_key = max(groups, key=lambda k: position[id(groups[k][-1])])
    residual = any(isinstance(e.layer, keras.layers.Add) for g in groups.values() for e in g)
    seen_add = False
    picks = []
    for key in sorted(groups, key=lambda k: position[id(groups[k][0])]):
        cands = groups[key]
        adds = [e for e in cands if isinstance(e.layer, keras.layers.Add)]
        seen_add = seen_add or bool(adds)
        if key == last_key:
            picks.append(cands[-1])
        elif adds:
            pick = adds[-1]
            if len(pick.consumers) == 1 and isinstance(pick.consumers[0], _ACTIVATIONS):
                follower = [e for e in cands if e.layer is pick.consumers[0]]
                pick = follower[0] if follower else pick
            picks.append(pick)
        elif seen_add or not residual:  # resolutions before the first Add are a stem
            picks.append(cands[-1])
    return sorted(picks, key=lambda e: position[id(e)])


def stage_outputs(model: keras.Model) -> list[str]:
    """Names of the last layer at each spatial resolution (see module docstring).

    >>> import kdkeras
    >>> stage_outputs(kdkeras.models.get("resnet20", (32, 32, 3), 10))
    ['stage1_block3_out', 'stage2_block3_out', 'stage3_block3_out']
    """
    return [e.layer.name for e in _stage_entries(model)]


def preact_stage_outputs(model: keras.Model) -> list[str]:
    """The stage outputs before their last activation.

    A stage output that is an activation layer is replaced by the layer feeding
    it (`stage1_block3_preact`, `conv2_block3_add`, `Conv_1_bn`); one that is
    not (an Add with no ReLU after it, as in pre-activation ResNets and
    MobileNetV2) is already pre-activation and is kept.
    """
    names = []
    for entry in _stage_entries(model):
        name = entry.layer.name
        parents = entry.node.parent_nodes
        if isinstance(entry.layer, _ACTIVATIONS) and len(parents) == 1:
            parent = parents[0].operation
            if isinstance(parent, keras.layers.Layer) and not is_functional(parent):
                name = parent.name
        names.append(name)
    return names


def embedding_layer(model: keras.Model) -> str:
    """Name of the layer feeding the logits layer (the penultimate vector).

    The logits layer is the last Dense (or 1x1-conv classifier, as in
    MobileNetV3) met walking back from the output, past softmax, flatten and
    the like; Dropout layers before it are skipped; a nested backbone's
    output layer is returned by its own name.
    """
    graph = _check_functional(model)
    if len(graph.outputs) != 1:
        raise ValueError(f"Model {model.name!r} must have one output (the logits).")
    node = _producer_node(graph.outputs[0])
    while node is not None and not isinstance(node.operation, _CLASSIFIERS):
        if is_functional(node.operation):
            return embedding_layer(node.operation)
        parents = node.parent_nodes
        node = parents[0] if len(parents) == 1 else None
    if node is None:
        raise ValueError(
            f"Could not find the logits (Dense) layer of model {model.name!r}; pass "
            "the embedding layer name explicitly."
        )
    parents = node.parent_nodes
    while len(parents) == 1 and isinstance(parents[0].operation, _PASS_THROUGH):
        parents = parents[0].parent_nodes
    if len(parents) != 1 or parents[0].is_input:
        raise ValueError(
            f"The logits layer {node.operation.name!r} of {model.name!r} reads the "
            "model input directly; there is no embedding layer to tap."
        )
    op = parents[0].operation
    while is_functional(op):
        op = _producer_node(_graph(op).outputs[0]).operation
    return op.name


def _producer_node(tensor):
    history = tensor._keras_history
    return history.operation._inbound_nodes[history.node_index]


def pair_taps(teacher: list[str], student: list[str]) -> tuple[list[str], list[str]]:
    """Match teacher and student tap lists of different lengths.

    The deepest taps correspond: the last `k` of the longer list are kept,
    `k` being the shorter list's length (ResNet50's four stages against a
    three-stage CIFAR ResNet pair conv3..conv5 with stage1..stage3).
    """
    teacher, student = list(teacher), list(student)
    k = min(len(teacher), len(student))
    return teacher[len(teacher) - k :], student[len(student) - k :]
