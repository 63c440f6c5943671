"""`ClusterWeights`: a layer whose weight matrices are k shared, trained values.

Han, Mao, Dally, "Deep Compression", ICLR 2016, sec. 3: every weight is a log2(k)-bit
index into k centroids; the centroids train with the summed gradients of their
members (eq. 3), which is what automatic differentiation of `W = C[I]` (a gather)
gives.
"""

import math
import threading

import keras
import numpy as np
from keras import ops

from tfcompress.analysis.profile import count_layer, dtype_bits, register_counter
from tfcompress.clustering.kmeans import (
    check_clusters,
    check_method,
    check_seed,
    cluster_kernel,
    clustered_values,
)
from tfcompress.core.traits import has_kernels, kernel_layer_names
from tfcompress.core.wrapper import KernelWrapper

__all__ = ["ClusterWeights", "unsupported_layer_error"]


def unsupported_layer_error(layer):
    """The ValueError for a layer without weights to cluster (the supported types listed)."""
    return ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no weights to cluster. "
        f"Supported: {', '.join(kernel_layer_names())}, or any layer that "
        "defines get_prunable_weights()."
    )


# Set while `from_config` constructs a wrapper: its values are the saved ones, so the
# (built, freshly initialized) layer Keras deserialized is not clustered.
_FROM_CONFIG = threading.local()


@keras.saving.register_keras_serializable(package="tfcompress")
class ClusterWeights(KernelWrapper):
    """Shares the weights of a layer's weight matrices among k trained centroids.

    For each weight matrix W of the wrapped layer (the kernel of Dense / Conv /
    DepthwiseConv / EinsumDense / AdderConv / AdderDense, both kernels of a
    SeparableConv, the embeddings of an Embedding), 1-D k-means on its current
    values (Deep Compression sec. 3.1: minimise `sum_i sum_{w in c_i} |w - c_i|^2`)
    gives

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

    k-means runs when the layer is wrapped (as Keras' own `Dense.quantize()`
    computes its values before creating state), or, for an unbuilt layer, on
    its initial weights once the first call has built it; `build` creates the
    variables with those values as their initial values (so they hold them also
    when Keras builds the model by a symbolic call, e.g. a subclassed model
    whose `__init__` wraps its layers: variables made there are initialized
    after the call). A wrapper made from a config (loading a `.keras` file,
    copying a model) runs no k-means: its values are the saved ones.

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
            clustered layer, or more clusters than distinct values.

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
        if isinstance(layer, keras.Model) or not has_kernels(layer):
            raise unsupported_layer_error(layer)
        number_of_clusters = check_clusters(number_of_clusters)
        cluster_centroids_init = check_method(cluster_centroids_init)
        if not isinstance(preserve_sparsity, (bool, np.bool_)):
            raise ValueError(  # noqa: TRY004
                "`preserve_sparsity` must be True or False. "
                f"Received: preserve_sparsity={preserve_sparsity!r}"
            )
        seed = check_seed(seed)
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.number_of_clusters = number_of_clusters
        self.cluster_centroids_init = cluster_centroids_init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.seed = seed
        restoring = getattr(_FROM_CONFIG, "active", False)
        # The k-means result, the initial value of the variables `build` creates.
        self._clusters = self.cluster_layer() if layer.built and not restoring else None
        self._cluster_at_first_call = not layer.built and not restoring

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Made from a config (loading, copying): the saved values are assigned next.
        _FROM_CONFIG.active = True
        try:
            return super().from_config(config, custom_objects=custom_objects)
        finally:
            _FROM_CONFIG.active = False

    def cluster_layer(self):
        """Runs k-means on the wrapped layer's current weight matrices.

        Returns:
            A list of (centroids, indices, mask) per weight matrix (`cluster_kernel`).

        Raises:
            ValueError: for more clusters than distinct (non-zero) values of a matrix.
        """
        kernels = self.kernel_variables()
        seed = self.seed if self.seed is not None else int(np.random.randint(0, 2**31 - 1))
        return [
            cluster_kernel(
                kernel.numpy(), self.number_of_clusters, self.cluster_centroids_init,
                self.preserve_sparsity, seed + i,
                where=f" in {kernel.name!r} of layer {self.layer.name!r}",
            )
            for i, kernel in enumerate(kernels)
        ]

    def _initializer(self, i, part, default):
        """The initializer of part `part` (0 centroids, 1 indices, 2 mask) of matrix i:
        the k-means result (computed now, or for a layer built by this `build` when
        the variable is initialized, from the layer's initial weights), else `default`.
        """
        if self._clusters is None and not self._cluster_at_first_call:
            return default  # made from a config: the saved values come next
        precomputed, cache = self._clusters, {}
        placeholder = keras.initializers.get(default)

        def initializer(shape, dtype=None):
            if "clusters" not in cache:
                if precomputed is None:
                    try:
                        for kernel in self.kernel_variables():
                            kernel.numpy()
                    except (AttributeError, NotImplementedError, ValueError):
                        # Keras' symbolic build reads variables made in it before they
                        # are initialized: a value for shape inference only.
                        return placeholder(shape, dtype=dtype)
                cache["clusters"] = precomputed if precomputed is not None else self.cluster_layer()
            value = np.asarray(cache["clusters"][i][part])
            return value.astype(dtype) if dtype is not None else value

        return initializer

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernels = self.kernel_variables()
        if not kernels:
            raise unsupported_layer_error(self.layer)
        centroid_vars, index_vars, mask_vars = [], [], []
        for i, kernel in enumerate(kernels):
            prefix = kernel.name if len(kernels) > 1 else ""
            prefix = f"{prefix}_" if prefix else ""
            shape = tuple(kernel.shape)
            centroid_vars.append(self.add_weight(
                name=f"{prefix}cluster_centroids", shape=(self.number_of_clusters,),
                dtype=kernel.dtype, initializer=self._initializer(i, 0, "zeros"),
                trainable=True,
            ))
            index_vars.append(self.add_weight(
                name=f"{prefix}cluster_indices", shape=shape, dtype="int32",
                initializer=self._initializer(i, 1, "zeros"), trainable=False,
            ))
            if self.preserve_sparsity:
                mask_vars.append(self.add_weight(
                    name=f"{prefix}sparsity_mask", shape=shape, dtype=kernel.dtype,
                    initializer=self._initializer(i, 2, "ones"), trainable=False,
                ))
            # The optimizer must not look for a gradient of the unused original.
            kernel.trainable = False
        self.cluster_centroids = centroid_vars
        self.cluster_indices = index_vars
        self.sparsity_masks = mask_vars
        self._clusters = None
        self._cluster_at_first_call = False
        self.built = True

    def assign_clusters(self, clusters):
        """Sets the centroids, indices and masks (a `cluster_layer()` result)."""
        for i, (centroids, indices, mask) in enumerate(clusters):
            dtype = self.cluster_centroids[i].dtype
            self.cluster_centroids[i].assign(np.asarray(centroids).astype(dtype))
            self.cluster_indices[i].assign(np.asarray(indices, np.int32))
            if self.preserve_sparsity:
                self.sparsity_masks[i].assign(np.asarray(mask).astype(dtype))

    def clustered_kernels(self):
        """The weight matrices the layer computes with: `C[I]` (zero where masked).

        Returns:
            A list of tensors, one per weight matrix, in the order of
            `tfcompress.core.traits.kernel_variables(self.layer)`.
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

    def computed_kernels(self):
        return self.clustered_kernels()

    def computed_kernels_numpy(self):
        """`clustered_kernels()` in NumPy (a gather and a select: bit-identical)."""
        return [self.clustered_kernel_numpy(i) for i in range(len(self.cluster_centroids))]

    def clustered_kernel_numpy(self, i):
        """The i-th clustered matrix in NumPy, bit-identical to `clustered_kernels()[i]`."""
        mask = self.sparsity_masks[i].numpy() if self.preserve_sparsity else None
        return clustered_values(
            self.cluster_centroids[i].numpy(), self.cluster_indices[i].numpy(), mask
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            number_of_clusters=self.number_of_clusters,
            cluster_centroids_init=self.cluster_centroids_init,
            preserve_sparsity=self.preserve_sparsity,
            seed=self.seed,
        )
        return config


def _count_clustered(wrapper, input_shape, output_shape):
    """The profile of a clustered layer: the wrapped layer's operations and parameters;
    each clustered matrix stored as one index per weight, ceil(log2(k)) bits (k + 1
    symbols when exact zeros are kept out of the clusters), plus the k centroids
    (centroid indices and masks are no parameters)."""
    counts = count_layer(wrapper.layer, input_shape, output_shape)
    inner = wrapper.layer
    kernels = wrapper.kernel_variables()
    clustered = {id(k): i for i, k in enumerate(kernels)}
    k = wrapper.number_of_clusters
    bits = 0
    for w in inner.weights:
        size = int(np.prod(w.shape))
        if id(w) not in clustered:
            bits += size * dtype_bits(w.dtype)
            continue
        i = clustered[id(w)]
        zeros = wrapper.preserve_sparsity and bool(np.any(wrapper.sparsity_masks[i].numpy() == 0))
        symbols = k + 1 if zeros else k
        bits += size * max(1, math.ceil(math.log2(symbols))) + k * dtype_bits(w.dtype)
    trainable = sum(int(np.prod(w.shape)) for w in inner.trainable_weights)
    return {
        "macs": counts["macs"], "adds": counts["adds"], "binary_ops": counts["binary_ops"],
        "params": sum(int(np.prod(w.shape)) for w in inner.weights),
        "trainable_params": trainable + sum(int(np.prod(kv.shape)) for kv in kernels),
        "param_bits": bits,
    }


register_counter(ClusterWeights, _count_clustered)
