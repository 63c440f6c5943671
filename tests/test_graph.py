"""The graph core: ModelGraph against hand-written edge lists, rebuild, layer traits,
and the layout rules (private Keras attributes only in core/graph.py, `__all__`
everywhere, no module importing another's underscore names)."""

import ast
import os
import re

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress.core import (
    ModelGraph,
    kernel_variables,
    layer_traits,
    rebuild,
    register_layer_traits,
)
from tfcompress.core.traits import has_kernels

L = keras.layers
PACKAGE = os.path.dirname(os.path.abspath(tfcompress.__file__))


def test_a_shared_layer_has_one_node_per_call():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = L.Dense(3, name="shared")
    x, y = shared(a), shared(b)
    out = L.Dense(2, name="out")(L.Add(name="add")([x, y]))
    graph = ModelGraph(keras.Model([a, b], out))
    assert sorted(graph.edges()) == sorted([
        ("a", "shared[0]"),
        ("b", "shared[1]"),
        ("shared[0]", "add"),
        ("shared[1]", "add"),
        ("add", "out"),
    ])
    assert [layer.name for layer in graph.layers if layer is shared] == ["shared"]
    assert [n.call_index for n in graph.nodes_of(shared)] == [0, 1]
    first = graph.nodes_of(shared)[0]
    assert first.input is graph.inputs[0] and [c.name for c in first.output.consumers] == ["add"]
    assert graph.sole_consumer(first).name == "add"
    assert graph.is_output(graph.nodes[-1].output)


def test_nested_models_are_expanded_into_their_layers():
    inner = keras.Sequential(
        [keras.Input((4,)), L.Dense(3, name="d1"), L.ReLU(name="r1")], name="inner"
    )
    x = keras.Input((4,), name="x")
    o1 = inner(L.Dense(4, name="pre1")(x))
    o2 = inner(L.Dense(4, name="pre2")(x))  # the nested model called twice
    model = keras.Model(x, L.Concatenate(name="cat")([o1, o2]))
    graph = ModelGraph(model)
    assert sorted(graph.edges()) == sorted([
        ("x", "pre1"),
        ("x", "pre2"),
        ("pre1", "d1[0]"),
        ("d1[0]", "r1[0]"),
        ("pre2", "d1[1]"),
        ("d1[1]", "r1[1]"),
        ("r1[0]", "cat"),
        ("r1[1]", "cat"),
    ])
    assert not any(isinstance(n.layer, keras.Model) for n in graph.nodes)
    assert {n.path for n in graph.nodes if n.name in ("d1", "r1")} == {("inner",)}
    # The flat model computes what the nested one does, with one Dense d1.
    flat = rebuild(model)
    data = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(flat.predict(data, verbose=0), model.predict(data, verbose=0),
                               rtol=1e-6)
    assert [layer.name for layer in flat.layers].count("d1") == 1


def test_names_that_collide_after_flattening_get_the_nested_model_prefix():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(4, name="fc")(inner_in), name="block")
    model = keras.Sequential([keras.Input((4,)), inner, L.Dense(2, name="fc")], name="outer")
    graph = ModelGraph(model)
    assert [n.name for n in graph.nodes] == ["block_fc", "fc"]
    assert sorted(layer.name for layer in rebuild(model).layers) == ["block_fc", "fc"]


def test_a_training_flag_passed_to_a_nested_model_is_kept():
    """`inner(x, training=True)` makes Keras run the inner BatchNormalization on batch
    statistics when the model is called without `training` (fit and predict pass their
    own); the flattened model must do the same."""
    inner = keras.Sequential([keras.Input((3,)), L.BatchNormalization(name="bn")], name="inner")
    inner.get_layer("bn").set_weights(
        [np.ones(3), np.zeros(3), np.full(3, 5.0), np.full(3, 4.0)]
    )
    x = keras.Input((3,))
    model = keras.Model(x, L.Dense(2, name="head")(inner(x, training=True)))
    (bn_node,) = [n for n in ModelGraph(model).nodes if n.name == "bn"]
    assert bn_node.training is True
    flat = rebuild(model)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    data = np.random.default_rng(1).normal(size=(64, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(flat(data)), np.asarray(model(data)), rtol=1e-5,
                               atol=1e-6)
    # Batch statistics, not the moving ones (mean 5, variance 4), were used:
    normalized = np.asarray(keras.Model(flat.inputs, flat.get_layer("bn").output)(data))
    np.testing.assert_allclose(normalized.mean(axis=0), 0.0, atol=1e-5)


def test_rebuild_keeps_dict_structures_and_replaces_layers():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = L.Concatenate(name="cat")([a, b])
    model = keras.Model({"a": a, "b": b}, {"y": L.Dense(2, name="y")(h), "z": L.ReLU(name="z")(h)})
    data = {k: np.random.default_rng(2).normal(size=(4, v)).astype("float32")
            for k, v in (("a", 3), ("b", 2))}

    def layer_fn(layer, name):  # the ReLU becomes a LeakyReLU of the same name
        return L.LeakyReLU(0.5, name=name) if isinstance(layer, L.ReLU) else None

    def node_fn(node, args, kwargs, state):  # a Dropout inserted after the Dense
        if node.name == "y":
            return L.Dropout(0.5, name="y_dropout")(state.call(node, args, kwargs))
        return None

    new = rebuild(model, layer_fn=layer_fn, node_fn=node_fn, name="rebuilt")
    assert new.name == "rebuilt" and sorted(new.input) == ["a", "b"]
    out, ref = new.predict(data, verbose=0), model.predict(data, verbose=0)
    np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-6)
    joined = np.concatenate([data["a"], data["b"]], axis=1)
    np.testing.assert_allclose(out["z"], np.where(joined > 0, joined, 0.5 * joined), rtol=1e-6)
    assert isinstance(new.get_layer("y_dropout"), L.Dropout)


def test_layer_traits_of_keras_tfcompress_and_custom_layers():
    conv = L.Conv2D(2, 3)
    conv.build((None, 5, 5, 1))
    traits = layer_traits(conv)
    assert (traits.kind, traits.kernels, traits.kernel_axes, traits.bias) == (
        "weighted", ("kernel",), ((-2, -1),), "bias")
    assert kernel_variables(conv) == [conv.kernel]
    assert layer_traits(L.Conv2DTranspose).kernel_axes == ((-1, -2),)
    assert layer_traits(L.Add).kind == "merge" and layer_traits(L.Concatenate).kind == "concat"
    assert layer_traits(L.MaxPooling2D).value_preserving
    assert not layer_traits(L.AveragePooling2D).value_preserving
    assert layer_traits(L.Flatten).kind == "reshape"
    assert layer_traits(tfcompress.layers.AdderConv).kernels == ("kernel",)
    assert layer_traits(tfcompress.layers.Shift).value_preserving
    assert not has_kernels(tfcompress.layers.BinaryConv(2, 3))  # binary: nothing to prune
    assert layer_traits(tfcompress.layers.GhostConv).lowering is not None
    assert layer_traits(L.Dense).quantization == "weights"
    assert layer_traits(L.Dense).counter is not None

    class Scale(L.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],))

        def call(self, x):
            return x * self.w

    class SubScale(Scale):
        pass

    assert layer_traits(Scale).kind == "other" and not has_kernels(Scale())
    register_layer_traits(Scale, kind="pass_through", kernels=("w",), kernel_axes=((0, 0),))
    layer = SubScale()
    layer.build((None, 3))
    assert layer_traits(layer).kind == "pass_through"  # inherited field by field
    assert kernel_variables(layer) == [layer.w]
    register_layer_traits(SubScale, kind="other")
    assert (layer_traits(SubScale).kind, layer_traits(SubScale).kernels) == ("other", ("w",))

    class Protocol(L.Dense):  # tfmot's PrunableLayer protocol wins over the inherited kernel
        def get_prunable_weights(self):
            return [self.bias]

    p = Protocol(2)
    p.build((None, 3))
    assert kernel_variables(p) == [p.bias]

    with pytest.raises(ValueError, match="kind='round'"):
        register_layer_traits(Scale, kind="round")
    with pytest.raises(ValueError, match="Unknown layer trait.*colour"):
        register_layer_traits(Scale, colour="red")
    with pytest.raises(ValueError, match="layer_class=<class 'int'>"):
        register_layer_traits(int, kind="other")
    with pytest.raises(ValueError, match="quantization='int3'"):
        register_layer_traits(Scale, quantization="int3")
    with pytest.raises(ValueError, match="one .* pair per kernel"):
        register_layer_traits(Scale, kernels=("a", "b"), kernel_axes=((0, 1),))


def test_graph_errors_name_the_model():
    with pytest.raises(ValueError, match="needs a built model"):
        ModelGraph(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ValueError, match="needs a keras.Model.*Dense"):
        ModelGraph(L.Dense(2))


# ------------------------------------------------------------------------- layout rules


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, PACKAGE), f.read()


def test_private_keras_attributes_are_read_in_the_graph_core_only():
    pattern = re.compile(r"_keras_history|_inbound_nodes|_nodes_by_depth|_run_through_graph"
                         r"|\._functional")
    users = sorted(rel for rel, text in _modules() if pattern.search(text))
    assert users == [os.path.join("core", "graph.py")]


def test_every_module_has_all_and_imports_no_private_names():
    problems = []
    for rel, text in _modules():
        tree = ast.parse(text)
        names = {
            target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)
        }
        if "__all__" not in names:
            problems.append(f"{rel}: no __all__")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfcompress"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    problems.append(f"{rel}: imports {private} from {node.module}")
    assert problems == []
