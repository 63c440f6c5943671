"""Subclassed models (issue 17, item 4): pruning and clustering wrappers set in `__init__`.

`prune_low_magnitude(layer)` / `cluster_weights(layer, k)` inside a subclassed model's
`__init__` (also inside a custom layer it holds) train with `fit` and
`UpdatePruningStep`; `strip_pruning` / `strip_clustering` return the functional model
the model's `call()` traces to, with plain layers holding `W * mask` / `C[I]`; that
saves and loads; `to_tflite(model, data)` exports the subclassed model itself (PTQ
through its traced function). Model-level entry points that need a graph say what to
do instead.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tfcompress import datasets, export
from tfcompress.clustering import ClusterWeights, cluster_weights, strip_clustering
from tfcompress.core.graph import all_layers
from tfcompress.pruning import (
    ConstantSparsity,
    PruneLowMagnitude,
    Pruner,
    UpdatePruningStep,
    get_pruning_masks,
    prune_low_magnitude,
    strip_pruning,
)
from tfcompress.quantization import quantize_model

L = keras.layers
IMAGE = (8, 8, 1)


def every_step(sparsity):
    return ConstantSparsity(sparsity, 0, frequency=1)


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class PrunedBlock(L.Layer):
    """A custom layer holding a pruning wrapper (no weights of its own)."""

    def __init__(self, units=12, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc = prune_low_magnitude(
            L.Dense(units, activation="relu", name="block_fc"), every_step(0.75)
        )

    def call(self, x):
        return self.fc(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class PrunedNet(keras.Model):
    """conv (pruned) -> flatten -> block (a pruned Dense inside) -> + 1 -> head."""

    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.conv = prune_low_magnitude(
            L.Conv2D(4, 3, padding="same", activation="relu", name="conv"), every_step(0.5)
        )
        self.flat = L.Flatten(name="flat")
        self.block = PrunedBlock(name="block")
        self.shift = L.Rescaling(1.0, offset=1.0, name="shift")
        self.head = L.Dense(classes, name="head")

    def call(self, x):
        return self.head(self.shift(self.block(self.flat(self.conv(x)))))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class ClusteredNet(keras.Model):
    """conv (clustered) -> global pooling -> dense (clustered)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = cluster_weights(
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv"), 4, seed=0
        )
        self.pool = L.GlobalAveragePooling2D(name="pool")
        self.fc = cluster_weights(L.Dense(10, name="fc"), 4, seed=1)

    def call(self, x):
        return self.fc(self.pool(self.conv(x)))


class OneLayerNet(keras.Model):
    """flatten -> pruned Dense: one weighted layer (no get_config: not copyable)."""

    def __init__(self):
        super().__init__(name="one_layer")
        self.flat = L.Flatten()
        self.fc = prune_low_magnitude(L.Dense(10, name="fc"), every_step(0.5))

    def call(self, inputs):
        return self.fc(self.flat(inputs))


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = datasets.load("digits")
    return x[:128], y[:128]


def train(model, x, y, epochs=2, callbacks=()):
    model(x[:1])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


@pytest.fixture(scope="module")
def pruned(digits):
    keras.utils.set_random_seed(0)
    x, y = digits
    return train(PrunedNet(name="pruned_net"), x, y, callbacks=[UpdatePruningStep()])


def as_functional(model):
    """`verify` reads `model.inputs`, which a subclassed model lacks: the same model as
    one node of a functional model."""
    inputs = keras.Input(IMAGE)
    return keras.Model(inputs, model(inputs))


def node_counts(model):
    return [(len(layer._inbound_nodes), len(layer._outbound_nodes))
            for layer in all_layers(model)]


def test_update_pruning_step_finds_the_wrappers_also_in_custom_layers(pruned):
    wrappers = Pruner(pruned).wrappers
    assert [w.layer.name for w in wrappers] == ["conv", "block_fc"]
    assert wrappers[1] is pruned.block.fc
    # 128 examples / 32 = 4 batches a epoch, 2 epochs: the first batch was step 0.
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [7, 7]
    masks = get_pruning_masks(pruned)
    for wrapper, sparsity in zip(wrappers, (0.5, 0.75)):
        mask = masks[f"{wrapper.layer.name}/kernel"]
        assert np.sum(mask == 0) == round(sparsity * mask.size)
        kernel = wrapper.layer.kernel.numpy()
        # Kept at exactly zero by the constraint; the kept ones trained.
        assert np.all(kernel[mask == 0] == 0)
        assert np.count_nonzero(kernel[mask == 1]) == np.sum(mask == 1)


def test_fit_builds_an_uncalled_subclassed_model_and_prunes_from_its_second_batch(digits):
    keras.utils.set_random_seed(0)
    x, y = digits
    model = PrunedNet()
    assert not model.built
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    wrappers = Pruner(model).wrappers
    # 4 batches: the first builds the model (unpruned), the second is step 0.
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [2, 2]
    for wrapper, sparsity in zip(wrappers, (0.5, 0.75)):
        mask = wrapper.pruning_masks[0].numpy()
        assert np.sum(mask == 0) == round(sparsity * mask.size)
        assert np.all(wrapper.layer.kernel.numpy()[mask == 0] == 0)


def test_pruned_subclassed_model_saves_and_loads(pruned, digits, tmp_path):
    x, _ = digits
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    for name, mask in get_pruning_masks(pruned).items():
        np.testing.assert_array_equal(get_pruning_masks(loaded)[name], mask)
    assert int(loaded.block.fc.pruning_step.numpy()) == 7


def test_strip_pruning_of_a_subclassed_model(pruned, digits, tmp_path):
    x, _ = digits
    weights = [w.copy() for w in pruned.get_weights()]
    nodes = node_counts(pruned)
    expected = {  # W * mask, computed here from the trained wrappers
        w.layer.name: np.where(w.pruning_masks[0].numpy() == 0, 0.0, w.layer.kernel.numpy())
        for w in Pruner(pruned).wrappers
    }
    stripped = strip_pruning(pruned)
    assert isinstance(stripped, keras.Model) and stripped.name == "pruned_net"
    assert [type(layer).__name__ for layer in stripped.layers] == [
        "InputLayer", "Conv2D", "Flatten", "Dense", "Rescaling", "Dense"]
    for name, kernel in expected.items():
        got = stripped.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(got, kernel)
        mask = get_pruning_masks(pruned)[f"{name}/kernel"]
        assert np.all(got[mask == 0] == 0)
        np.testing.assert_array_equal(got[mask == 1], pruned_kernel(pruned, name)[mask == 1])
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    # The input model is unchanged: same weights, same wrappers, no recorded calls left.
    for before, after in zip(weights, pruned.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert node_counts(pruned) == nodes
    assert isinstance(pruned.block.fc, PruneLowMagnitude)
    # Plain layers only: it loads back equal.
    stripped.save(tmp_path / "stripped.keras")
    loaded = keras.saving.load_model(tmp_path / "stripped.keras")
    assert not any(isinstance(layer, (PruneLowMagnitude, PrunedBlock))
                   for layer in all_layers(loaded, sublayers=True))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))


def pruned_kernel(model, name):
    (wrapper,) = [w for w in Pruner(model).wrappers if w.layer.name == name]
    return wrapper.layer.kernel.numpy()


def test_strip_pruning_of_one_wrapper(pruned):
    dense = strip_pruning(pruned.block.fc)
    assert type(dense) is L.Dense and dense.name == "block_fc"
    mask = pruned.block.fc.pruning_masks[0].numpy()
    np.testing.assert_array_equal(
        dense.kernel.numpy(), pruned.block.fc.layer.kernel.numpy() * mask)
    np.testing.assert_array_equal(dense.bias.numpy(), pruned.block.fc.layer.bias.numpy())


def test_ptq_int8_export_of_a_subclassed_model(digits):
    keras.utils.set_random_seed(0)
    x, y = digits
    model = train(OneLayerNet(), x, y, callbacks=[UpdatePruningStep()])
    tflite = export.to_tflite(model, x)
    runner = export.get_runner("litert")(tflite)
    assert runner.input_names == ["inputs"]  # the argument of call()
    report = export.verify(tflite, as_functional(model), x)
    assert report["within_1_step"] >= 0.99, report
    assert report["argmax_agreement"] >= 0.95, report  # close logits may swap by a step


def test_ptq_of_the_subclassed_model_is_the_ptq_of_its_stripped_model(pruned, digits):
    # Deeper PTQ is no QAT (each requantization rounds): the file of the subclassed
    # model must compute what the file of its stripped functional twin computes.
    x, _ = digits
    subclassed = export.to_tflite(pruned, x)
    functional = export.to_tflite(strip_pruning(pruned), x)
    a, _ = export.run_tflite(subclassed, x, 64)
    b, _ = export.run_tflite(functional, x, 64)
    scale = export.get_runner("litert")(subclassed).output_details[
        export.get_runner("litert")(subclassed).output_names[0]]["quantization"][0]
    assert scale > 0
    assert np.max(np.abs(a.astype(np.float64) - b)) <= scale * (1 + 1e-3)
    report = export.verify(subclassed, as_functional(pruned), x)
    assert report["max_diff_steps"] <= 4, report
    assert report["argmax_agreement"] >= 0.95, report
    export.check_integer_only(subclassed, pruned)


def test_cluster_weights_in_init_clusters_the_initial_weights(digits):
    # Keras builds a subclassed model by a symbolic call first: the k-means of each
    # (just built) layer must still be what its variables hold.
    keras.utils.set_random_seed(0)
    model = ClusteredNet()
    model(digits[0][:1])
    assert model.get_build_config() == {"input_shape": (1,) + IMAGE}
    for wrapper in (model.conv, model.fc):
        kernel = wrapper.layer.kernel.numpy().ravel()  # the unused original, as built
        centroids = wrapper.cluster_centroids[0].numpy()
        indices = wrapper.cluster_indices[0].numpy().ravel()
        assert np.unique(indices).size == 4
        # A k-means fixed point: every weight at its nearest centroid, every
        # centroid the mean of its members.
        nearest = np.argmin(np.abs(kernel[:, None] - centroids[None, :]), axis=1)
        np.testing.assert_array_equal(indices, nearest)
        means = [kernel[indices == k].mean() for k in range(4)]
        np.testing.assert_allclose(centroids, means, atol=1e-3 * np.ptp(kernel))


def test_clustered_subclassed_model_trains_strips_saves_and_exports(digits, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = digits
    model = ClusteredNet(name="clustered_net")
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)  # built by fit itself
    for wrapper in (model.conv, model.fc):
        assert np.unique(wrapper.cluster_indices[0].numpy()).size == 4
        assert np.ptp(wrapper.cluster_centroids[0].numpy()) > 0
    stripped = strip_clustering(model)
    assert not any(isinstance(layer, ClusterWeights) for layer in stripped.layers)
    for wrapper in (model.conv, model.fc):
        kernel = stripped.get_layer(wrapper.layer.name).kernel.numpy()
        centroids = wrapper.cluster_centroids[0].numpy()
        indices = wrapper.cluster_indices[0].numpy()
        mask = wrapper.sparsity_masks[0].numpy()
        np.testing.assert_array_equal(kernel, np.where(mask > 0, centroids[indices], 0.0))
        assert np.unique(kernel).size <= 4
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    stripped.save(tmp_path / "clustered.keras")
    loaded = keras.saving.load_model(tmp_path / "clustered.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))
    model.save(tmp_path / "wrapped.keras")  # the wrapped subclassed model too
    wrapped = keras.saving.load_model(tmp_path / "wrapped.keras")
    np.testing.assert_array_equal(wrapped.predict(x, verbose=0), model.predict(x, verbose=0))
    report = export.verify(export.to_tflite(model, x), as_functional(model), x)
    assert report["max_diff_steps"] <= 4 and report["argmax_agreement"] >= 0.95, report


def test_strip_clustering_of_one_wrapper():
    wrapper = cluster_weights(L.Dense(6, name="fc"), 3, seed=0)
    wrapper(np.ones((1, 5), "float32"))
    dense = strip_clustering(wrapper)
    assert type(dense) is L.Dense and dense.name == "fc"
    centroids = wrapper.cluster_centroids[0].numpy()
    expected = np.where(wrapper.sparsity_masks[0].numpy() > 0,
                        centroids[wrapper.cluster_indices[0].numpy()], 0.0)
    np.testing.assert_array_equal(dense.kernel.numpy(), expected)
    assert np.unique(dense.kernel.numpy()).size <= 3


def built(model, shape=IMAGE):
    model(np.zeros((1,) + shape, "float32"))
    return model


@pytest.mark.parametrize(("entry", "message"), [
    (prune_low_magnitude, (r"wrap the layers inside the subclassed model's __init__ with "
                           r"prune_low_magnitude\(layer\)")),
    (lambda m: cluster_weights(m, 4), (r"wrap the layers inside the subclassed model's "
                                       r"__init__ with cluster_weights\(layer, ")),
    (quantize_model, (r"needs a functional or Sequential model.*functional API.*"
                      r"to_tflite\(model, representative_data\), which works for subclassed")),
], ids=["prune_low_magnitude", "cluster_weights", "quantize_model"])
def test_model_level_entry_points_say_what_to_do(entry, message):
    with pytest.raises(ValueError, match=f"(?is)(?=.*subclassed model 'one_layer')(?=.*{message})"):
        entry(built(OneLayerNet()))


class TensorFlowCall(keras.Model):
    """Runs on tensors (and so builds), but a TensorFlow function takes no KerasTensor."""

    def __init__(self):
        super().__init__(name="tf_call")
        self.fc = prune_low_magnitude(L.Dense(2), every_step(0.5))

    def call(self, x):
        return tf.nn.relu(self.fc(x))


class WeightedBlock(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = prune_low_magnitude(L.Dense(3), every_step(0.5))

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return self.fc(x) * self.scale


class HoldsWeightedBlock(keras.Model):
    def __init__(self):
        super().__init__(name="holds_block")
        self.block = WeightedBlock(name="weighted_block")

    def call(self, x):
        return self.block(x)


class TwoInputs(keras.Model):
    def __init__(self):
        super().__init__(name="two_inputs")
        self.fc = L.Dense(2)

    def call(self, inputs):
        return self.fc(ops.concatenate(inputs, axis=-1))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"no build shape \(it was never called on data.*call it once on a batch"):
        strip_pruning(OneLayerNet())
    with pytest.raises(ValueError, match=r"tf_call.*call\(\) on keras.Input of shape "
                                         r"\(1, 4\), which failed"):
        strip_pruning(built(TensorFlowCall(), (4,)))
    with pytest.raises(ValueError, match=r"cannot reach PruneLowMagnitude layer\(s\) "
                                         r"prune_low_magnitude_dense_\d+ .*weights of its own"):
        strip_pruning(built(HoldsWeightedBlock(), (4,)))
    with pytest.raises(ValueError, match="'one_layer' has no input shape yet: call it once"):
        export.to_tflite(OneLayerNet(), np.zeros((4,) + IMAGE, "float32"))
    with pytest.raises(ValueError, match=r"has shape \(4, 8, 8\), but model 'one_layer' takes "
                                         r"inputs of shape \(N,\) \+ \(8, 8, 1\)"):
        export.to_tflite(built(OneLayerNet()), np.zeros((4, 8, 8), "float32"))
    two = TwoInputs()
    two([np.zeros((1, 2), "float32"), np.zeros((1, 3), "float32")])
    with pytest.raises(ValueError, match="takes several input tensors.*functional API"):
        export.to_tflite(two, mode="float32")
