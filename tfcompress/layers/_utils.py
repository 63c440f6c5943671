"""Convolution geometry shared by the tfcompress layers (argument checks live in
`tfcompress.core.args`)."""

import math

__all__ = ["clone_initializer", "known_prod", "output_length", "same_pads"]


def output_length(size, kernel, stride, padding):
    """Spatial output length of a convolution, as Keras and TensorFlow define it."""
    if size is None:
        return None
    if padding == "same":
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


def known_prod(dims, layer, what="output shape"):
    """Product of dims, which must all be known to count a layer's operations.

    Raises:
        ValueError: naming the layer and the shape when a dimension is None.
    """
    dims = tuple(dims)
    if any(d is None for d in dims):
        raise ValueError(
            f"Cannot count the operations of layer {layer.name!r} "
            f"({type(layer).__name__}): its {what} has an unknown dimension, "
            f"{dims}. Build the model with a fully specified `keras.Input(shape=...)` "
            "(height and width included)."
        )
    return math.prod(dims)


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
