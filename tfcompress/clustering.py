"""Weight sharing (weight clustering) with trained centroids, as in Deep Compression.

Han, Mao, Dally. "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding", ICLR 2016, arXiv:1510.00149, section 3.

The n weights W = {w_1, ..., w_n} of a layer's weight matrix are partitioned into
k clusters C = {c_1, ..., c_k} by 1-D k-means, minimising the within-cluster sum
of squares (sec. 3.1, eq. 1):

    argmin_C  sum_{i=1..k} sum_{w in c_i} |w - c_i|^2

Each weight is then stored as a log2(k)-bit index I_ij into a table of k shared
float values (the centroids). During fine-tuning the indices stay fixed and the
centroids train: the gradient of a centroid is the sum of the gradients of the
weights that share it (sec. 3.3, eq. 3):

    dL/dC_k = sum_{i,j} dL/dW_ij * 1(I_ij = k)

which is exactly what automatic differentiation of W = C[I] (a gather) gives, so
the wrapper below computes its kernel as `ops.take(centroids, indices)` and lets
any Keras optimizer update the centroids.

The centroid initialization matters (sec. 3.2 compares Forgy (random),
density-based and linear initialization and finds linear best, because it keeps
the few large weights, which matter most, as centroids). This module offers
"linear", "density", "random" (Forgy) and "kmeans++" (Arthur and Vassilvitskii,
"k-means++: The Advantages of Careful Seeding", SODA 2007).

With `preserve_sparsity=True` (the Deep Compression pipeline: prune first, then
share), weights that are exactly zero are not cluster members: a fixed 0/1 mask
keeps them exactly zero through fine-tuning and in the stripped model.

The API mirrors `tensorflow_model_optimization.clustering.keras`:
`cluster_weights`, `strip_clustering`, `CentroidInitialization`, so that porting
code means changing an import.

Example:
    >>> clustered = cluster_weights(trained_model, number_of_clusters=16)
    >>> clustered.compile("adam", "sparse_categorical_crossentropy")
    >>> clustered.fit(x, y, epochs=1)            # fine-tunes the centroids
    >>> final = strip_clustering(clustered)      # plain layers, <= 16 values each
"""

import dataclasses
import enum
import inspect
import numbers

import keras
import numpy as np
from keras import ops

from tfcompress import _weights
from tfcompress._cloning import (
    built_copy,
    check_layer_names,
    check_model,
    copy_weights_by_name,
    fresh_copy,
)

__all__ = [
    "INIT_METHODS",
    "CentroidInitialization",
    "ClusterWeights",
    "WeightClusters",
    "cluster_weights",
    "clustering_report",
    "get_weight_clusters",
    "init_centroids",
    "kmeans_1d",
    "strip_clustering",
]

INIT_METHODS = ("linear", "density", "random", "kmeans++")


class CentroidInitialization(str, enum.Enum):
    """Names of the centroid initializations (tfmot's `CentroidInitialization`).

    Members compare equal to their strings, so `CentroidInitialization.LINEAR`
    and `"linear"` are interchangeable wherever an initialization is asked for.
    """

    LINEAR = "linear"
    DENSITY_BASED = "density"
    RANDOM = "random"
    KMEANS_PLUS_PLUS = "kmeans++"


# --------------------------------------------------------------------------------------
# NumPy core
# --------------------------------------------------------------------------------------


def _check_method(method):
    value = method.value if isinstance(method, CentroidInitialization) else method
    if not isinstance(value, str) or value not in INIT_METHODS:
        raise ValueError(
            f"`cluster_centroids_init` must be one of {', '.join(repr(m) for m in INIT_METHODS)}. "
            f"Received: cluster_centroids_init={method!r}"
        )
    return value


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2:
        raise ValueError(
            f"`number_of_clusters` must be an integer >= 2. Received: number_of_clusters={k!r}"
        )
    return int(k)


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be None or an integer >= 0. Received: seed={seed!r}")
    return int(seed)


def _as_values(values):
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("Cannot cluster an empty set of values.")
    if not np.all(np.isfinite(values)):
        raise ValueError("Cannot cluster values that contain NaN or infinity.")
    return values


def _generator(seed):
    # seed=None draws the seed from NumPy's global generator, so that
    # `keras.utils.set_random_seed` makes the result reproducible.
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    return np.random.default_rng(seed)


def init_centroids(values, k, method="linear", seed=None):
    """Initial centroids for k-means on a set of scalar weights.

    Methods (Han et al., Deep Compression, sec. 3.2; `values` is flattened, with
    n elements, min m and max M):

    * "linear": `np.linspace(m, M, k)`, k evenly spaced values from the
      smallest to the largest weight. The paper's best: it keeps large weights.
    * "density": the centroids are the empirical quantiles
      `c_i = Q((i + 0.5) / k)`, i = 0..k-1, with `Q = np.quantile(values, q)`
      (NumPy's default "linear" interpolation between order statistics), i.e.
      the CDF is spaced evenly on the y-axis and inverted, as in the paper's
      Figure 4.
    * "random" (Forgy): k distinct observations. The values are visited in a
      random order (a seeded permutation) and the first k distinct ones are
      taken, so a value is picked with a probability that grows with how often
      it occurs.
    * "kmeans++" (Arthur and Vassilvitskii, SODA 2007): the first centroid is a
      uniformly drawn observation; each next one is an observation drawn with
      probability D(x)^2 / sum_x D(x)^2, D(x) being its distance to the nearest
      centroid chosen so far.

    Args:
        values: array-like of finite floats (any shape; flattened).
        k: number of centroids, an integer with 2 <= k <= the number of distinct
            values.
        method: one of "linear", "density", "random", "kmeans++" (or a
            `CentroidInitialization` member).
        seed: integer seed of the random methods; None draws one from NumPy's
            global generator (reproducible after `keras.utils.set_random_seed`).
            "linear" and "density" are deterministic.

    Returns:
        A float32 array of shape (k,), sorted ascending.

    Raises:
        ValueError: for k not an integer >= 2 (booleans included), k larger than
            the number of distinct values, an unknown method, or empty or
            non-finite values.

    Example:
        >>> init_centroids([0.0, 1.0, 3.0, 4.0], 3, "linear")
        array([0., 2., 4.], dtype=float32)
    """
    method = _check_method(method)
    k = _check_k(k)
    seed = _check_seed(seed)
    values = _as_values(values)
    distinct = np.unique(values)
    if k > distinct.size:
        raise ValueError(
            f"`number_of_clusters`={k} is larger than the number of distinct values to "
            f"cluster ({distinct.size})."
        )
    if method == "linear":
        centroids = np.linspace(values.min(), values.max(), k)
    elif method == "density":
        centroids = np.quantile(values, (np.arange(k) + 0.5) / k)
    elif method == "random":
        shuffled = values[_generator(seed).permutation(values.size)]
        _, first = np.unique(shuffled, return_index=True)
        centroids = shuffled[np.sort(first)[:k]]
    else:  # kmeans++
        rng = _generator(seed)
        chosen = [values[rng.integers(values.size)]]
        dist2 = (values - chosen[0]) ** 2
        for _ in range(1, k):
            total = dist2.sum()
            # k <= distinct values, so some value is still at a positive distance.
            index = rng.choice(values.size, p=dist2 / total)
            chosen.append(values[index])
            dist2 = np.minimum(dist2, (values - values[index]) ** 2)
        centroids = np.asarray(chosen)
    return np.sort(centroids).astype(np.float32)


def _assign(values, centroids):
    """Index of the nearest centroid (centroids sorted; ties go to the lower one)."""
    midpoints = (centroids[:-1] + centroids[1:]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def kmeans_1d(values, centroids, max_iter=100, tol=1e-6):
    """Lloyd's algorithm for scalar values, vectorised.

    Alternates (1) assigning each value to its nearest centroid (the centroids
    are kept sorted, so this is a binary search of the midpoints between
    neighbours, `np.searchsorted`; a value exactly at a midpoint goes to the
    lower centroid) and (2) moving each centroid to the mean of its members; a
    centroid without members keeps its previous value. Each iteration does not
    increase the k-means objective `sum_i sum_{w in c_i} |w - c_i|^2`
    (Deep Compression, eq. 1). Computation is in float64.

    Args:
        values: array-like of finite floats (any shape; flattened).
        centroids: array-like of initial centroids (any order), e.g. from
            `init_centroids`.
        max_iter: maximum number of update steps (an integer >= 0).
        tol: stop once the largest centroid move is <= tol * (max - min) of
            the values; the loop also stops as soon as no assignment changes.

    Returns:
        A tuple `(centroids, assignments)`: float32 centroids of shape (k,),
        sorted ascending, and int32 assignments with the shape of the flattened
        values, `assignments[j]` the index of the centroid nearest `values[j]`.

    Raises:
        ValueError: for empty or non-finite values or centroids, or a negative
            `max_iter` / `tol`.

    Example:
        >>> c, a = kmeans_1d([0.0, 0.1, 0.9, 1.0], [0.2, 0.8])
        >>> c, a
        (array([0.05, 0.95], dtype=float32), array([0, 0, 1, 1], dtype=int32))
    """
    values = _as_values(values)
    centroids = np.sort(np.asarray(centroids, dtype=np.float64).ravel())
    if centroids.size == 0 or not np.all(np.isfinite(centroids)):
        raise ValueError(f"`centroids` must be a non-empty finite array. Received: {centroids!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        raise ValueError(f"`max_iter` must be an integer >= 0. Received: max_iter={max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"`tol` must be >= 0. Received: tol={tol!r}")
    k = centroids.size
    threshold = tol * (values.max() - values.min())
    assignments = _assign(values, centroids)
    for _ in range(max_iter):
        sums = np.bincount(assignments, weights=values, minlength=k)
        counts = np.bincount(assignments, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        # 1-D Lloyd keeps the order; sorting only guards against ties in the init.
        updated = np.sort(updated)
        new_assignments = _assign(values, updated)
        shift = np.abs(updated - centroids).max()
        unchanged = np.array_equal(new_assignments, assignments)
        centroids, assignments = updated, new_assignments
        if unchanged or shift <= threshold:
            break
    return centroids.astype(np.float32), assignments.astype(np.int32)


def _cluster_kernel(kernel, k, method, preserve_sparsity, seed, where=""):
    """Centroids (float64), indices (int32, kernel shape) and mask (bool or None)."""
    kernel = np.asarray(kernel)
    if preserve_sparsity:
        mask = kernel != 0
        members = kernel[mask]
        what = "distinct non-zero values"
    else:
        mask = None
        members = kernel.ravel()
        what = "distinct values"
    distinct = np.unique(members).size
    if k > distinct:
        raise ValueError(
            f"`number_of_clusters`={k} is larger than the number of {what} to cluster "
            f"({distinct}){where}."
        )
    centroids = init_centroids(members, k, method, seed)
    centroids, assignments = kmeans_1d(members, centroids)
    indices = np.zeros(kernel.shape, np.int32)
    if preserve_sparsity:
        indices[mask] = assignments
    else:
        indices = assignments.reshape(kernel.shape)
    return centroids, indices, mask


def _clustered_numpy(centroids, indices, mask):
    """centroids[indices], zero where the mask is 0: bit-identical to `ClusterWeights`."""
    values = np.asarray(centroids)[np.asarray(indices)]
    if mask is None:
        return values
    return np.where(np.asarray(mask) > 0, values, np.zeros((), values.dtype))


# --------------------------------------------------------------------------------------
# The wrapper layer
# --------------------------------------------------------------------------------------


def _unsupported(layer):
    return ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no weights to cluster. "
        f"Supported: {', '.join(_weights.supported_layer_names())}, or any layer that "
        "defines get_prunable_weights()."
    )


@keras.saving.register_keras_serializable(package="tfcompress")
class ClusterWeights(keras.layers.Wrapper):
    """Shares the weights of a layer's weight matrices among k trained centroids.

    For each weight matrix W of the wrapped layer (the kernel of Dense / Conv /
    DepthwiseConv / EinsumDense / AdderConv / AdderDense, both kernels of a
    SeparableConv, the embeddings of an Embedding), `build` runs 1-D k-means on
    the current values (Deep Compression sec. 3.1: minimise
    `sum_i sum_{w in c_i} |w - c_i|^2`) and stores

    * `cluster_centroids[i]`: trainable, shape (k,), the shared values;
    * `cluster_indices[i]`: non-trainable int32, the shape of W, I_ij;
    * `sparsity_masks[i]` (with `preserve_sparsity`): non-trainable 0/1, the
      shape of W; zeros of W are no cluster members and stay exactly zero.

    The forward pass uses `W = C[I]` (zero where the mask is 0) in place of W, so
    the gradient of centroid k is `sum_{i,j} dL/dW_ij * 1(I_ij = k)` (eq. 3).
    The indices stay fixed during fine-tuning (the paper's scheme); the
    centroids and the layer's other weights (biases) train. The original W is
    kept (non-trainable) only so that the wrapped layer stays intact; it is not
    used.

    When a saved model is loaded, `build` clusters the freshly initialized
    layer and the saved centroids, indices and masks then overwrite the result.

    Args:
        layer: the layer to cluster (built with trained weights, or unbuilt: then
            its initial weights are clustered at the first call).
        number_of_clusters: k, an integer >= 2 (at most the number of distinct
            (non-zero, with `preserve_sparsity`) values of each weight matrix).
        cluster_centroids_init: "linear" (the paper's best, default), "density",
            "random" (Forgy) or "kmeans++"; see `init_centroids`.
        preserve_sparsity: keep the exact zeros of the weights (pruned weights)
            at zero and out of the clusters.
        seed: integer seed of the random initializations (None: drawn from
            NumPy's global generator).
        **kwargs: standard Layer arguments (the name defaults to
            "cluster_" + the layer's name).

    Raises:
        ValueError: for an invalid argument (the received value and what is
            allowed are named), a layer without weights to cluster, an already
            clustered layer, or (in `build`) more clusters than distinct values.

    Example:
        >>> dense = keras.layers.Dense(10)
        >>> dense.build((None, 64))
        >>> clustered = ClusterWeights(dense, number_of_clusters=8)
        >>> y = clustered(x)   # uses 8 distinct kernel values
    """

    def __init__(
        self, layer, number_of_clusters, cluster_centroids_init="linear",
        preserve_sparsity=True, seed=None, **kwargs,
    ):
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a Keras layer. Received: layer={layer!r}")  # noqa: TRY004
        if isinstance(layer, ClusterWeights):
            raise ValueError(f"Layer {layer.name!r} is already clustered (a ClusterWeights).")  # noqa: TRY004
        if isinstance(layer, keras.Model) or not _weights.is_supported(layer):
            raise _unsupported(layer)
        number_of_clusters = _check_k(number_of_clusters)
        cluster_centroids_init = _check_method(cluster_centroids_init)
        if not isinstance(preserve_sparsity, (bool, np.bool_)):
            raise ValueError(  # noqa: TRY004
                "`preserve_sparsity` must be True or False. "
                f"Received: preserve_sparsity={preserve_sparsity!r}"
            )
        seed = _check_seed(seed)
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.number_of_clusters = number_of_clusters
        self.cluster_centroids_init = cluster_centroids_init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.seed = seed
        self._restoring = False
        self._call_has_training = "training" in inspect.signature(layer.call).parameters

    @classmethod
    def from_config(cls, config, custom_objects=None):
        instance = super().from_config(dict(config), custom_objects=custom_objects)
        # Built from a config (loading, clone_model): weights will be assigned after
        # `build`, so a degenerate fresh initialization must not be an error.
        instance._restoring = True
        return instance

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernels = _weights.kernel_variables(self.layer)
        if not kernels:
            raise _unsupported(self.layer)
        seed = self.seed if self.seed is not None else int(np.random.randint(0, 2**31 - 1))
        centroid_vars, index_vars, mask_vars = [], [], []
        for i, kernel in enumerate(kernels):
            prefix = kernel.name if len(kernels) > 1 else ""
            prefix = f"{prefix}_" if prefix else ""
            values = kernel.numpy()
            try:
                centroids, indices, mask = _cluster_kernel(
                    values, self.number_of_clusters, self.cluster_centroids_init,
                    self.preserve_sparsity, seed + i,
                    where=f" in {kernel.name!r} of layer {self.layer.name!r}",
                )
            except ValueError:
                if not self._restoring:
                    raise
                # Placeholders; the saved values are loaded next.
                centroids = np.zeros(self.number_of_clusters, np.float32)
                indices = np.zeros(values.shape, np.int32)
                mask = np.ones(values.shape, bool) if self.preserve_sparsity else None
            c = self.add_weight(
                name=f"{prefix}cluster_centroids", shape=(self.number_of_clusters,),
                dtype=kernel.dtype, initializer="zeros", trainable=True,
            )
            c.assign(centroids.astype(kernel.dtype))
            idx = self.add_weight(
                name=f"{prefix}cluster_indices", shape=tuple(values.shape), dtype="int32",
                initializer="zeros", trainable=False,
            )
            idx.assign(indices)
            centroid_vars.append(c)
            index_vars.append(idx)
            if self.preserve_sparsity:
                m = self.add_weight(
                    name=f"{prefix}sparsity_mask", shape=tuple(values.shape),
                    dtype=kernel.dtype, initializer="zeros", trainable=False,
                )
                m.assign(mask.astype(kernel.dtype))
                mask_vars.append(m)
            # The optimizer must not look for a gradient of the unused original.
            kernel.trainable = False
        self.cluster_centroids = centroid_vars
        self.cluster_indices = index_vars
        self.sparsity_masks = mask_vars
        self.built = True

    def clustered_kernels(self):
        """The weight matrices the layer computes with: `C[I]` (zero where masked).

        Returns:
            A list of tensors, one per weight matrix, in the order of
            `tfcompress._weights.kernel_variables(self.layer)`.
        """
        out = []
        for i, centroids in enumerate(self.cluster_centroids):
            kernel = ops.take(centroids, self.cluster_indices[i])
            if self.preserve_sparsity:
                kernel = ops.where(
                    ops.greater(self.sparsity_masks[i], 0), kernel, ops.zeros_like(kernel)
                )
            out.append(kernel)
        return out

    def call(self, inputs, training=None, **kwargs):
        kernels = _weights.kernel_variables(self.layer)
        clustered = self.clustered_kernels()

        def substitute(variables):
            values = []
            for v in variables:
                position = next((i for i, k in enumerate(kernels) if k is v), None)
                values.append(v if position is None else clustered[position])
            return values

        if self._call_has_training:
            kwargs["training"] = training
        outputs, _ = self.layer.stateless_call(
            substitute(self.layer.trainable_variables),
            substitute(self.layer.non_trainable_variables),
            inputs,
            **kwargs,
        )
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            number_of_clusters=self.number_of_clusters,
            cluster_centroids_init=self.cluster_centroids_init,
            preserve_sparsity=self.preserve_sparsity,
            seed=self.seed,
        )
        return config


def _wrapper_kernel_numpy(wrapper, i):
    """`wrapper.clustered_kernels()[i]` computed in NumPy (a gather and a select: exact)."""
    mask = wrapper.sparsity_masks[i].numpy() if wrapper.preserve_sparsity else None
    return _clustered_numpy(
        wrapper.cluster_centroids[i].numpy(), wrapper.cluster_indices[i].numpy(), mask
    )


# --------------------------------------------------------------------------------------
# Model-level API
# --------------------------------------------------------------------------------------


def cluster_weights(
    to_cluster, number_of_clusters, cluster_centroids_init="linear", preserve_sparsity=True,
    seed=None,
):
    """Wraps a layer, or every supported layer of a model, in `ClusterWeights`.

    Applied to a trained model: every layer with weight matrices (Dense, Conv*,
    DepthwiseConv*, SeparableConv*, Embedding, EinsumDense, AdderConv,
    AdderDense, or a layer defining `get_prunable_weights()`) gets its weights
    shared among `number_of_clusters` centroids by k-means on its trained
    values (Deep Compression, sec. 3); the result is fine-tuned with `fit`,
    which trains the centroids with the summed gradients of their members
    (eq. 3: dL/dC_k = sum_{i,j} dL/dW_ij * 1(I_ij = k)), and
    `strip_clustering` then gives plain layers.

    Args:
        to_cluster: a Keras layer, or a built functional or Sequential model.
            A model is copied (the original is unchanged); the copy's weights
            start equal to the original's.
        number_of_clusters: k, an integer >= 2 for every supported layer, or a
            dict {layer name: k} clustering only the named layers.
        cluster_centroids_init: "linear" (default, the paper's best), "density",
            "random" or "kmeans++", or a `CentroidInitialization` member.
        preserve_sparsity: keep exact zeros (pruned weights) at zero and out of
            the clusters.
        seed: integer seed of the random initializations (None: from NumPy's
            global generator; each layer derives its own).

    Returns:
        A `ClusterWeights` for a layer; for a model a new, uncompiled model of
        the same kind with each clustered layer replaced by its wrapper
        (named "cluster_" + the layer's name).

    Raises:
        ValueError: for an invalid k or initialization, an unsupported layer
            (named, with the supported types), a name in the dict that is not a
            layer of the model (the layer names are listed), an already
            clustered model or layer, a subclassed or nested model, or more
            clusters than the distinct values of a weight matrix.

    Example:
        >>> clustered = cluster_weights(model, 16, cluster_centroids_init="linear")
        >>> clustered = cluster_weights(model, {"fc1": 16, "predictions": 32})
    """
    cluster_centroids_init = _check_method(cluster_centroids_init)
    seed = _check_seed(seed)
    if not isinstance(to_cluster, keras.Model):
        if not isinstance(to_cluster, keras.layers.Layer):
            raise ValueError(  # noqa: TRY004
                "`to_cluster` must be a Keras layer or a functional/Sequential model. "
                f"Received: to_cluster={to_cluster!r}"
            )
        if isinstance(number_of_clusters, dict):
            raise ValueError(  # noqa: TRY004
                "A dict `number_of_clusters` is for models; for a layer pass an integer. "
                f"Received: number_of_clusters={number_of_clusters!r}"
            )
        return ClusterWeights(
            to_cluster, number_of_clusters, cluster_centroids_init, preserve_sparsity, seed
        )

    model = to_cluster
    check_model(model, "cluster_weights")
    names = [layer.name for layer in model.layers]
    clustered = [layer.name for layer in model.layers if isinstance(layer, ClusterWeights)]
    if clustered:
        raise ValueError(
            f"Model {model.name!r} is already clustered (ClusterWeights layers: "
            f"{', '.join(clustered)}). Call strip_clustering first."
        )
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(
            f"Nested model(s) {', '.join(map(repr, nested))} in {model.name!r}: flatten them "
            "into the outer model before cluster_weights."
        )
    if isinstance(number_of_clusters, dict):
        check_layer_names(model, number_of_clusters)
        per_layer = {name: _check_k(k) for name, k in number_of_clusters.items()}
        for name in per_layer:
            layer = model.get_layer(name)
            if not _weights.is_supported(layer):
                raise _unsupported(layer)
    else:
        k = _check_k(number_of_clusters)
        per_layer = {
            layer.name: k for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer) and _weights.is_supported(layer)
        }
        if not per_layer:
            raise ValueError(
                f"Model {model.name!r} has no layer with weights to cluster. Supported: "
                f"{', '.join(_weights.supported_layer_names())}."
            )
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1 - 1000 * len(names)))
    position = {name: i for i, name in enumerate(names)}

    def clone(layer):
        if layer.name not in per_layer:
            return fresh_copy(layer)
        inner = built_copy(layer)
        return ClusterWeights(
            inner, per_layer[layer.name], cluster_centroids_init, preserve_sparsity,
            seed + 1000 * position[layer.name],
        )

    new = keras.models.clone_model(model, clone_function=clone)
    copy_weights_by_name(model, new, skip=per_layer)
    return new


def strip_clustering(model):
    """Replaces every `ClusterWeights` by its layer, with the clustered weights.

    Each weight matrix of the returned layers is `C[I]` (zero where the sparsity
    mask is 0), bit-identical to the matrix the clustered model computes with,
    so the stripped model has at most k distinct non-zero values per matrix and
    the same outputs. Other layers are copied with their weights.

    Args:
        model: a functional or Sequential model (clustered or not).

    Returns:
        A new model of the same kind with plain layers (named as the wrapped
        layers were); the input model is unchanged.

    Raises:
        ValueError: for something that is not a functional or Sequential model.

    Example:
        >>> final = strip_clustering(clustered)
        >>> len(np.unique(final.get_layer("fc1").kernel)) <= 16
        True
    """
    check_model(model, "strip_clustering")
    wrappers = {layer.name for layer in model.layers if isinstance(layer, ClusterWeights)}

    def clone(layer):
        if not isinstance(layer, ClusterWeights):
            return fresh_copy(layer)
        inner = layer.layer
        weights = inner.get_weights()
        replaced = {
            id(k): _wrapper_kernel_numpy(layer, i)
            for i, k in enumerate(_weights.kernel_variables(inner))
        }
        weights = [replaced.get(id(v), w) for v, w in zip(inner.weights, weights)]
        return built_copy(inner, weights)

    new = keras.models.clone_model(model, clone_function=clone)
    copy_weights_by_name(model, new, skip=wrappers)
    return new


@dataclasses.dataclass
class WeightClusters:
    """The shared-weight representation of one weight matrix.

    Attributes:
        layer: name of the clustered layer (the wrapped layer's name).
        weight: name of the weight matrix ("kernel", "depthwise_kernel", ...).
        centroids: float array (k,), the shared values, sorted as trained.
        indices: int32 array with the matrix's shape, the centroid of each weight.
        mask: bool array with the matrix's shape (False: an exact zero that is
            no cluster member; its index is 0), or None without sparsity.
    """

    layer: str
    weight: str
    centroids: np.ndarray
    indices: np.ndarray
    mask: np.ndarray | None

    @property
    def kernel(self):
        """The weight matrix `centroids[indices]`, zero where masked (as the layer computes)."""
        return _clustered_numpy(self.centroids, self.indices, self.mask)


def _wrappers(model_or_layer):
    if isinstance(model_or_layer, ClusterWeights):
        return [model_or_layer]
    if isinstance(model_or_layer, keras.Model):
        return [layer for layer in model_or_layer.layers if isinstance(layer, ClusterWeights)]
    raise ValueError(
        f"Expected a keras.Model or a ClusterWeights layer. Received: {model_or_layer!r}"
    )


def get_weight_clusters(model):
    """Centroids, indices and sparsity masks of every clustered weight matrix.

    This is the representation a coder stores (Deep Compression sec. 4: k
    shared values plus a log2(k)-bit index per weight, Huffman coded).

    Args:
        model: a model with `ClusterWeights` layers, or one such layer.

    Returns:
        A list of `WeightClusters`, in layer order (and, within a layer, in the
        order of its weight matrices). Empty if nothing is clustered.

    Raises:
        ValueError: for something that is neither a model nor a ClusterWeights.

    Example:
        >>> for wc in get_weight_clusters(clustered):
        ...     print(wc.layer, wc.weight, wc.centroids.shape, wc.indices.dtype)
        fc1 kernel (16,) int32
    """
    out = []
    for wrapper in _wrappers(model):
        kernels = _weights.kernel_variables(wrapper.layer)
        for i, kernel in enumerate(kernels):
            mask = (
                wrapper.sparsity_masks[i].numpy() > 0
                if wrapper.preserve_sparsity else None
            )
            out.append(WeightClusters(
                layer=wrapper.layer.name,
                weight=kernel.name,
                centroids=wrapper.cluster_centroids[i].numpy(),
                indices=wrapper.cluster_indices[i].numpy().astype(np.int32),
                mask=mask,
            ))
    return out


def clustering_report(model):
    """Number of distinct values of every weight matrix, clustered or plain.

    Works on a clustered model (the matrices it computes with, `C[I]`) and on
    any other model, e.g. the result of `strip_clustering` (its actual weights).

    Args:
        model: a functional or Sequential model.

    Returns:
        A list of dicts, one per weight matrix in layer order, with keys
        "layer" (layer name; the wrapped layer's for a ClusterWeights),
        "weight" (the matrix's name), "shape", "size", "zeros" (exact zeros),
        "distinct_nonzero" (distinct non-zero values), "clusters" (k for a
        clustered matrix, else None) and "index_bits" (ceil(log2) of the
        distinct non-zero values, at least 1: the bits per index a codebook of
        those values needs).

    Raises:
        ValueError: for something that is not a keras.Model.

    Example:
        >>> [r["distinct_nonzero"] for r in clustering_report(strip_clustering(clustered))]
        [16, 16, 16]
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"clustering_report needs a keras.Model. Received: {model!r}")  # noqa: TRY004
    rows = []
    for layer in model.layers:
        if isinstance(layer, ClusterWeights):
            names = [k.name for k in _weights.kernel_variables(layer.layer)]
            values = [
                _wrapper_kernel_numpy(layer, i) for i in range(len(layer.cluster_centroids))
            ]
            layer_name, clusters = layer.layer.name, layer.number_of_clusters
        elif _weights.is_supported(layer) and layer.built and not isinstance(layer, keras.Model):
            kernels = _weights.kernel_variables(layer)
            names = [k.name for k in kernels]
            values = [k.numpy() for k in kernels]
            layer_name, clusters = layer.name, None
        else:
            continue
        for name, value in zip(names, values):
            distinct = int(np.unique(value[value != 0]).size)
            rows.append({
                "layer": layer_name,
                "weight": name,
                "shape": tuple(value.shape),
                "size": int(value.size),
                "zeros": int(np.sum(value == 0)),
                "distinct_nonzero": distinct,
                "clusters": clusters,
                "index_bits": max(1, int(np.ceil(np.log2(max(distinct, 1))))),
            })
    return rows
