"""quantization_sensitivity: each weighted layer alone in int8, against a NumPy twin of
the QAT model it builds; choose_float_layers' budget rule."""

import keras
import numpy as np
import numpy_reference as ref
import pytest

from tfcompress import datasets
from tfcompress.analysis import quantization_sensitivity
from tfcompress.quantization import (
    QuantizationSensitivity,
    choose_float_layers,
    quantize_annotate_layer,
)
from tfcompress.quantization.annotate import annotation_of

L = keras.layers


@pytest.fixture(scope="module")
def mlp():
    (x, y), (x_test, y_test) = datasets.load("digits")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = L.Dense(16, activation="relu", name="fc1")(L.Flatten()(inputs))
    model = keras.Model(inputs, L.Dense(10, name="fc2")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, verbose=0)
    return model, x_test.reshape(len(x_test), -1), y_test


def _range(values):
    return min(float(values.min()), 0.0), max(float(values.max()), 0.0)


def _weights_int8(kernel):
    bound = np.abs(kernel).max()  # Dense: one scale (TFLite's FULLY_CONNECTED)
    return ref.fake_quant(kernel, -bound, bound, narrow_range=True), bound / 127


def _twin_accuracy(model, x, y, layer):
    """The QAT model with only `layer` int8, ranges from one pass over all of x
    (ema_decay=0: the range is that batch's min / max), in NumPy. A float layer's
    output is quantized again where an int8 layer takes it or the model returns
    it (as the mixed int8 file does)."""
    (w1, b1), (w2, b2) = model.get_layer("fc1").get_weights(), model.get_layer("fc2").get_weights()
    lo, hi = _range(x)
    xq = ref.fake_quant(x, lo, hi)  # the model input's quantizer
    if layer == "fc1":
        w1q, s_w = _weights_int8(w1)
        h_lo, h_hi = _range(np.maximum(xq @ w1q + b1, 0))  # training pass: bias as is
        z_lo, z_hi = _range(ref.fake_quant(np.maximum(xq @ w1q + b1, 0), h_lo, h_hi) @ w2 + b2)
        step = (hi - lo) / 255 * s_w  # inference: bias on the int32 grid s_in * s_w
        h = np.maximum(xq @ w1q + np.round(b1 / step) * step, 0)
        logits = ref.fake_quant(ref.fake_quant(h, h_lo, h_hi) @ w2 + b2, z_lo, z_hi)
    else:
        h = np.maximum(xq @ w1 + b1, 0)  # float, then quantized again for the int8 fc2
        h_lo, h_hi = _range(h)
        hq = ref.fake_quant(h, h_lo, h_hi)
        w2q, s_w = _weights_int8(w2)
        z_lo, z_hi = _range(hq @ w2q + b2)
        step = (h_hi - h_lo) / 255 * s_w
        logits = ref.fake_quant(hq @ w2q + np.round(b2 / step) * step, z_lo, z_hi)
    return float(np.mean(logits.argmax(-1) == y))


def test_each_layer_alone_matches_the_numpy_twin(mlp):
    model, x, y = mlp
    before = [w.copy() for w in model.get_weights()]
    result = quantization_sensitivity(
        model, (x.reshape(-1, 8, 8, 1), y), batch_size=len(x), calibration_batches=1,
        verbose=0, init_range=None, ema_decay=0.0,
    )
    baseline = float(np.mean(model.predict(x.reshape(-1, 8, 8, 1), verbose=0).argmax(-1) == y))
    assert result.baseline == pytest.approx(baseline)
    assert sorted(result.accuracy) == ["fc1", "fc2"]
    for name in ("fc1", "fc2"):
        # One example of slack: float32 sums in another order can move a tie.
        assert abs(result.accuracy[name] - _twin_accuracy(model, x, y, name)) <= 1 / len(y), name
    assert list(result.drops) == sorted(result.drops, key=lambda n: -result.drops[n])
    for new, old in zip(model.get_weights(), before):
        np.testing.assert_array_equal(new, old)  # the model is unchanged
    assert annotation_of(model.get_layer("fc1")) is None  # annotations put back


def test_existing_annotations_survive(mlp):
    model, x, y = mlp
    quantize_annotate_layer(model.get_layer("fc1"), "per_tensor")
    try:
        quantization_sensitivity(model, (x.reshape(-1, 8, 8, 1)[:64], y[:64]), verbose=0)
        assert annotation_of(model.get_layer("fc1")) == "per_tensor"
        assert annotation_of(model.get_layer("fc2")) is None
    finally:
        from tfcompress.quantization.annotate import clear_annotation

        clear_annotation(model.get_layer("fc1"))


def test_choose_float_layers_keeps_the_most_sensitive_until_the_budget_holds():
    result = QuantizationSensitivity(0.90, {"a": 0.85, "b": 0.89, "c": 0.905})
    assert list(result.drops) == ["a", "b", "c"]
    assert choose_float_layers(result, 0.1) == []
    assert choose_float_layers(result, 0.02) == ["a"]  # b's 0.01 fits
    assert choose_float_layers(result, 0.0) == ["a", "b"]  # c gains accuracy
    for bad in (-0.1, 1.0, "1%", True):
        with pytest.raises(ValueError, match="max_accuracy_drop"):
            choose_float_layers(result, bad)


def test_bad_data_is_named(mlp):
    model, x, _ = mlp
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        quantization_sensitivity(model, x)
