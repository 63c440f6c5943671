"""Analysis of models: per-layer parameters, operations and bits (`profile`)."""

from tfcompress.analysis.profile import (
    count_layer,
    dtype_bits,
    format_profile,
    get_counter,
    profile,
    register_counter,
)

__all__ = [
    "count_layer",
    "dtype_bits",
    "format_profile",
    "get_counter",
    "profile",
    "register_counter",
]
