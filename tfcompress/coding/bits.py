"""Helpers the coding modules share: argument checks and the bits of array elements.

NumPy only. The checks raise the ValueErrors of the public functions; the element
helpers read an array as its bits (zero means all bits zero: -0.0 and NaN are
non-zero values) and write and read elements little-endian.
"""

import numbers

import numpy as np

__all__ = [
    "bit_view",
    "check_index_bits",
    "check_int",
    "check_numeric",
    "from_le_bytes",
    "le_bytes",
    "nonzero_mask",
]

_LITTLE = np.little_endian


def check_int(name, value, low, high):
    """`value` as an int; a ValueError naming `name` unless it is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
        low <= value <= high
    ):
        raise ValueError(
            f"`{name}` must be an integer in [{low}, {high}]. Received: {name}={value!r}"
        )
    return int(value)


def check_index_bits(index_bits):
    """`index_bits` (bits per sparse index difference) as an int in [1, 16]."""
    return check_int("index_bits", index_bits, 1, 16)


def check_numeric(array, what="array"):
    """A ValueError unless `array` holds numbers (bool, integer or floating point)."""
    if array.dtype.hasobject or array.dtype.kind in "OSUMm" or array.dtype.fields is not None:
        raise ValueError(
            f"`{what}` must hold numbers (bool, integer or floating point). "
            f"Received dtype {array.dtype}"
        )


def bit_view(flat):
    """The elements of a contiguous 1-D array as unsigned integers of the same width."""
    return flat.view(np.dtype(f"u{flat.dtype.itemsize}"))


def nonzero_mask(flat):
    """True where an element of a 1-D array has any bit set (+0 is zero, -0.0 is not)."""
    flat = np.ascontiguousarray(flat)
    if flat.dtype.itemsize in (1, 2, 4, 8):
        return bit_view(flat) != 0
    return flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize).any(axis=1)


def le_bytes(array):
    """Little-endian bytes of an array, C order."""
    array = np.ascontiguousarray(array)
    if array.dtype.itemsize > 1 and array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    elif array.dtype.itemsize > 1 and array.dtype.byteorder == "=" and not _LITTLE:
        array = array.byteswap()
    return array.tobytes()


def from_le_bytes(data, dtype, count):
    """A new array of `count` elements of `dtype` read from little-endian bytes."""
    array = np.frombuffer(data, dtype=dtype, count=count)
    if dtype.itemsize > 1 and not _LITTLE:
        array = array.byteswap()
    return array.copy()
