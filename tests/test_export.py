"""Float TFLite export of every tfcompress layer, checked against Keras with LiteRT."""

import keras
import numpy as np
import pytest

from tfcompress import export
from tfcompress.layers import (
    AdderConv,
    AdderDense,
    BinaryConv,
    BinaryDense,
    GhostBottleneck,
    GhostConv,
    Shift,
    ShiftConv,
)

BUILTIN_ONLY = {
    "ABS", "ADD", "BROADCAST_TO", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
    "EXPAND_DIMS", "FULLY_CONNECTED", "GREATER_EQUAL", "MEAN", "MUL", "NEG", "PACK",
    "PAD", "RESHAPE", "SELECT_V2", "SHAPE", "STRIDED_SLICE", "SUB", "SUM", "RELU",
    "RELU6", "HARD_SWISH", "LOGISTIC", "SOFTMAX", "MAX_POOL_2D", "AVERAGE_POOL_2D",
    "DELEGATE", "GATHER", "TRANSPOSE", "MAXIMUM", "MINIMUM", "LEAKY_RELU",
}


def _op_names(tflite_bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    return {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: GhostConv(12, kernel_size=3, strides=2),
        lambda: GhostBottleneck(24, 16, strides=2, se_ratio=0.25),
        lambda: Shift(3),
        lambda: ShiftConv(12, strides=2),
        lambda: AdderConv(8, 3, strides=2),
        lambda: BinaryConv(8, 3, padding="valid"),
    ],
    ids=["ghost", "ghost_bottleneck", "shift", "shift_conv", "adder", "binary"],
)
def test_float_export_matches_keras(make_layer):
    rng = np.random.default_rng(0)
    inputs = keras.Input((9, 9, 18))
    model = keras.Model(inputs, make_layer()(inputs))
    data = rng.normal(size=(16, 9, 9, 18)).astype("float32")
    tflite = export.to_tflite(model, mode="float32")
    lite, raw = export.run_tflite(tflite, data, batch_size=5)
    expected = model.predict(data, verbose=0)
    assert lite.shape == expected.shape and raw.dtype == np.float32
    np.testing.assert_allclose(lite, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    ops = _op_names(tflite)
    assert ops <= BUILTIN_ONLY, f"non-builtin or unexpected ops: {ops - BUILTIN_ONLY}"


def test_dense_variants_and_verify_report():
    rng = np.random.default_rng(1)
    inputs = keras.Input((20,))
    x = AdderDense(16)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = BinaryDense(5)(x)
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    data = rng.normal(size=(40, 20)).astype("float32")
    report = export.verify(export.to_tflite(model, mode="float32"), model, data)
    assert report["examples"] == 40
    assert report["max_abs_diff"] < 1e-5
    assert report["argmax_agreement"] == 1.0


@pytest.mark.slow
def test_dynamic_and_float16_modes_shrink_the_file():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(64, 3)(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    sizes = {
        mode: len(export.to_tflite(model, mode=mode))
        for mode in ("float32", "float16", "dynamic")
    }
    params_bytes = model.count_params() * 4
    assert sizes["float32"] > params_bytes
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["dynamic"] < 0.35 * sizes["float32"]


def test_export_errors():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no defined input shape"):
        export.to_tflite(model, mode="float32")
    inputs = keras.Input((4,))
    built = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="'int4'"):
        export.to_tflite(built, mode="int4")
