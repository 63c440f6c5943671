"""Argument validation and convolution geometry shared by the tfcompress layers."""

import math
import numbers

PADDINGS = ("same", "valid")


def check_positive_int(name, value):
    """Returns `value` as an int if it is a positive integer, else raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_choice(name, value, allowed):
    """Returns `value` if it is one of `allowed`, else raises ValueError naming both."""
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {', '.join(repr(a) for a in allowed)}. "
            f"Received: {name}={value!r}"
        )
    return value


def normalize_tuple(name, value, n=2):
    """Turns an int or an n-sequence of ints into an n-tuple of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        values = (value,) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = None
        if values is None or len(values) != n:
            raise ValueError(
                f"`{name}` must be a positive integer or a tuple of {n} positive "
                f"integers. Received: {name}={value!r}"
            )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(
                f"`{name}` must be a positive integer or a tuple of {n} positive "
                f"integers. Received: {name}={value!r}"
            )
    return values


def check_padding(padding):
    """Lower-cases and validates a Conv2D-style padding string."""
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(
            f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}"
        )
    return padding.lower()


def output_length(size, kernel, stride, padding):
    """Spatial output length of a convolution, as Keras and TensorFlow define it."""
    if size is None:
        return None
    if padding == "same":
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


def same_pads(size, kernel, stride):
    """(before, after) zero padding that TensorFlow's 'same' convolution applies."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def clone_initializer(initializer):
    """A fresh copy of a Keras initializer.

    Keras 3 initializers without a seed draw the same values on every call of
    the same object, so sublayers must not share one instance.
    """
    return initializer.__class__.from_config(initializer.get_config())
