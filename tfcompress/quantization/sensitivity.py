"""Which layers int8 hurts: quantize one layer at a time and measure the accuracy drop.

`quantization_sensitivity(model, (x, y))` builds, for every weighted layer, the
QAT model in which that layer alone is int8 (every other weighted layer kept
float with `quantize_annotate_layer(layer, "float")`, their outputs quantized
again where an int8 layer takes them, as in the mixed file), sets its ranges from the
data (a few training-mode passes; the BatchNorm statistics those passes move
are put back), and measures top-1 accuracy in inference mode. No training.
`choose_float_layers` turns the drops into the set of layers to keep out of
int8 for an accuracy budget, and `choose_precisions` tries each of them at 16
bits, measuring the whole mixed model (`quantize_model(..., precision="auto")`).
"""

import contextlib
import dataclasses

import keras
import numpy as np

from tfcompress.core.graph import ModelGraph, check_model
from tfcompress.quantization.annotate import (
    annotation_of,
    clear_annotation,
    quantize_annotate_layer,
)
from tfcompress.quantization.roles import quantization_role

__all__ = [
    "QuantizationSensitivity",
    "annotated",
    "check_accuracy_budget",
    "choose_float_layers",
    "choose_precisions",
    "quantization_sensitivity",
]

# Variables of an ActivationQuantizer: kept after calibration (everything else is restored).
_RANGE_VARIABLES = ("range_min", "range_max", "initialized", "signed", "step", "alpha")


@dataclasses.dataclass
class QuantizationSensitivity:
    """Accuracy of the float model and of each layer alone in int8.

    Attributes:
        baseline: top-1 accuracy of the float model.
        accuracy: {layer name: top-1 accuracy with only that layer int8}.
    """

    baseline: float
    accuracy: dict

    @property
    def drops(self):
        """{layer name: baseline - accuracy}, most sensitive first."""
        drops = {name: self.baseline - acc for name, acc in self.accuracy.items()}
        return dict(sorted(drops.items(), key=lambda item: -item[1]))


def _accuracy(model, x, y, batch_size):
    correct = 0
    for start in range(0, len(y), batch_size):
        out = keras.tree.flatten(model(x[start:start + batch_size], training=False))[0]
        correct += int(np.sum(np.argmax(np.asarray(out), -1) == y[start:start + batch_size]))
    return correct / len(y)


def _calibrate(qat, x, batch_size, batches):
    """Sets the QAT model's ranges from `x`; other state (BatchNorm statistics) restored."""
    kept = [v for v in qat.non_trainable_variables if v.name not in _RANGE_VARIABLES]
    saved = [keras.ops.convert_to_numpy(v) for v in kept]
    for start in range(0, min(len(x), batches * batch_size), batch_size):
        qat(x[start:start + batch_size], training=True)
    for variable, value in zip(kept, saved):
        variable.assign(value)


def weighted_layer_names(model):
    """The layers `quantize_model` gives int8 weights (Conv2D, Dense, ...), graph order."""
    graph = ModelGraph(model)
    return [graph.name_of(layer) for layer in graph.layers
            if quantization_role(layer) == "weights"]


@contextlib.contextmanager
def annotated(layers, schemes):
    """Within the block the named layers carry `schemes` ({name: scheme}; None: the
    defaults); their annotations before are restored after it.

    Args:
        layers: {name: layer} of the model's layers that may be annotated.
        schemes: {name: scheme or None}.
    """
    before = {name: annotation_of(layer) for name, layer in layers.items()}
    try:
        for name, scheme in schemes.items():
            if scheme is None:
                clear_annotation(layers[name])
            else:
                quantize_annotate_layer(layers[name], scheme)
        yield
    finally:
        for name, layer in layers.items():
            if before[name] is None:
                clear_annotation(layer)
            else:
                quantize_annotate_layer(layer, before[name])


def _weighted_layers(model):
    graph = ModelGraph(model)
    return {name: graph.layer_named(name) for name in weighted_layer_names(model)}


def _calibrated_accuracy(model, x, y, batch_size, calibration_batches, quantize_kwargs):
    """Accuracy of `quantize_model(model)` with its ranges set from `x` (no training)."""
    from tfcompress.quantization.api import quantize_model

    # Ranges from the data: they start at the first batch (a start at init_range
    # would barely move in a few passes with a slow moving average).
    qat = quantize_model(model, **dict(quantize_kwargs, init_range=None))
    _calibrate(qat, x, batch_size, calibration_batches)
    return _accuracy(qat, x, y, batch_size)


def _examples(data):
    if not (isinstance(data, tuple) and len(data) == 2):
        raise ValueError("`data` must be (x, y): the examples the accuracy is measured on.")
    return np.asarray(data[0], np.float32), np.asarray(data[1]).reshape(-1)


def quantization_sensitivity(model, data, *, batch_size=128, calibration_batches=4,
                             verbose=1, **quantize_kwargs):
    """Accuracy with each weighted layer alone quantized to int8 (no training).

    Args:
        model: a built functional or Sequential float classifier (unchanged).
        data: (x, y) to calibrate on and measure with (integer labels).
        batch_size: examples per pass.
        calibration_batches: training-mode passes that set the ranges.
        verbose: 1 for a progress bar.
        **quantize_kwargs: passed to `quantize_model` (e.g. `per_channel`).

    Returns:
        A `QuantizationSensitivity` (`baseline`, `accuracy`, `drops`).

    Raises:
        ValueError: for data that is not (x, y), a model without weighted layers,
            or one `quantize_model` refuses.

    Example:
        >>> result = quantization_sensitivity(model, (x_val, y_val))
        >>> list(result.drops)[:2]    # the two most sensitive layers
        ['conv1', 'fc2']
    """
    x, y = _examples(data)
    check_model(model, "quantization_sensitivity")
    layers = _weighted_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no weighted layer to quantize.")
    result = QuantizationSensitivity(_accuracy(model, x, y, batch_size), {})
    progress = keras.utils.Progbar(len(layers), verbose=verbose, unit_name="layer")
    for i, name in enumerate(layers):
        alone = {other: None if other == name else "float" for other in layers}
        with annotated(layers, alone):
            result.accuracy[name] = _calibrated_accuracy(
                model, x, y, batch_size, calibration_batches, quantize_kwargs)
        progress.update(i + 1)
    return result


def choose_precisions(model, data, sensitivity, max_accuracy_drop, *, batch_size=128,
                      calibration_batches=4, verbose=1, **quantize_kwargs):
    """Per-layer precision for an accuracy budget: int8, 16x8 where it suffices, else float.

    The layers `choose_float_layers` keeps out of int8 start float. Then, most
    sensitive first, each is tried at 16 bits (`quantize_annotate_layer(layer,
    16)`; skipped where TFLite cannot run it in 16x8): the whole mixed model is
    calibrated and measured (no training), and 16 stays when the model's
    accuracy drop is at most `max_accuracy_drop` (or no worse than with the
    layer float). A 16-bit layer's output is int16 only into 16-bit and float
    layers (int8 layers take it requantized), so 16 helps a run of sensitive
    layers more than a lone one: measuring the whole model sees that.

    Args:
        model: a built functional or Sequential float classifier (unchanged).
        data: (x, y) to calibrate on and measure with (integer labels).
        sensitivity: its `QuantizationSensitivity` on `data`.
        max_accuracy_drop: the budget, in [0, 1) (0.01 = one point).
        batch_size, calibration_batches: as `quantization_sensitivity`.
        verbose: 1 for a progress bar over the layers tried at 16 bits.
        **quantize_kwargs: passed to `quantize_model`.

    Returns:
        {layer name: 16 or "float"} for the layers kept out of int8, most
        sensitive first (empty when every layer fits int8).

    Raises:
        ValueError: for a budget outside [0, 1) or data that is not (x, y).

    Example:
        >>> result = quantization_sensitivity(model, (x_val, y_val))
        >>> choose_precisions(model, (x_val, y_val), result, 0.005)
        {'fc1': 16, 'fc2': 'float'}
    """
    x, y = _examples(data)
    keep = choose_float_layers(sensitivity, max_accuracy_drop)
    chosen = {name: "float" for name in keep}
    if not keep:
        return chosen
    layers = _weighted_layers(model)

    def accuracy(schemes):
        with annotated(layers, schemes):
            return _calibrated_accuracy(model, x, y, batch_size, calibration_batches,
                                        quantize_kwargs)

    current = accuracy(chosen)
    progress = keras.utils.Progbar(len(keep), verbose=verbose, unit_name="layer")
    for i, name in enumerate(keep):
        trial = dict(chosen, **{name: 16})
        try:
            acc = accuracy(trial)
        except ValueError:  # not a 16x8 layer (a softmax output, a BatchNormalization...)
            acc = None
        drop = None if acc is None else sensitivity.baseline - acc
        if drop is not None and drop <= max(
                max_accuracy_drop, sensitivity.baseline - current) + 1e-12:
            chosen, current = trial, acc
        progress.update(i + 1)
    return chosen


def check_accuracy_budget(max_accuracy_drop):
    """Raises a ValueError unless `max_accuracy_drop` is a number in [0, 1)."""
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not 0.0 <= max_accuracy_drop < 1.0:
        raise ValueError(
            f"`max_accuracy_drop` must be in [0, 1) (0.01 = one point). "
            f"Received: max_accuracy_drop={max_accuracy_drop!r}"
        )


def choose_float_layers(sensitivity, max_accuracy_drop):
    """The fewest most-sensitive layers to keep float so the summed drops fit the budget.

    The drops of the layers left int8 are added (each measured alone), and the
    most sensitive layer is kept float until that sum is at most
    `max_accuracy_drop`.

    Args:
        sensitivity: a `QuantizationSensitivity`.
        max_accuracy_drop: the accuracy the int8 layers may cost together, in
            [0, 1) (0.01 = one point).

    Returns:
        The list of layer names to keep float, most sensitive first.

    Raises:
        ValueError: for a budget outside [0, 1).
    """
    check_accuracy_budget(max_accuracy_drop)
    drops = sensitivity.drops
    kept_float = []
    remaining = dict(drops)
    while remaining and sum(max(d, 0.0) for d in remaining.values()) > max_accuracy_drop:
        name = next(iter(remaining))
        kept_float.append(name)
        del remaining[name]
    return kept_float
