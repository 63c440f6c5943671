"""Weight sharing (Deep Compression sec. 3): k-means core, trained centroids, strip, export."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import datasets, export, models
from tfcompress.clustering import (
    CentroidInitialization,
    ClusterWeights,
    cluster_weights,
    clustering_report,
    get_weight_clusters,
    init_centroids,
    kmeans_1d,
    strip_clustering,
)

# --------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------


def reference_quantile(values, q):
    """Empirical quantile with linear interpolation between order statistics."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    h = (x.size - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, x.size - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def reference_lloyd(values, centroids, max_iter=1000):
    """Textbook Lloyd: full distance matrix, argmin, per-cluster mean; until stable."""
    v = np.asarray(values, np.float64).ravel()
    c = np.sort(np.asarray(centroids, np.float64))
    labels = None
    for _ in range(max_iter):
        new_labels = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(c.size):
            members = v[labels == j]
            if members.size:
                c[j] = members.sum() / members.size
    return c, labels


def objective(values, centroids, assignments):
    """Deep Compression eq. 1: sum_i sum_{w in c_i} |w - c_i|^2."""
    v = np.asarray(values, np.float64).ravel()
    return float(np.sum((v - np.asarray(centroids, np.float64)[assignments]) ** 2))


# --------------------------------------------------------------------------------------
# Centroid initialization
# --------------------------------------------------------------------------------------


def test_linear_init_is_linspace_of_min_to_max(rng):
    values = rng.normal(size=(40, 7))
    got = init_centroids(values, 9, "linear")
    expected = np.float32(values.min()) + (
        np.float32(values.max()) - np.float32(values.min())) * np.arange(9) / 8
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got[0] == np.float32(values.min()) and got[-1] == np.float32(values.max())
    assert got.dtype == np.float32 and got.shape == (9,)
    np.testing.assert_array_equal(init_centroids(values, 9, CentroidInitialization.LINEAR), got)


def test_density_init_is_the_quantiles_i_plus_half_over_k(rng):
    values = rng.laplace(size=1001) ** 3  # heavy tails: quantiles far from linear
    k = 6
    got = init_centroids(values, k, "density")
    expected = [reference_quantile(values, (i + 0.5) / k) for i in range(k)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # The empirical CDF at each centroid is (i + 0.5) / k (to within one sample).
    cdf = np.array([np.mean(values <= c) for c in got.astype(np.float64)])
    np.testing.assert_allclose(cdf, (np.arange(k) + 0.5) / k, atol=1.5 / values.size)
    assert np.ptp(np.diff(got)) > 1.0  # far from evenly spaced on this data


def test_random_init_picks_k_distinct_existing_values(rng):
    values = np.round(rng.normal(size=500), 1)  # many repeated values
    a = init_centroids(values, 7, "random", seed=3)
    assert len(np.unique(a)) == 7
    assert np.all(np.isin(a, values.astype(np.float32)))
    np.testing.assert_array_equal(a, init_centroids(values, 7, "random", seed=3))
    draws = {tuple(init_centroids(values, 7, "random", seed=s)) for s in range(5)}
    assert len(draws) > 1
    # Exactly k distinct values available: they are all taken.
    np.testing.assert_array_equal(init_centroids([2, 1, 2, 3, 1], 3, "random", seed=0),
                                  [1, 2, 3])


def test_kmeans_plus_plus_is_seeded_and_spreads_out(rng):
    # A dense clump at 0 and 10 outliers at 100: D^2 sampling almost surely puts a
    # centroid on the outliers; uniform (Forgy) sampling almost never does.
    values = np.concatenate([rng.normal(0, 1, 2000), rng.normal(100, 1, 10)])
    pp = [init_centroids(values, 2, "kmeans++", seed=s) for s in range(20)]
    forgy = [init_centroids(values, 2, "random", seed=s) for s in range(20)]
    assert sum(c.max() > 50 for c in pp) >= 19
    assert sum(c.max() > 50 for c in forgy) <= 2
    for c in pp:
        assert np.all(np.isin(c, values.astype(np.float32))) and len(np.unique(c)) == 2
    np.testing.assert_array_equal(init_centroids(values, 5, "kmeans++", seed=7),
                                  init_centroids(values, 5, "kmeans++", seed=7))


def test_seed_none_follows_keras_set_random_seed(rng):
    values = rng.normal(size=300)
    keras.utils.set_random_seed(11)
    a = init_centroids(values, 4, "kmeans++")
    keras.utils.set_random_seed(11)
    np.testing.assert_array_equal(a, init_centroids(values, 4, "kmeans++"))


# --------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "density", "random", "kmeans++"])
def test_kmeans_matches_textbook_lloyd(rng, method):
    values = np.concatenate([rng.normal(-1, 0.3, 400), rng.normal(0.5, 0.1, 300),
                             rng.uniform(-3, 3, 100)])
    init = init_centroids(values, 8, method, seed=1)
    centroids, assignments = kmeans_1d(values, init, max_iter=1000, tol=0)
    ref_c, ref_labels = reference_lloyd(values, init)
    np.testing.assert_allclose(centroids, ref_c, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(assignments, ref_labels)
    assert assignments.dtype == np.int32 and centroids.dtype == np.float32


def test_kmeans_objective_decreases_and_converges_to_means(rng):
    values = rng.standard_t(3, size=2000) * 0.05
    init = init_centroids(values, 16, "linear")
    costs = []
    for steps in range(12):
        c, a = kmeans_1d(values, init, max_iter=steps, tol=0)
        costs.append(objective(values, c, a))
    assert all(b <= a_ + 1e-12 for a_, b in itertools.pairwise(costs)), costs
    # Linear init is far from optimal on t(3) data (measured: 0.66 -> 0.36).
    assert costs[-1] < 0.7 * costs[0]
    c, a = kmeans_1d(values, init, max_iter=1000, tol=0)
    for j in range(16):
        members = values[a == j]
        if members.size:
            assert abs(c[j] - members.mean()) <= 1e-6 * max(1.0, abs(members.mean()))
    # Every value sits with its nearest centroid.
    nearest = np.abs(values[:, None] - c[None, :].astype(np.float64)).min(axis=1)
    np.testing.assert_allclose(np.abs(values - c[a]), nearest, atol=1e-7)


def test_kmeans_empty_cluster_keeps_its_centroid():
    centroids, assignments = kmeans_1d([0.0, 0.1, 0.9, 1.0], [0.2, 0.5, 0.8])
    np.testing.assert_allclose(centroids, [0.05, 0.5, 0.95], atol=1e-7)
    np.testing.assert_array_equal(assignments, [0, 0, 2, 2])


# --------------------------------------------------------------------------------------
# The wrapper: eq. 3, sparsity, configs
# --------------------------------------------------------------------------------------


def _dense_with_kernel(kernel, use_bias=False):
    dense = keras.layers.Dense(kernel.shape[1], use_bias=use_bias)
    dense.build((None, kernel.shape[0]))
    dense.set_weights([kernel] + ([np.zeros(kernel.shape[1])] if use_bias else []))
    return dense


def test_centroid_gradient_is_the_summed_member_gradient():
    """Deep Compression eq. 3: dL/dC_k = sum_ij dL/dW_ij 1(I_ij = k); SGD moves the
    centroid by -lr times that sum."""
    kernel = np.array([[0.1, -0.5], [0.12, 0.9], [-0.45, 0.95]], np.float32)
    wrapper = ClusterWeights(_dense_with_kernel(kernel), 2, preserve_sparsity=False)
    x = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1], [2.0, 0.1, 0.4]], np.float32)
    target = np.array([[0.5, -1.0], [1.0, 0.0], [-0.3, 0.2]], np.float32)
    wrapper(x)
    # By hand: linear init [-0.5, 0.95], midpoint 0.225 -> {-0.5, -0.45, 0.1, 0.12}
    # and {0.9, 0.95}; means -0.1825 and 0.925; the midpoint 0.37125 keeps them.
    indices = np.array([[0, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(wrapper.cluster_indices[0].numpy(), indices)
    centroids = np.array([-0.1825, 0.925], np.float32)
    np.testing.assert_allclose(wrapper.cluster_centroids[0].numpy(), centroids, atol=1e-7)

    # Independent dL/dW: a plain Dense holding the shared-weight kernel.
    plain = _dense_with_kernel(centroids[indices])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((plain(x) - target) ** 2)
    grad_w = tape.gradient(loss, plain.kernel.value).numpy()
    expected = np.array([grad_w[indices == k].sum() for k in range(2)])

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((wrapper(x) - target) ** 2)
    assert [v.path for v in wrapper.trainable_variables] == [wrapper.cluster_centroids[0].path]
    grad_c = tape.gradient(loss, wrapper.trainable_variables)[0]
    np.testing.assert_allclose(grad_c.numpy(), expected, rtol=1e-6, atol=1e-6)

    before = wrapper.cluster_centroids[0].numpy()
    keras.optimizers.SGD(0.1).apply_gradients([(grad_c, wrapper.cluster_centroids[0])])
    np.testing.assert_allclose(wrapper.cluster_centroids[0].numpy() - before, -0.1 * expected,
                               rtol=1e-5, atol=1e-6)
    # The indices do not train.
    np.testing.assert_array_equal(wrapper.cluster_indices[0].numpy(), indices)


def test_preserve_sparsity_keeps_zeros_through_fine_tuning(rng):
    keras.utils.set_random_seed(0)
    kernel = rng.normal(size=(12, 6)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.6] = 0.0
    zeros = kernel == 0
    inputs = keras.Input((12,))
    model = keras.Model(inputs, keras.layers.Dense(6, name="d")(inputs))
    model.get_layer("d").set_weights([kernel, np.zeros(6, np.float32)])
    clustered = cluster_weights(model, 4)
    (wc,) = get_weight_clusters(clustered)
    np.testing.assert_array_equal(wc.mask, ~zeros)
    assert np.all(wc.indices[zeros] == 0)
    start = wc.centroids.copy()
    # k-means on the non-zero values only.
    members = kernel[~zeros]
    c, _ = kmeans_1d(members, init_centroids(members, 4, "linear"))
    np.testing.assert_allclose(start, c, atol=1e-7)

    x = rng.normal(size=(256, 12)).astype(np.float32)
    y = rng.normal(size=(256, 6)).astype(np.float32)
    clustered.compile(keras.optimizers.Adam(0.01), "mse")
    clustered.fit(x, y, epochs=3, batch_size=32, verbose=0)
    (wc,) = get_weight_clusters(clustered)
    assert np.abs(wc.centroids - start).max() > 1e-3  # the centroids did train
    shared = clustered.get_layer("cluster_d").clustered_kernels()[0].numpy()
    assert np.all(shared[zeros] == 0) and not np.signbit(shared[zeros]).any()
    stripped = strip_clustering(clustered).get_layer("d").kernel.numpy()
    np.testing.assert_array_equal(stripped, shared)
    np.testing.assert_array_equal(stripped, wc.kernel)
    assert np.all(stripped[zeros] == 0) and np.all(stripped[~zeros] != 0)
    nonzero = np.unique(stripped[stripped != 0])
    assert nonzero.size <= 4 and np.all(np.isin(nonzero, wc.centroids))
    np.testing.assert_array_equal(
        strip_clustering(clustered).predict(x, verbose=0), clustered.predict(x, verbose=0))


def test_without_preserve_sparsity_zeros_join_clusters(rng):
    kernel = rng.normal(size=(10, 4)).astype(np.float32)
    kernel[:5] = 0.0
    wrapper = ClusterWeights(_dense_with_kernel(kernel), 3, preserve_sparsity=False)
    wrapper(np.ones((1, 10), np.float32))
    assert wrapper.sparsity_masks == []
    c, a = kmeans_1d(kernel, init_centroids(kernel, 3, "linear"))
    np.testing.assert_array_equal(wrapper.cluster_indices[0].numpy().ravel(), a)
    np.testing.assert_allclose(wrapper.clustered_kernels()[0].numpy(), c[a].reshape(10, 4),
                               atol=1e-7)


def test_multi_kernel_layers_and_conv_strip_exactly(rng):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.SeparableConv2D(5, 3, name="sep")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    clustered = cluster_weights(model, 5, cluster_centroids_init="kmeans++", seed=2)
    assert isinstance(clustered.get_layer("bn"), keras.layers.BatchNormalization)
    sep = clustered.get_layer("cluster_sep")
    assert len(sep.cluster_centroids) == 2
    assert [wc.weight for wc in get_weight_clusters(clustered)] == [
        "kernel", "depthwise_kernel", "pointwise_kernel"]
    data = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    stripped = strip_clustering(clustered)
    np.testing.assert_allclose(stripped.predict(data, verbose=0),
                               clustered.predict(data, verbose=0), atol=1e-6)
    for row in clustering_report(stripped):
        assert row["distinct_nonzero"] <= 5 and row["clusters"] is None
    for name in ("depthwise_kernel", "pointwise_kernel"):
        assert np.unique(getattr(stripped.get_layer("sep"), name).numpy()).size <= 5
    # Same seed, same clustering.
    again = cluster_weights(model, 5, cluster_centroids_init="kmeans++", seed=2)
    for a, b in zip(get_weight_clusters(clustered), get_weight_clusters(again)):
        np.testing.assert_array_equal(a.centroids, b.centroids)


def test_sequential_dict_of_clusters_and_original_untouched(rng):
    model = keras.Sequential([
        keras.Input((7,)),
        keras.layers.Dense(9, activation="relu", name="a"),
        keras.layers.Dropout(0.2, name="drop"),
        keras.layers.Dense(3, name="b"),
    ])
    original = [w.copy() for w in model.get_weights()]
    clustered = cluster_weights(model, {"b": 3})
    assert isinstance(clustered, keras.Sequential)
    assert [layer.name for layer in clustered.layers] == ["a", "drop", "cluster_b"]
    for w_new, w_old in zip(clustered.get_layer("a").get_weights(), original[:2]):
        np.testing.assert_array_equal(w_new, w_old)
    clustered.compile("adam", "mse")
    clustered.fit(rng.normal(size=(32, 7)), rng.normal(size=(32, 3)), epochs=2, verbose=0)
    for w_new, w_old in zip(model.get_weights(), original):
        np.testing.assert_array_equal(w_new, w_old)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    stripped = strip_clustering(clustered)
    assert isinstance(stripped, keras.Sequential)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0),
                               atol=1e-6)
    assert np.unique(stripped.get_layer("b").kernel.numpy()).size <= 3
    assert np.unique(stripped.get_layer("a").kernel.numpy()).size == 7 * 9


def test_config_round_trip_and_layer_api():
    dense = _dense_with_kernel(np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5)
    wrapper = cluster_weights(dense, 4, "density", preserve_sparsity=False, seed=5)
    assert isinstance(wrapper, ClusterWeights) and wrapper.name == "cluster_" + dense.name
    config = wrapper.get_config()
    assert {k: config[k] for k in ("number_of_clusters", "cluster_centroids_init",
                                   "preserve_sparsity", "seed")} == {
        "number_of_clusters": 4, "cluster_centroids_init": "density",
        "preserve_sparsity": False, "seed": 5}
    clone = ClusterWeights.from_config(config)
    clone_config = clone.get_config()
    assert clone_config["layer"]["config"] == config["layer"]["config"]
    assert {k: v for k, v in clone_config.items() if k != "layer"} == {
        k: v for k, v in config.items() if k != "layer"}
    assert set(config) == {"name", "trainable", "dtype", "layer", "number_of_clusters",
                           "cluster_centroids_init", "preserve_sparsity", "seed"}
    # An unbuilt layer is clustered from its initial weights at the first call.
    fresh = ClusterWeights(keras.layers.Dense(3), 2)
    out = fresh(np.ones((2, 5), np.float32))
    assert out.shape == (2, 3)
    assert np.unique(fresh.clustered_kernels()[0].numpy()).size == 2


# --------------------------------------------------------------------------------------
# LeNet-300-100 on digits: accuracy, strip, save/load, int8 export
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="module")
def lenet_clustered(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = models.lenet_300_100(input_shape=(8, 8, 1))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    clustered = cluster_weights(model, 16)
    clustered.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    clustered.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model, before, clustered


@pytest.mark.slow
def test_lenet_clustered_to_16_values_keeps_accuracy(digits, lenet_clustered):
    (_, _), (xt, yt) = digits
    model, before, clustered = lenet_clustered
    for w_now, w_before in zip(model.get_weights(), before):  # original untouched
        np.testing.assert_array_equal(w_now, w_before)
    assert [v.path for v in clustered.trainable_variables] == [
        f"cluster_{n}/cluster_centroids" if i % 2 == 0 else f"{n}/bias"
        for n in ("fc1", "fc2", "predictions") for i in range(2)]
    float_acc = model.evaluate(xt, yt, verbose=0)[1]
    clustered_acc = clustered.evaluate(xt, yt, verbose=0)[1]
    # Measured: float 0.972, clustered and fine-tuned 0.972 (seed 0).
    assert float_acc > 0.94
    assert clustered_acc >= float_acc - 0.02, (float_acc, clustered_acc)
    stripped = strip_clustering(clustered)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(stripped.predict(xt, verbose=0),
                               clustered.predict(xt, verbose=0), atol=1e-6)
    report = clustering_report(stripped)
    assert [r["layer"] for r in report] == ["fc1", "fc2", "predictions"]
    assert [r["distinct_nonzero"] for r in report] == [16, 16, 16]
    assert [r["index_bits"] for r in report] == [4, 4, 4]
    for wc in get_weight_clusters(clustered):
        kernel = stripped.get_layer(wc.layer).kernel.numpy()
        np.testing.assert_array_equal(kernel, wc.centroids[wc.indices])
        assert wc.indices.min() >= 0 and wc.indices.max() < 16


def test_clustered_model_saves_and_loads(tmp_path, digits, lenet_clustered):
    (x, y), (xt, _) = digits
    clustered = lenet_clustered[2]
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(xt, verbose=0), clustered.predict(xt, verbose=0))
    for a, b in zip(get_weight_clusters(clustered), get_weight_clusters(loaded)):
        np.testing.assert_array_equal(a.centroids, b.centroids)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.mask, b.mask)
    # Loaded, it fine-tunes the centroids only; the indices stay.
    loaded.compile("adam", "sparse_categorical_crossentropy")
    loaded.fit(x[:64], y[:64], epochs=1, verbose=0)
    for a, b in zip(get_weight_clusters(clustered), get_weight_clusters(loaded)):
        np.testing.assert_array_equal(a.indices, b.indices)


def test_loading_does_not_recluster_a_degenerate_fresh_layer(tmp_path, rng):
    """On load, `build` meets the freshly initialized (here all-zero) layer before
    the saved values arrive: that must not be an error, and the saved state wins."""
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(4, kernel_initializer="zeros", name="z")(
        inputs))
    model.get_layer("z").set_weights([rng.normal(size=(5, 4)), rng.normal(size=4)])
    clustered = cluster_weights(model, 3)
    clustered.save(tmp_path / "zeros.keras")
    loaded = keras.saving.load_model(tmp_path / "zeros.keras")
    x = rng.normal(size=(6, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0))
    # Wrapping the all-zero layer directly is an error, naming the counts.
    with pytest.raises(ValueError, match=r"=3 .*distinct non-zero values.*\(0\)"):
        cluster_weights(keras.Model(inputs, keras.layers.Dense(
            4, kernel_initializer="zeros")(inputs)), 3)


def test_stripped_clustered_model_exports_int8(digits, lenet_clustered):
    (x, _), (xt, _) = digits
    stripped = strip_clustering(lenet_clustered[2])
    tflite = export.to_tflite(stripped, representative_data=x[:200])
    export.check_integer_only(tflite, stripped)
    assert export.verify(tflite, stripped, xt)["argmax_agreement"] >= 0.99


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors_name_the_problem(rng):
    values = rng.normal(size=50)
    for bad in (1, 0, -3, True, 2.0, "4"):
        with pytest.raises(ValueError, match=r"integer >= 2.*number_of_clusters="):
            init_centroids(values, bad, "linear")
    with pytest.raises(ValueError, match=r"number_of_clusters`=4 .*distinct values.*\(3\)"):
        init_centroids([1.0, 2.0, 2.0, 3.0], 4, "linear")
    with pytest.raises(ValueError, match="'linear', 'density', 'random', 'kmeans\\+\\+'.*'forgy'"):
        init_centroids(values, 3, "forgy")

    kernel = np.zeros((4, 3), np.float32)
    kernel[0] = [0.5, -0.5, 0.25]  # 3 distinct non-zero values
    dense = _dense_with_kernel(kernel)
    with pytest.raises(ValueError, match=r"=4 .*distinct non-zero values.*\(3\).*'kernel'"):
        ClusterWeights(dense, 4).build((None, 4))
    with pytest.raises(ValueError, match="number_of_clusters=1"):
        ClusterWeights(dense, 1)
    with pytest.raises(ValueError, match="number_of_clusters=True"):
        ClusterWeights(dense, True)
    with pytest.raises(ValueError, match="cluster_centroids_init='uniform'"):
        ClusterWeights(dense, 2, cluster_centroids_init="uniform")
    with pytest.raises(ValueError, match="seed=-1"):
        ClusterWeights(dense, 2, seed=-1)
    with pytest.raises(ValueError, match=r"'my_bn' \(BatchNormalization\) has no weights to "
                                         r"cluster\. Supported: .*Dense"):
        ClusterWeights(keras.layers.BatchNormalization(name="my_bn"), 4)

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="norm")(hidden))
    with pytest.raises(ValueError, match="'nope'.*Its layers: .*hidden, norm"):
        cluster_weights(model, {"nope": 4})
    with pytest.raises(ValueError, match="'norm' \\(BatchNormalization\\) has no weights"):
        cluster_weights(model, {"norm": 4})
    clustered = cluster_weights(model, 3)
    with pytest.raises(ValueError, match="already clustered.*cluster_hidden"):
        cluster_weights(clustered, 3)
    with pytest.raises(ValueError, match="already clustered"):
        cluster_weights(clustered.get_layer("cluster_hidden"), 3)
