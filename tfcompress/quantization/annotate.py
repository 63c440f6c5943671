"""Per-layer choices for `quantize_model`: weight scales per channel or per tensor, or float."""

import weakref

__all__ = ["QUANTIZE_CHOICES", "annotation_of", "clear_annotation", "quantize_annotate_layer"]

_ANNOTATIONS = weakref.WeakKeyDictionary()
QUANTIZE_CHOICES = ("per_channel", "per_tensor", "float")


def quantize_annotate_layer(layer, scheme="per_channel"):
    """Chooses how `quantize_model` treats one layer.

    Args:
        layer: a layer of the model that will be passed to `quantize_model`.
        scheme: "per_channel" or "per_tensor" weight scales, or "float" to keep
            the layer unquantized (its inputs/outputs then stay float, which an
            integer-only export reports as an error naming the layer).

    Returns:
        The same layer, annotated.

    Raises:
        ValueError: for an unknown scheme.
    """
    if scheme not in QUANTIZE_CHOICES:
        raise ValueError(
            f"`scheme` must be one of {', '.join(repr(c) for c in QUANTIZE_CHOICES)}. "
            f"Received: scheme={scheme!r}"
        )
    _ANNOTATIONS[layer] = scheme
    return layer


def annotation_of(layer):
    """The scheme `quantize_annotate_layer` gave `layer`, or None."""
    return _ANNOTATIONS.get(layer)


def clear_annotation(layer):
    """Removes the scheme `quantize_annotate_layer` gave `layer` (if any)."""
    _ANNOTATIONS.pop(layer, None)
