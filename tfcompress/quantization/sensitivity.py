"""Which layers int8 hurts: quantize one layer at a time and measure the accuracy drop.

`quantization_sensitivity(model, (x, y))` builds, for every weighted layer, the
QAT model in which that layer alone is int8 (every other weighted layer kept
float with `quantize_annotate_layer(layer, "float")`, their outputs quantized
again where an int8 layer takes them, as in the mixed file), sets its ranges from the
data (a few training-mode passes; the BatchNorm statistics those passes move
are put back), and measures top-1 accuracy in inference mode. No training.
`choose_float_layers` turns the drops into the set of layers to keep float
for an accuracy budget (`quantize_model(..., precision="auto")`).
"""

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
    "check_accuracy_budget",
    "choose_float_layers",
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
    from tfcompress.quantization.api import quantize_model

    if not (isinstance(data, tuple) and len(data) == 2):
        raise ValueError("`data` must be (x, y): the examples the accuracy is measured on.")
    check_model(model, "quantization_sensitivity")
    x = np.asarray(data[0], np.float32)
    y = np.asarray(data[1]).reshape(-1)
    names = weighted_layer_names(model)
    if not names:
        raise ValueError(f"Model {model.name!r} has no weighted layer to quantize.")
    graph = ModelGraph(model)
    layers = {name: graph.layer_named(name) for name in names}
    before = {name: annotation_of(layer) for name, layer in layers.items()}
    result = QuantizationSensitivity(_accuracy(model, x, y, batch_size), {})
    progress = keras.utils.Progbar(len(names), verbose=verbose, unit_name="layer")
    try:
        for i, name in enumerate(names):
            for other, layer in layers.items():
                if other == name:
                    clear_annotation(layer)
                else:
                    quantize_annotate_layer(layer, "float")
            qat = quantize_model(model, **quantize_kwargs)
            _calibrate(qat, x, batch_size, calibration_batches)
            result.accuracy[name] = _accuracy(qat, x, y, batch_size)
            progress.update(i + 1)
    finally:
        for name, layer in layers.items():
            if before[name] is None:
                clear_annotation(layer)
            else:
                quantize_annotate_layer(layer, before[name])
    return result


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
