"""Per-layer choices for `quantize_model`: int8 with weight scales per channel or per
tensor, 16x8 (int16 activations) or float: a mixed-precision file."""

import weakref

__all__ = ["QUANTIZE_CHOICES", "annotation_of", "clear_annotation", "quantize_annotate_layer"]

_ANNOTATIONS = weakref.WeakKeyDictionary()
QUANTIZE_CHOICES = ("per_channel", "per_tensor", "float", 8, 16)


def quantize_annotate_layer(layer, scheme="per_channel"):
    """Chooses how `quantize_model` treats one layer.

    Args:
        layer: a layer of the model that will be passed to `quantize_model`.
        scheme: the layer's precision: 8 (int8, the model's defaults),
            "per_channel" or "per_tensor" (int8 with those weight scales), 16, or
            "float".
            16: a Conv2D / DepthwiseConv2D / Dense (with the BatchNormalization
            and ReLU / ReLU6 that fuse into it) runs as TFLite's 16x8 operator
            inside the int8 file: int8 weights per channel, int16 activations
            (symmetric, zero point 0), int64 bias. Its int8 input is requantized
            exactly to int16 (1/128 of the int8 scale); its output stays int16
            into other 16-bit layers and is requantized to int8 (QUANTIZE, at a
            trained range) for every other consumer and a model output.
            "float": a Conv2D / DepthwiseConv2D / Dense / BatchNormalization
            stays float with the BatchNormalization and activation that fuse
            into it; its output is quantized again where int8 layers take it,
            and `to_tflite(qat, mode="int8")` writes DEQUANTIZE, the float
            operator, QUANTIZE at the trained range. Another layer kept float
            leaves its output unquantized (an integer-only export then names it).

    Returns:
        The same layer, annotated.

    Raises:
        ValueError: for an unknown scheme (`quantize_model` names a layer that
            cannot take 16 bits).

    Example:
        >>> quantize_annotate_layer(model.get_layer("fc1"), "float")
        >>> quantize_annotate_layer(model.get_layer("conv1"), 16)
        >>> qat = quantize_model(model)      # fc1 float, conv1 16x8, the rest int8
    """
    if isinstance(scheme, bool) or scheme not in QUANTIZE_CHOICES:
        raise ValueError(
            f"`scheme` must be one of {', '.join(repr(c) for c in QUANTIZE_CHOICES)}. "
            f"Received: scheme={scheme!r}"
        )
    if scheme == 8:
        _ANNOTATIONS.pop(layer, None)  # the defaults
        return layer
    _ANNOTATIONS[layer] = scheme
    return layer


def annotation_of(layer):
    """The scheme `quantize_annotate_layer` gave `layer`, or None."""
    return _ANNOTATIONS.get(layer)


def clear_annotation(layer):
    """Removes the scheme `quantize_annotate_layer` gave `layer` (if any)."""
    _ANNOTATIONS.pop(layer, None)
