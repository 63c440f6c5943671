"""Per-layer choices for `quantize_model`: int8 with weight scales per channel or per
tensor, or float (a mixed-precision file)."""

import weakref

__all__ = ["QUANTIZE_CHOICES", "annotation_of", "clear_annotation", "quantize_annotate_layer"]

_ANNOTATIONS = weakref.WeakKeyDictionary()
QUANTIZE_CHOICES = ("per_channel", "per_tensor", "float", 8)


def quantize_annotate_layer(layer, scheme="per_channel"):
    """Chooses how `quantize_model` treats one layer.

    Args:
        layer: a layer of the model that will be passed to `quantize_model`.
        scheme: the layer's precision: 8 (int8, the model's defaults),
            "per_channel" or "per_tensor" (int8 with those weight scales), or
            "float". A float Conv2D / DepthwiseConv2D / Dense / BatchNormalization
            stays float with the BatchNormalization and activation that fuse into
            it; its output is quantized again where int8 layers take it, and
            `to_tflite(qat, mode="int8")` writes a mixed file: DEQUANTIZE, the
            float operator, QUANTIZE at the trained range. Another layer kept
            float leaves its output unquantized (an integer-only export then
            names it). 16 is not a per-layer choice: TFLite's converter sets the
            activation width for the whole model (quantize_model's
            activation_bits=16); keep a layer that needs more than int8 float.

    Returns:
        The same layer, annotated.

    Raises:
        ValueError: for an unknown scheme, or 16.

    Example:
        >>> quantize_annotate_layer(model.get_layer("fc1"), "float")
        >>> qat = quantize_model(model)      # fc1 float, the rest int8
    """
    if scheme == 16 and not isinstance(scheme, bool):
        raise ValueError(
            f"Layer {layer.name!r}: 16-bit activations are a whole-model choice in TFLite "
            "(its converter quantizes every operator at one activation width): use "
            "quantize_model(model, activation_bits=16) for 16x8, or keep this layer at "
            "higher precision with quantize_annotate_layer(layer, 'float'). Received: "
            "scheme=16"
        )
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
