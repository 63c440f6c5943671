"""Pruning masks, in NumPy: magnitude (Han et al. 2015) and structured N:M.

For a weight matrix W with |W| = N entries and a target sparsity s in [0, 1),
the magnitude mask keeps the N - round(s * N) entries of largest |w| and zeroes
the rest. Structured N:M sparsity (`sparsity_m_by_n=(2, 4)`: 2 zeros in every 4
consecutive weights along the input-channel axis) is the pattern of NVIDIA's
sparse tensor cores: Mishra et al., "Accelerating Sparse Deep Neural Networks",
arXiv:2104.08378 (2021).
"""

import numbers

import numpy as np

from tfcompress.core.wrapper import to_numpy
from tfcompress.pruning.schedules import check_sparsity

__all__ = ["check_m_by_n", "m_by_n_mask", "magnitude_mask"]


def check_m_by_n(value):
    """(m, n) as a tuple of Python ints with 0 < m < n, else ValueError."""
    message = (
        "`sparsity_m_by_n` must be a pair of integers (m, n) with 0 < m < n: m zeros in "
        f"every n consecutive weights, e.g. (2, 4). Received: sparsity_m_by_n={value!r}"
    )
    if isinstance(value, (str, bytes)):
        raise ValueError(message)  # noqa: TRY004
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(message) from None
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in pair
    ):
        raise ValueError(message)
    m, n = int(pair[0]), int(pair[1])
    if not 0 < m < n:
        raise ValueError(message)
    return (m, n)






def _mask_dtype(w):
    return w.dtype if np.issubdtype(w.dtype, np.floating) else np.dtype("float32")


def magnitude_mask(weights, sparsity):
    """The 0/1 mask that zeroes the `round(sparsity * N)` smallest-magnitude weights.

    Han et al., NeurIPS 2015: keep the connections of largest |w|. Exactly
    `min(round(sparsity * N), N - 1)` entries are 0 (Python's `round`, halves
    to even; at least one weight is kept, as in tfmot). Ties are broken
    deterministically: weights are ranked by |w| descending, and among equal
    magnitudes the one with the lower flat (C-order) index ranks first (is
    kept). Weights that are already exactly 0 have the smallest magnitude, so a
    rising sparsity never revives a pruned weight.

    Args:
        weights: an array or tensor of any shape.
        sparsity: fraction of entries to zero, in [0, 1).

    Returns:
        A NumPy array of the weights' shape with values 0 and 1, in the weights'
        float dtype (float32 for non-float weights).

    Raises:
        ValueError: for a sparsity outside [0, 1).

    Example:
        >>> magnitude_mask(np.array([0.3, -0.1, 0.2, -0.4]), 0.5)
        array([1., 0., 0., 1.])
    """
    sparsity = check_sparsity("sparsity", sparsity)
    w = to_numpy(weights)
    size = w.size
    mask = np.ones(size, _mask_dtype(w))
    if size == 0:
        return mask.reshape(w.shape)
    zeros = min(round(sparsity * size), size - 1)
    if zeros:
        order = np.argsort(-np.abs(w.reshape(-1)), kind="stable")
        mask[order[size - zeros:]] = 0
    return mask.reshape(w.shape)


def m_by_n_mask(weights, m=2, n=4):
    """The m:n structured mask: m zeros in every n consecutive input channels.

    tfmot's `sparsity_m_by_n=(m, n)` semantics (NVIDIA 2:4 for (2, 4), Mishra
    et al., arXiv:2104.08378): the weights are grouped into runs of n
    consecutive entries along the input-channel axis, which for Keras kernels
    is axis -2 (Dense [in, out], Conv1D/2D/3D [..., in, out]; tfmot transposes
    to the TFLite layout [out, ..., in] and groups along its last axis, the
    same groups). In each group the n - m entries of largest |w| are kept and
    the m smallest zeroed (ties: the lower input channel is kept, as
    `tf.math.top_k` does). For Conv*Transpose kernels ([..., out, in]) axis -2
    is the filters axis, as in tfmot.

    Args:
        weights: an array or tensor of rank >= 2 whose axis -2 has a size
            divisible by n.
        m: zeros per group, 0 < m < n.
        n: group size.

    Returns:
        A NumPy 0/1 array of the weights' shape and float dtype.

    Raises:
        ValueError: for (m, n) not integers with 0 < m < n, a rank < 2, or an
            input-channel size not divisible by n (the shape is named).

    Example:
        >>> m_by_n_mask(np.array([[0.1], [-0.5], [0.3], [0.2]]), 2, 4).ravel()
        array([0., 1., 1., 0.])
    """
    m, n = check_m_by_n((m, n))
    w = to_numpy(weights)
    if w.ndim < 2 or w.shape[-2] % n:
        raise ValueError(
            f"sparsity_m_by_n=({m}, {n}) groups the input-channel axis (axis -2) in runs of "
            f"{n}; it needs a weight of rank >= 2 whose axis -2 is divisible by {n}. "
            f"Received a weight of shape {tuple(w.shape)}."
        )
    moved = np.moveaxis(np.abs(w), -2, -1)  # [..., out, in]: groups are contiguous
    groups = moved.reshape(-1, n)
    order = np.argsort(-groups, axis=1, kind="stable")
    mask = np.zeros(groups.shape, _mask_dtype(w))
    np.put_along_axis(mask, order[:, : n - m], 1, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)
