"""Clustering a whole model: wrap, strip, and report what every weight matrix holds.

`cluster_weights(model, k)` rebuilds any functional or Sequential model (nested
models flattened, shared layers kept shared) with every layer that has weight
matrices wrapped in `ClusterWeights`, k-means run on its trained values;
`strip_clustering` rebuilds it with plain layers holding `C[I]`. Names follow tfmot.

A subclassed model has no graph to rebuild: wrap its layers in its `__init__`
(`self.fc = cluster_weights(keras.layers.Dense(10), 16)`), fine-tune it with `fit`,
and `strip_clustering(model)` returns the functional model its `call()` traces to,
with plain layers.
"""

import dataclasses

import keras
import numpy as np

from tfcompress.clustering.kmeans import (
    check_clusters,
    check_method,
    check_seed,
    clustered_values,
)
from tfcompress.clustering.wrapper import ClusterWeights, unsupported_layer_error
from tfcompress.core.graph import all_layers, is_subclassed, traced_model
from tfcompress.core.traits import has_kernels, kernel_layer_names, kernel_variables
from tfcompress.core.wrapper import (
    graph_to_wrap,
    select_layers,
    strip_wrappers,
    wrap_layers,
    wrappers_in,
)

__all__ = [
    "WeightClusters",
    "cluster_weights",
    "clustering_report",
    "get_weight_clusters",
    "strip_clustering",
]


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
            start equal to the original's. Nested models are flattened into the
            copy, shared layers stay shared.
        number_of_clusters: k, an integer >= 2 for every supported layer, or a
            dict {layer name: k} clustering only the named layers.
        cluster_centroids_init: "linear" (default, the paper's best), "density",
            "random" or "kmeans++", or a `CentroidInitialization` member.
        preserve_sparsity: keep exact zeros (pruned weights) at zero and out of
            the clusters.
        seed: integer seed of the random initializations (None: from NumPy's
            global generator; each layer derives its own).

    Returns:
        A `ClusterWeights` for a layer; for a model a new, uncompiled model (a
        Sequential for a Sequential, else functional, with the model's input and
        output structure) with each clustered layer replaced by its wrapper
        (named "cluster_" + the layer's name).

    Raises:
        ValueError: for an invalid k or initialization, an unsupported layer
            (named, with the supported types), a name in the dict that is not a
            layer of the model (the layer names are listed), an already
            clustered model or layer, an unbuilt model, or more clusters than
            the distinct values of a weight matrix; for a subclassed model
            (which cannot be rebuilt: wrap the layers in its `__init__` instead,
            see the module docstring).

    Example:
        >>> clustered = cluster_weights(model, 16, cluster_centroids_init="linear")
        >>> clustered = cluster_weights(model, {"fc1": 16, "predictions": 32})
    """
    cluster_centroids_init = check_method(cluster_centroids_init)
    seed = check_seed(seed)
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
    if is_subclassed(model):
        raise ValueError(
            f"cluster_weights cannot rebuild subclassed model {model.name!r} "
            f"({type(model).__name__}): Keras has no graph of it. Wrap the layers inside "
            "the subclassed model's __init__ with cluster_weights(layer, "
            "number_of_clusters) (e.g. self.fc = cluster_weights(keras.layers.Dense(10), "
            "16); a built layer is clustered at once, an unbuilt one at its first call), "
            "fine-tune it with fit, then strip_clustering(model); or build the model with "
            "the functional API."
        )
    graph = graph_to_wrap(
        model, "cluster_weights", ClusterWeights, "clustered", "strip_clustering"
    )
    if isinstance(number_of_clusters, dict):
        clusters = {name: check_clusters(k) for name, k in number_of_clusters.items()}
    else:
        clusters = check_clusters(number_of_clusters)
    per_layer = select_layers(
        graph, clusters, unsupported_layer_error,
        ValueError(
            f"Model {model.name!r} has no layer with weights to cluster. Supported: "
            f"{', '.join(kernel_layer_names())}."
        ),
    )
    names = [graph.name_of(layer) for layer in graph.layers]
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1 - 1000 * len(names)))
    # Each layer its own seed, from its position in the graph.
    position = {name: i for i, name in enumerate(names)}
    return wrap_layers(graph, {
        name: (lambda layer, k=k, layer_seed=seed + 1000 * position[name]: ClusterWeights(
            layer, k, cluster_centroids_init, preserve_sparsity, layer_seed))
        for name, k in per_layer.items()
    })


def _holds_wrappers(layer):
    """True if a `ClusterWeights` is inside `layer` (at any depth of its sublayers)."""
    return any(
        isinstance(inner, ClusterWeights)
        for inner in all_layers(layer, wrapped=False, sublayers=True) if inner is not layer
    )


def strip_clustering(model):
    """Replaces every `ClusterWeights` by its layer, with the clustered weights.

    Each weight matrix of the returned layers is `C[I]` (zero where the sparsity
    mask is 0), bit-identical to the matrix the clustered model computes with,
    so the stripped model has at most k distinct non-zero values per matrix and
    the same outputs. Other layers are copied with their weights.

    A subclassed model (clustering wrappers set as attributes in its `__init__`)
    has no graph to rebuild and its class would create the wrappers again: its
    `call()` is traced on `keras.Input`s of the shape it was built with
    (`tfcompress.core.graph.traced_model`) and that functional graph is rebuilt,
    so the result is a functional model of plain layers, which saves and loads
    without the model's class and exports like any functional model. Its
    `call()` must be made of layer calls. A custom layer (or
    nested subclassed model) holding wrappers is traced through the same way
    (its sublayers become layers of the result) when it has no weights of its
    own; a wrapper in one that has cannot be reached (ValueError): strip such a
    wrapper itself, `strip_clustering(wrapper)`.

    Args:
        model: a built functional, Sequential or subclassed model (clustered or
            not; nested models are flattened), or one `ClusterWeights` layer.

    Returns:
        For a model, a new model (a Sequential for a Sequential, else
        functional; functional for a subclassed model, named as it) with plain
        layers (named as the wrapped layers were); the input model is
        unchanged. For a `ClusterWeights`, a built copy of its layer holding
        `C[I]`.

    Raises:
        ValueError: for something that is not a built model or a
            `ClusterWeights`, a subclassed model that was never called or whose
            `call()` cannot be traced, or clustering wrappers the rebuild cannot
            reach (named).

    Example:
        >>> final = strip_clustering(clustered)
        >>> len(np.unique(final.get_layer("fc1").kernel)) <= 16
        True
    """
    if isinstance(model, ClusterWeights):
        return model.stripped_layer()
    with traced_model(model, "strip_clustering", inline=_holds_wrappers) as graph_model:
        return strip_wrappers(graph_model, ClusterWeights, "strip_clustering", model)


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
        return clustered_values(self.centroids, self.indices, self.mask)


def _wrappers(model_or_layer):
    if isinstance(model_or_layer, (ClusterWeights, keras.Model)):
        return wrappers_in(model_or_layer, ClusterWeights)
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
        kernels = wrapper.kernel_variables()
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
    for layer in all_layers(model, wrapped=False):
        if isinstance(layer, ClusterWeights):
            names = [k.name for k in layer.kernel_variables()]
            values = layer.computed_kernels_numpy()
            layer_name, clusters = layer.layer.name, layer.number_of_clusters
        elif has_kernels(layer) and layer.built and not isinstance(layer, keras.Model):
            kernels = kernel_variables(layer)
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
