"""Kept import path of `tfcompress.analysis.profile` (profile, count_layer, ...)."""

from tfcompress.analysis.profile import (
    COUNT_KEYS,
    OP_KEYS,
    PER_CALL_KEYS,
    ROW_KEYS,
    count_layer,
    dtype_bits,
    format_profile,
    get_counter,
    profile,
    register_counter,
)

__all__ = [
    "COUNT_KEYS",
    "OP_KEYS",
    "PER_CALL_KEYS",
    "ROW_KEYS",
    "count_layer",
    "dtype_bits",
    "format_profile",
    "get_counter",
    "profile",
    "register_counter",
]
