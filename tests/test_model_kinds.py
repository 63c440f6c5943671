"""Every kind of Keras model through every entry point (issue 12).

Kinds: Sequential, functional (residual), several inputs and outputs as lists and as
dicts, a Sequential nested in a functional model, a functional model nested in a
Sequential, and a layer called twice (shared). Entry points: prune_low_magnitude,
cluster_weights, quantize_model (QAT -> int8 file within one step of Keras on
>= 99.9% of outputs), lower_model, profile (multiply-adds against the formula) and
to_tflite. Subclassed models get a clear ValueError from each model-level entry
point, saying what to do instead (tests/test_subclassed.py covers what works for them).
"""

import re

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import export
from tfcompress.clustering import ClusterWeights, cluster_weights, strip_clustering
from tfcompress.core import ModelGraph
from tfcompress.lowering import lower_model
from tfcompress.pruning import (
    ConstantSparsity,
    PruneLowMagnitude,
    UpdatePruningStep,
    prune_low_magnitude,
    strip_pruning,
)
from tfcompress.quantization import quantize_model

L = keras.layers
IMAGE = (8, 8, 1)


def conv_macs(h, w, k, cin, cout):
    return h * w * k * k * cin * cout


def sequential():
    model = keras.Sequential([
        keras.Input(IMAGE),
        L.Conv2D(4, 3, padding="same", use_bias=False, name="conv"),
        L.BatchNormalization(name="bn"),
        L.ReLU(name="relu"),
        L.Flatten(name="flat"),
        L.Dense(10, name="fc"),
    ], name="seq")
    return model, conv_macs(8, 8, 3, 1, 4) + 256 * 10


def functional():
    inputs = keras.Input(IMAGE, name="image")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    y = L.Conv2D(4, 3, padding="same", name="conv2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.ReLU(name="relu")(L.Add(name="add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(10, name="fc")(x)
    macs = conv_macs(8, 8, 3, 1, 4) + conv_macs(8, 8, 3, 4, 4) + 40
    return keras.Model(inputs, outputs, name="residual"), macs


def _two_branches(image, meta):
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    m = L.Dense(4, activation="relu", name="meta_fc")(meta)
    joined = L.Concatenate(name="cat")([x, m])
    return L.Dense(3, name="head")(joined), L.Dense(2, name="aux")(x)


def multi_io_list():
    image, meta = keras.Input(IMAGE, name="image"), keras.Input((6,), name="meta")
    head, aux = _two_branches(image, meta)
    macs = conv_macs(8, 8, 3, 1, 4) + 6 * 4 + 8 * 3 + 4 * 2
    return keras.Model([image, meta], [head, aux], name="multi_list"), macs


def multi_io_dict():
    image, meta = keras.Input(IMAGE, name="image"), keras.Input((6,), name="meta")
    head, aux = _two_branches(image, meta)
    macs = conv_macs(8, 8, 3, 1, 4) + 6 * 4 + 8 * 3 + 4 * 2
    model = keras.Model({"image": image, "meta": meta}, {"head": head, "aux": aux},
                        name="multi_dict")
    return model, macs


def nested_sequential():
    block = keras.Sequential([
        keras.Input((8, 8, 4)),
        L.Conv2D(4, 3, padding="same", use_bias=False, name="block_conv"),
        L.BatchNormalization(name="block_bn"),
        L.ReLU(name="block_relu"),
    ], name="block")
    inputs = keras.Input(IMAGE, name="image")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    x = L.GlobalAveragePooling2D(name="gap")(block(x))
    outputs = L.Dense(10, name="fc")(x)
    macs = conv_macs(8, 8, 3, 1, 4) + conv_macs(8, 8, 3, 4, 4) + 40
    return keras.Model(inputs, outputs, name="outer"), macs


def nested_functional():
    inner_in = keras.Input((8, 8, 4))
    y = L.Conv2D(4, 1, name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, L.Add(name="inner_add")([inner_in, y]), name="inner")
    model = keras.Sequential([
        keras.Input(IMAGE),
        L.Conv2D(4, 3, padding="same", activation="relu", name="stem"),
        inner,
        L.Flatten(name="flat"),
        L.Dense(10, name="fc"),
    ], name="seq_of_functional")
    return model, conv_macs(8, 8, 3, 1, 4) + conv_macs(8, 8, 1, 4, 4) + 256 * 10


def shared_layer():
    inputs = keras.Input(IMAGE, name="image")
    shared = L.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    x = shared(shared(x))  # the same weights, twice
    outputs = L.Dense(10, name="fc")(L.GlobalAveragePooling2D(name="gap")(x))
    macs = conv_macs(8, 8, 3, 1, 4) + 2 * conv_macs(8, 8, 3, 4, 4) + 40
    return keras.Model(inputs, outputs, name="shared"), macs


KINDS = {
    "sequential": sequential,
    "functional": functional,
    "multi_io_list": multi_io_list,
    "multi_io_dict": multi_io_dict,
    "nested_sequential": nested_sequential,
    "nested_functional": nested_functional,
    "shared_layer": shared_layer,
}


def structure(model, which):
    """`model.input` / `model.output` (a Sequential has only `inputs` / `outputs`)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, f"{which}s")[0]
    return getattr(model, which)


def data_for(model, n, seed=0):
    """(inputs, targets) in the model's own structures (array, list or dict)."""
    rng = np.random.default_rng(seed)

    def one(shape):
        return rng.uniform(0, 1, size=(n,) + tuple(shape[1:])).astype("float32")

    inputs = keras.tree.map_structure(lambda t: one(t.shape), structure(model, "input"))
    targets = keras.tree.map_structure(lambda t: one(t.shape), structure(model, "output"))
    return inputs, targets


def same_outputs(a, b, x, **tolerance):
    for ya, yb in zip(keras.tree.flatten(a.predict(x, verbose=0)),
                      keras.tree.flatten(b.predict(x, verbose=0))):
        np.testing.assert_allclose(ya, yb, **tolerance)


def fit(model, x, y, epochs=2, callbacks=()):
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=list(callbacks))


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    keras.utils.set_random_seed(0)
    model, macs = KINDS[request.param]()
    return request.param, model, macs


def test_the_structure_comes_back(kind):
    name, model, _ = kind
    for new in (lower_model(model), quantize_model(model)):
        for which in ("input", "output"):
            assert keras.tree.map_structure(lambda t: t.shape, structure(new, which)) == (
                keras.tree.map_structure(lambda t: t.shape, structure(model, which))
            ), (name, which)
        assert not any(isinstance(layer, keras.Model) for layer in new.layers), name


def test_lower_model_computes_the_same(kind):
    _, model, _ = kind
    x, _ = data_for(model, 8)
    same_outputs(model, lower_model(model), x, rtol=1e-5, atol=1e-6)


def test_profile_counts_every_call(kind):
    _, model, macs = kind
    result = tfcompress.profile(model)
    assert result["total"]["macs"] == macs
    assert result["total"]["params"] == model.count_params()


def test_float_export_matches(kind):
    _, model, _ = kind
    x, _ = data_for(model, 16)
    report = export.verify(export.to_tflite(model, mode="float32"), model, x)
    assert report["max_abs_diff"] < 1e-4


def test_pruned_trains_strips_and_keeps_shared_layers_shared(kind):
    name, model, _ = kind
    x, y = data_for(model, 64)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    # A Sequential stays one when its flattened graph is still a chain.
    chain = isinstance(model, keras.Sequential) and ModelGraph(model).is_chain()
    assert isinstance(pruned, keras.Sequential) == chain, name
    wrappers = [layer for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)]
    assert wrappers
    fit(pruned, x, y, callbacks=[UpdatePruningStep()])
    for wrapper in wrappers:
        assert wrapper.current_sparsity() == [pytest.approx(0.5, abs=0.02)], wrapper.name
    stripped = strip_pruning(pruned)
    same_outputs(pruned, stripped, x, rtol=1e-5, atol=1e-6)
    if name == "shared_layer":
        (wrapper,) = [w for w in wrappers if w.layer.name == "shared"]
        assert len(pruned.get_layer(wrapper.name)._inbound_nodes) == 2  # still one layer


@pytest.mark.slow
def test_clustered_trains_and_strips(kind):
    _, model, _ = kind
    x, y = data_for(model, 64)
    clustered = cluster_weights(model, 4, seed=0)
    wrappers = [layer for layer in clustered.layers if isinstance(layer, ClusterWeights)]
    assert wrappers
    before = [w.cluster_centroids[0].numpy().copy() for w in wrappers]
    fit(clustered, x, y)
    assert any(not np.array_equal(b, w.cluster_centroids[0].numpy())
               for b, w in zip(before, wrappers))  # the centroids trained
    stripped = strip_clustering(clustered)
    for layer in stripped.layers:
        if isinstance(layer, (L.Conv2D, L.Dense)):
            kernel = layer.kernel.numpy()
            assert np.unique(kernel).size <= 4, layer.name
    same_outputs(clustered, stripped, x, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_qat_int8_export_within_one_step(kind):
    name, model, _ = kind
    x, y = data_for(model, 128)
    qat = quantize_model(model)
    fit(qat, x, y, epochs=1)
    tflite = export.to_tflite(qat, x)
    report = export.verify(tflite, qat, x)
    assert report["within_1_step"] >= 0.999, (name, report)
    assert report["max_diff_steps"] <= 1.0 + 1e-3, (name, report)


@pytest.mark.slow
def test_wrapped_models_of_every_kind_save_and_load(kind, tmp_path):
    _, model, _ = kind
    x, y = data_for(model, 32)
    for make in (
        lambda m: prune_low_magnitude(m, ConstantSparsity(0.5, 0, frequency=1)),
        lambda m: cluster_weights(m, 4, seed=0),
        quantize_model,
    ):
        wrapped = make(model)
        fit(wrapped, x, y, epochs=1,
            callbacks=[UpdatePruningStep()] if any(
                isinstance(layer, PruneLowMagnitude) for layer in wrapped.layers) else [])
        path = tmp_path / f"{wrapped.name}.keras"
        wrapped.save(path)
        same_outputs(wrapped, keras.saving.load_model(path), x, rtol=1e-5, atol=1e-6)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.fc = L.Dense(2)

    def call(self, x):
        return self.fc(x)


@pytest.mark.parametrize(("entry", "what_to_do"), [
    (prune_low_magnitude, (r"Wrap the layers inside the subclassed model's __init__ with "
                           r"prune_low_magnitude\(layer\)")),
    (lambda m: cluster_weights(m, 2), (r"Wrap the layers inside the subclassed model's "
                                       r"__init__ with cluster_weights\(layer, ")),
    (quantize_model, (r"Build the same network with the functional API .* or use "
                      r"post-training quantization, tfcompress.export.to_tflite\(model, "
                      r"representative_data\)")),
    (lower_model, "Rebuild it with the functional API"),
    (tfcompress.profile, r"Profile a functional or Sequential model"),
], ids=["prune_low_magnitude", "cluster_weights", "quantize_model", "lower_model", "profile"])
def test_subclassed_models_get_a_clear_error(entry, what_to_do):
    model = _Subclassed()
    model(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed") as error:
        entry(model)
    assert re.search(what_to_do, str(error.value)), str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multi_io_list", "multi_io_dict"])
def test_post_training_int8_of_several_inputs_and_outputs(name):
    keras.utils.set_random_seed(0)
    model, _ = KINDS[name]()
    x, _ = data_for(model, 64)
    tflite = export.to_tflite(model, x)  # calibrated on the model's own input structure
    report = export.verify(tflite, model, x)
    assert len(report["outputs"]) == 2
    for part, reference in zip(report["outputs"], keras.tree.flatten(model.predict(x, verbose=0))):
        # PTQ is no QAT: within a few steps, on the outputs' own scales.
        assert part["max_diff_steps"] <= 8, part
        assert part["output_scale"] > 0 and reference.shape[0] == 64
    runner = export.get_runner("litert")(tflite)
    assert sorted(runner.input_names) == ["image", "meta"]
    with pytest.raises(ValueError, match=r"has inputs \['image'\].*takes \['image', 'meta'\]"):
        export.to_tflite(model, {"image": keras.tree.flatten(x)[0]})
    with pytest.raises(ValueError, match="list of 1 arrays.*2 inputs"):
        export.to_tflite(model, [keras.tree.flatten(x)[0]])
    with pytest.raises(ValueError, match="takes 2 inputs.*list in that order or a dict"):
        export.to_tflite(model, keras.tree.flatten(x)[0])


def test_channel_pruning_of_every_kind(kind):
    name, model, _ = kind
    x, _ = data_for(model, 8)
    pruned = tfcompress.pruning.prune_channels(model, 0.5)
    assert pruned.count_params() < model.count_params(), name
    for a, b in zip(keras.tree.flatten(model.predict(x, verbose=0)),
                    keras.tree.flatten(pruned.predict(x, verbose=0))):
        assert a.shape == b.shape
