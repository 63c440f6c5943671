"""Argument validation shared by every module: each check names the value received.

Keras' convention: a bad argument raises `ValueError` with "Received: name=value", so
the message says what was passed and what is allowed.
"""

import numbers

__all__ = [
    "PADDINGS",
    "check_choice",
    "check_int",
    "check_padding",
    "check_positive_int",
    "normalize_tuple",
]

PADDINGS = ("same", "valid")


def check_int(name, value, minimum=None, maximum=None):
    """Returns `value` as an int if it is an integer in [minimum, maximum], else ValueError.

    Booleans are not integers here.

    Args:
        name: the argument's name, for the message.
        value: the value received.
        minimum: smallest allowed value, or None.
        maximum: largest allowed value, or None.

    Returns:
        `int(value)`.

    Raises:
        ValueError: naming the argument, the allowed range and the value received.

    Example:
        >>> check_int("frequency", 10, minimum=1)
        10
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if minimum is not None and maximum is not None:
        allowed = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        allowed = f"an integer >= {minimum}"
    elif maximum is not None:
        allowed = f"an integer <= {maximum}"
    else:
        allowed = "an integer"
    raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")


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

