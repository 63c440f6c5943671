"""Which variables of a layer are its weight matrices (shared by pruning and clustering).

Pruning and weight sharing act on the multiplicative weights of a layer (the
"kernel"), never on biases or BatchNormalization statistics. This module is the
one place that knows, per layer type, which variables those are.
"""

import keras

from tfcompress.layers import AdderConv, AdderDense

# Layer type -> attribute names of its weight matrices, in the order reported.
_KERNEL_ATTRIBUTES = (
    (keras.layers.SeparableConv1D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.DepthwiseConv1D, ("kernel",)),
    (keras.layers.DepthwiseConv2D, ("kernel",)),
    (keras.layers.Conv1D, ("kernel",)),
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Conv3D, ("kernel",)),
    (keras.layers.Conv1DTranspose, ("kernel",)),
    (keras.layers.Conv2DTranspose, ("kernel",)),
    (keras.layers.Conv3DTranspose, ("kernel",)),
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.EinsumDense, ("kernel",)),
    (keras.layers.Embedding, ("embeddings",)),
    (AdderConv, ("kernel",)),
    (AdderDense, ("kernel",)),
)


def supported_layer_names():
    """Names of the layer classes that `kernel_variables` knows, for error messages."""
    return sorted({cls.__name__ for cls, _ in _KERNEL_ATTRIBUTES})


def kernel_attribute_names(layer):
    """The attribute names of `layer`'s weight matrices, or None if it has none we know.

    A layer that is not in the table may still take part by defining
    `get_prunable_weights()` (the tfmot `PrunableLayer` protocol); for it this
    returns None and callers use that method instead.
    """
    for cls, names in _KERNEL_ATTRIBUTES:
        if type(layer) is cls or (isinstance(layer, cls) and not hasattr(layer, "get_prunable_weights")):
            return names
    return None


def kernel_variables(layer):
    """The weight-matrix variables of a built layer.

    Args:
        layer: a built Keras layer.

    Returns:
        A list of `keras.Variable`: the variables named by the table above, or
        what `layer.get_prunable_weights()` returns. Empty if the layer has none.
    """
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    names = kernel_attribute_names(layer)
    if names is None:
        return []
    return [getattr(layer, name) for name in names]


def is_supported(layer):
    """True if `layer` has weight matrices that pruning and clustering can act on."""
    return hasattr(layer, "get_prunable_weights") or kernel_attribute_names(layer) is not None
