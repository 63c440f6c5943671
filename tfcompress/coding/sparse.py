"""The sparse index format of Deep Compression (sec. 2, Figure 2).

NumPy only. `encode_sparse` stores the non-zero entries of an array with their
relative index differences in `index_bits` bits (filler zeros bridge larger gaps)
as a `SparseArray`; `decode_sparse` gives the dense array back, bit for bit.
"""

import dataclasses

import numpy as np

from tfcompress.coding.bits import check_index_bits, check_numeric, nonzero_mask

__all__ = ["SparseArray", "decode_sparse", "encode_sparse"]


def _check_order(order):
    if order not in ("C", "F"):
        raise ValueError(
            '`order` must be "C" (row-major, CSR-like) or "F" (column-major, CSC-like). '
            f"Received: order={order!r}"
        )
    return order


@dataclasses.dataclass(frozen=True, eq=False)
class SparseArray:
    """An array in the sparse format of Deep Compression (sec. 2, Figure 2).

    Stored entry i sits `diffs[i] + 1` positions after stored entry i-1 (the
    first after position -1) in the array flattened in `order`. Each
    `diffs[i]` is in [0, 2**index_bits - 1], i.e. a relative index difference
    in [1, 2**index_bits]. A gap larger than 2**index_bits is bridged by filler
    entries with value 0 placed 2**index_bits positions after the previous
    entry.

    Attributes:
        values: 1-D array of the stored entries (fillers are 0), dtype of the
            source array.
        diffs: 1-D int64 array of the stored index differences minus one.
        shape: shape of the dense array.
        order: "C" (row-major, CSR-like) or "F" (column-major, CSC-like).
        index_bits: bits of a stored index difference.
    """

    values: np.ndarray
    diffs: np.ndarray
    shape: tuple
    order: str
    index_bits: int

    @property
    def size(self):
        """Elements of the dense array."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num_entries(self):
        """Stored entries, fillers included."""
        return int(self.values.size)

    @property
    def num_fillers(self):
        """Stored filler zeros (entries whose value is +0)."""
        return int(self.values.size - np.count_nonzero(nonzero_mask(self.values)))

    @property
    def num_nonzero(self):
        """Non-zero elements of the dense array."""
        return self.num_entries - self.num_fillers

    def positions(self):
        """Flat positions (in `order`) of the stored entries, an int64 array."""
        return np.cumsum(self.diffs.astype(np.int64) + 1) - 1

    def to_dense(self):
        """The dense array (`decode_sparse(self)`)."""
        return decode_sparse(self)


def encode_sparse(array, index_bits=5, order="C"):
    """Stores an array as its non-zero entries and relative index differences.

    The paper's sparse format (Deep Compression, sec. 2): the array is flattened
    in `order` ("C": row-major, the CSR-like layout; "F": column-major, the
    CSC-like layout), and every non-zero element is stored with its distance to
    the previous stored element. Distances are stored minus one in `index_bits`
    bits (the paper uses 8 bits for conv and 5 bits for fc layers); "when we
    need an index difference larger than the bound, we use the zero padding
    solution": a filler zero is stored 2**index_bits positions after the
    previous entry, as often as needed. Zero means all bits zero: -0.0 is
    stored as a value (so decoding is bit-exact); NaN and inf are values too.

    Args:
        array: a numeric array (any shape).
        index_bits: bits per stored index difference, 1..16.
        order: "C" or "F".

    Returns:
        A `SparseArray`.

    Raises:
        ValueError: for `index_bits` outside 1..16, an unknown `order`, or a
            non-numeric array.

    Example:
        >>> s = encode_sparse(np.array([0, 3.0] + [0] * 9 + [7.0]), index_bits=3)
        >>> s.values.tolist(), s.diffs.tolist()
        ([3.0, 0.0, 7.0], [1, 7, 1])
    """
    index_bits = check_index_bits(index_bits)
    order = _check_order(order)
    array = np.asarray(array)
    check_numeric(array)
    flat = np.ascontiguousarray(array.ravel(order=order))
    nonzero = np.flatnonzero(nonzero_mask(flat))
    bound = 1 << index_bits
    gaps = np.diff(nonzero, prepend=-1)
    fillers = (gaps - 1) // bound
    repeats = fillers + 1
    total = int(repeats.sum())
    diffs = np.full(total, bound - 1, dtype=np.int64)
    values = np.zeros(total, dtype=array.dtype)
    last = np.cumsum(repeats) - 1
    diffs[last] = gaps - 1 - fillers * bound
    values[last] = flat[nonzero]
    return SparseArray(values=values, diffs=diffs, shape=tuple(array.shape), order=order,
                       index_bits=index_bits)


def decode_sparse(sparse):
    """The dense array of a `SparseArray` (inverse of `encode_sparse`), bit-exact.

    Args:
        sparse: a `SparseArray`.

    Returns:
        A new array of `sparse.shape` and the dtype of `sparse.values`.

    Raises:
        ValueError: for an invalid `order` or `index_bits`, differences outside
            [0, 2**index_bits - 1], mismatched lengths, or entries past the end.

    Example:
        >>> decode_sparse(encode_sparse(np.eye(3, dtype="float32"))).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    if not isinstance(sparse, SparseArray):
        raise ValueError(  # noqa: TRY004
            f"`sparse` must be a SparseArray. Received: {type(sparse).__name__}"
        )
    index_bits = check_index_bits(sparse.index_bits)
    order = _check_order(sparse.order)
    values = np.asarray(sparse.values).reshape(-1)
    diffs = np.asarray(sparse.diffs).reshape(-1)
    if values.size != diffs.size:
        raise ValueError(
            f"A SparseArray needs one index difference per value: got {values.size} values "
            f"and {diffs.size} differences."
        )
    if diffs.size and (diffs.dtype.kind not in "iu" or diffs.min() < 0
                       or diffs.max() >= (1 << index_bits)):
        raise ValueError(
            f"Stored index differences must be integers in [0, {(1 << index_bits) - 1}] "
            f"for index_bits={index_bits}. Received values in "
            f"[{diffs.min()}, {diffs.max()}]"
        )
    size = int(np.prod(sparse.shape, dtype=np.int64))
    positions = np.cumsum(diffs.astype(np.int64) + 1) - 1
    if positions.size and positions[-1] >= size:
        raise ValueError(
            f"The stored entries reach position {int(positions[-1])} of an array with "
            f"only {size} elements (shape {tuple(sparse.shape)})."
        )
    flat = np.zeros(size, dtype=values.dtype)
    flat[positions] = values
    return flat.reshape(tuple(sparse.shape), order=order)
