"""1-D k-means of weight matrices, in NumPy (Deep Compression sec. 3.1-3.2).

The n weights W = {w_1, ..., w_n} of a weight matrix are partitioned into k
clusters C = {c_1, ..., c_k} by 1-D k-means, minimising the within-cluster sum of
squares (eq. 1):

    argmin_C  sum_{i=1..k} sum_{w in c_i} |w - c_i|^2

with "linear", "density", "random" (Forgy) or "kmeans++" initialization.
"""

import enum
import numbers

import numpy as np

__all__ = [
    "INIT_METHODS",
    "CentroidInitialization",
    "check_clusters",
    "check_method",
    "check_seed",
    "cluster_kernel",
    "clustered_values",
    "init_centroids",
    "kmeans_1d",
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


def check_method(method):
    value = method.value if isinstance(method, CentroidInitialization) else method
    if not isinstance(value, str) or value not in INIT_METHODS:
        raise ValueError(
            f"`cluster_centroids_init` must be one of {', '.join(repr(m) for m in INIT_METHODS)}. "
            f"Received: cluster_centroids_init={method!r}"
        )
    return value


def check_clusters(k):
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2:
        raise ValueError(
            f"`number_of_clusters` must be an integer >= 2. Received: number_of_clusters={k!r}"
        )
    return int(k)


def check_seed(seed):
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
    method = check_method(method)
    k = check_clusters(k)
    seed = check_seed(seed)
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


def cluster_kernel(kernel, k, method, preserve_sparsity, seed, where=""):
    """k-means of one weight matrix: (centroids, indices, mask).

    Args:
        kernel: the weight array.
        k: number of clusters.
        method: the initialization (`init_centroids`).
        preserve_sparsity: exact zeros are no cluster members (mask False there).
        seed: seed of the random initializations.
        where: text naming the matrix, for the error message.

    Returns:
        float32 centroids (k,), int32 indices of the kernel's shape, and a bool mask
        of the kernel's shape (None without `preserve_sparsity`).

    Raises:
        ValueError: for more clusters than distinct (non-zero) values.
    """
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


def clustered_values(centroids, indices, mask):
    """`centroids[indices]`, zero where the mask is 0: bit-identical to `ClusterWeights`."""
    values = np.asarray(centroids)[np.asarray(indices)]
    if mask is None:
        return values
    return np.where(np.asarray(mask) > 0, values, np.zeros((), values.dtype))
