"""Weight sharing (Deep Compression, sec. 3): an array as a codebook and indices.

NumPy only. `quantize_to_codebook` splits an array with few distinct values into
its shared values (entry 0 is zero) and one index per element;
`MAX_CODEBOOK_SIZE` is the largest codebook the container stores.
"""

import numpy as np

from tfcompress.coding.bits import bit_view, check_numeric

__all__ = ["MAX_CODEBOOK_SIZE", "quantize_to_codebook"]

# Largest codebook (shared values, the zero at index 0 included): 16-bit indices.
MAX_CODEBOOK_SIZE = 1 << 16


def quantize_to_codebook(array, max_size=None):
    """Splits an array with few distinct values into a codebook and indices.

    The storage of weight sharing (Deep Compression, sec. 3): entry 0 of the
    codebook is zero (so pruned weights and filler zeros are index 0), and the
    other entries are the distinct non-zero values, sorted by value (values
    compare by their bits, so -0.0 and NaN are entries of their own).
    `codebook[indices]` is bit-identical to `array`.

    Args:
        array: a numeric array (any shape) whose elements are 1, 2, 4 or 8
            bytes.
        max_size: if given, the largest allowed codebook size (entry 0
            included).

    Returns:
        (codebook, indices): a 1-D array of the dtype of `array`, and an int64
        array of the shape of `array`.

    Raises:
        ValueError: for a non-numeric array, an element size the bit-exact
            comparison does not support, or more than `max_size` entries.

    Example:
        >>> codebook, indices = quantize_to_codebook(np.array([0.5, 0, -1, 0.5], "float32"))
        >>> codebook.tolist(), indices.tolist()
        ([0.0, -1.0, 0.5], [2, 0, 1, 2])
    """
    array = np.asarray(array)
    check_numeric(array)
    if array.dtype.itemsize not in (1, 2, 4, 8):
        raise ValueError(
            "quantize_to_codebook supports elements of 1, 2, 4 or 8 bytes. "
            f"Received dtype {array.dtype} ({array.dtype.itemsize} bytes)"
        )
    flat = np.ascontiguousarray(array.reshape(-1))
    bits = bit_view(flat)
    unique_bits, inverse = np.unique(bits, return_inverse=True)
    has_zero = unique_bits.size > 0 and unique_bits[0] == 0
    nonzero_bits = unique_bits[1:] if has_zero else unique_bits
    values = nonzero_bits.view(array.dtype)
    if array.dtype.kind in "iu":
        key = values
    elif array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        key = values.astype(np.float64)
    else:
        key = nonzero_bits
    order = np.lexsort((nonzero_bits, key))
    size = values.size + 1
    if max_size is not None and size > max_size:
        raise ValueError(
            f"The array has {values.size} distinct non-zero values, so its codebook "
            f"would have {size} entries; at most max_size={max_size} are allowed."
        )
    codebook = np.zeros(size, dtype=array.dtype)
    codebook[1:] = values[order]
    position = np.empty(values.size, dtype=np.int64)
    position[order] = np.arange(1, size, dtype=np.int64)
    mapping = np.concatenate([[0], position]) if has_zero else position
    indices = mapping[inverse.reshape(-1)].reshape(array.shape)
    return codebook, indices
