"""Weight sharing (weight clustering) with trained centroids, as in Deep Compression.

Modules: `kmeans` (the NumPy k-means and initializations), `wrapper`
(ClusterWeights), `api` (cluster_weights, strip_clustering, reports).

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

from tfcompress.clustering.api import (
    WeightClusters,
    cluster_weights,
    clustering_report,
    get_weight_clusters,
    strip_clustering,
)
from tfcompress.clustering.kmeans import (
    INIT_METHODS,
    CentroidInitialization,
    init_centroids,
    kmeans_1d,
)
from tfcompress.clustering.wrapper import ClusterWeights

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
