"""Mixed precision: layers kept float in an int8 QAT model and file, and
quantize_model(precision="auto") choosing them from the quantization sensitivity.

References: a NumPy twin of the mixed QAT model's inference, LiteRT (XNNPACK and
the reference kernels) running the exported file, and the float weights the file
must carry (the BatchNorm folded in NumPy)."""

import keras
import numpy as np
import numpy_reference as ref
import pytest
from ai_edge_litert.interpreter import Interpreter
from keras import layers as L
from mixed_helpers import LOSS, annotated_qat, file_ops, mlp, trained

from tfcompress import datasets
from tfcompress.export import to_tflite, verify
from tfcompress.quantization import (
    choose_float_layers,
    float_layers,
    quantization_sensitivity,
    quantize_annotate_layer,
    quantize_model,
)
from tfcompress.quantization.annotate import annotation_of, clear_annotation


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_test, y_test) = datasets.load("digits")
    return x, y, x_test, y_test


def _cnn():
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    h = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(h))
    h = L.Conv2D(8, 3, padding="same", name="c2")(h)
    h = L.ReLU(name="r2")(L.BatchNormalization(name="bn2")(h))
    h = L.Flatten()(L.MaxPooling2D()(h))
    h = L.Dense(32, activation="relu", name="d1")(h)
    h = L.Dense(16, name="mid")(h)
    return keras.Model(inputs, L.Dense(10, name="d2")(h))


def _trained(build, digits, epochs=3, seed=0):
    return trained(build, digits, epochs, seed)


def _qat(model, digits, float_names):
    return annotated_qat(model, digits, dict.fromkeys(float_names, "float"))


@pytest.fixture(scope="module")
def mixed_cnn(digits):
    model = _trained(_cnn, digits)
    qat = _qat(model, digits, ["c2", "mid"])
    return model, qat, to_tflite(qat)


def test_a_float_conv_keeps_its_batchnorm_and_relu(mixed_cnn):
    _, qat, _ = mixed_cnn
    names = [layer.name for layer in qat.layers]
    assert float_layers(qat) == ["c2", "bn2", "r2", "mid"]
    for name in ("c2", "bn2", "r2", "mid", "quant_r2", "quant_mid", "quant_c1", "quant_d2"):
        assert name in names
    assert "quant_c2" not in names and "quant_bn2" not in names  # nothing between them


def test_the_file_mixes_int8_and_float_operators(mixed_cnn):
    _, qat, tflite = mixed_cnn
    interpreter, tensors, ops = file_ops(tflite)
    kinds = {}
    for op in ops:
        out = tensors[op["outputs"][0]]
        kinds.setdefault(op["op_name"], []).append(out["dtype"])
    assert kinds["CONV_2D"] == [np.int8, np.float32]  # c1 int8, c2 (+ bn2 + r2) float
    assert kinds["FULLY_CONNECTED"] == [np.int8, np.float32, np.int8]  # d1, mid, d2
    assert len(kinds["DEQUANTIZE"]) == 2 and len(kinds["QUANTIZE"]) == 2
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # The float conv carries the QAT model's float weights, bn2 folded in (NumPy fold).
    conv = [op for op in ops if op["op_name"] == "CONV_2D"][1]
    kernel = interpreter.get_tensor(conv["inputs"][1])  # (out, kh, kw, in)
    bias = interpreter.get_tensor(conv["inputs"][2])
    w, b = qat.get_layer("c2").get_weights()
    gamma, beta, mean, var = qat.get_layer("bn2").get_weights()
    scale = gamma / np.sqrt(var + qat.get_layer("bn2").epsilon)
    np.testing.assert_allclose(kernel, np.transpose(w * scale, (3, 0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, beta + (b - mean) * scale, rtol=1e-5, atol=1e-6)


def test_mixed_file_matches_the_qat_model(mixed_cnn, digits):
    _, qat, tflite = mixed_cnn
    x_test = digits[2]
    optimized = verify(tflite, qat, x_test)
    assert optimized["within_1_step"] >= 0.99 and optimized["argmax_agreement"] >= 0.99
    reference = verify(tflite, qat, x_test, runner="litert_ref")
    # The float conv sums in another order in the reference kernels: a rounding
    # at the QUANTIZE after it can move by one step.
    assert reference["within_1_step"] >= 0.99 and reference["argmax_agreement"] >= 0.99


def test_qat_inference_matches_a_numpy_twin(digits):
    """fc1 int8, fc2 float, fc3 int8: the float layer's input is fc1's int8 output
    (dequantized), its output is quantized again at quant_fc2's trained range."""
    x_test = digits[2].reshape(len(digits[2]), -1)
    model = _trained(mlp, digits)
    qat = _qat(model, digits, ["fc2"])
    (w1, b1), (w2, b2), (w3, b3) = (
        qat.get_layer(n).layer.get_weights() if n != "fc2" else qat.get_layer(n).get_weights()
        for n in ("quant_fc1", "fc2", "quant_fc3")
    )

    def bounds(name):
        q = qat.get_layer(name)
        q = getattr(q, "output_quantizer", q)
        return tuple(float(v) for v in q._bounds())

    def int8_dense(values, w, b, s_in):
        bound = np.abs(w).max()
        wq = ref.fake_quant(w, -bound, bound, narrow_range=True)
        step = s_in * bound / 127
        return values @ wq + np.round(b / step) * step

    lo, hi = bounds("quant_input")
    xq = ref.fake_quant(x_test, lo, hi)
    h_lo, h_hi = bounds("quant_fc1")
    h1 = ref.fake_quant(np.maximum(int8_dense(xq, w1, b1, (hi - lo) / 255), 0), h_lo, h_hi)
    g_lo, g_hi = bounds("quant_fc2")
    h2 = ref.fake_quant(np.maximum(h1 @ w2 + b2, 0), g_lo, g_hi)  # float, then int8 again
    z_lo, z_hi = bounds("quant_fc3")
    logits = ref.fake_quant(int8_dense(h2, w3, b3, (g_hi - g_lo) / 255), z_lo, z_hi)
    got = qat.predict(digits[2], verbose=0)
    step = (z_hi - z_lo) / 255
    assert np.mean(np.abs(got - logits) <= step * 1e-3) >= 0.995  # float32 sums may tie
    assert np.max(np.abs(got - logits)) <= step * 1.001
    assert verify(to_tflite(qat), qat, digits[2])["within_1_step"] >= 0.99


def test_float_into_float_has_no_quantizer_between(digits):
    model = _trained(mlp, digits, epochs=1)
    qat = _qat(model, digits, ["fc1", "fc2"])
    names = [layer.name for layer in qat.layers]
    assert "quant_fc1" not in names and "quant_fc2" in names
    tflite = to_tflite(qat)
    ops = file_ops(tflite)[2]
    assert [op["op_name"] for op in ops].count("QUANTIZE") == 1  # after fc2 only
    assert verify(tflite, qat, digits[2])["within_1_step"] >= 0.99


def test_a_float_output_layer_is_quantized_for_int8_output(digits):
    model = _trained(mlp, digits, epochs=1)
    qat = _qat(model, digits, ["fc3"])
    assert float_layers(qat) == ["fc3"]
    tflite = to_tflite(qat)
    interpreter, _, ops = file_ops(tflite)
    assert ops[-1]["op_name"] == "QUANTIZE"
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert verify(tflite, qat, digits[2])["within_1_step"] >= 0.99
    float_io = to_tflite(qat, int8_io=False)
    assert Interpreter(model_content=float_io).get_output_details()[0]["dtype"] == np.float32
    # Float output: fc3's float values, which the QAT model rounds to quant_fc3's grid.
    step = float(qat.get_layer("quant_fc3").scale())
    assert verify(float_io, qat, digits[2])["max_abs_diff"] <= 0.5 * step * 1.01


def test_a_float_softmax_output_keeps_its_softmax_float(digits):
    """A float Dense(softmax) model output: FULLY_CONNECTED and SOFTMAX both float (the
    SOFTMAX's tensors name no layer: it goes with the float op feeding it), then
    QUANTIZE at the softmax's fixed range."""
    def build():
        inputs = keras.Input((8, 8, 1))
        h = L.Dense(24, activation="relu", name="fc1")(L.Flatten()(inputs))
        return keras.Model(inputs, L.Dense(10, activation="softmax", name="out")(h))

    x, y, x_test, _ = digits
    keras.utils.set_random_seed(0)
    model = build()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    quantize_annotate_layer(model.get_layer("out"), "float")
    qat = quantize_model(model)
    clear_annotation(model.get_layer("out"))
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, verbose=0)
    tflite = to_tflite(qat)
    _, tensors, ops = file_ops(tflite)
    kinds = [(op["op_name"], tensors[op["outputs"][0]]["dtype"]) for op in ops
             if op["op_name"] in ("FULLY_CONNECTED", "SOFTMAX", "QUANTIZE")]
    assert kinds == [("FULLY_CONNECTED", np.int8), ("FULLY_CONNECTED", np.float32),
                     ("SOFTMAX", np.float32), ("QUANTIZE", np.int8)]
    result = verify(tflite, qat, x_test)
    assert result["within_1_step"] >= 0.99 and result["argmax_agreement"] >= 0.99


def test_two_input_model_with_a_float_branch(digits):
    x, y, x_test, _ = digits

    def build():
        a, b = keras.Input((8, 8, 1), name="a"), keras.Input((8, 8, 1), name="b")
        ha = L.Dense(16, activation="relu", name="fa")(L.Flatten()(a))
        hb = L.Dense(16, activation="relu", name="fb")(L.Flatten()(b))
        return keras.Model([a, b], L.Dense(10, name="head")(L.Add()([ha, hb])))

    keras.utils.set_random_seed(1)
    model = build()
    model.compile("adam", LOSS)
    model.fit([x, x[:, ::-1]], y, epochs=2, verbose=0)
    quantize_annotate_layer(model.get_layer("fb"), "float")
    qat = quantize_model(model)
    clear_annotation(model.get_layer("fb"))
    qat.compile("adam", LOSS)
    qat.fit([x, x[:, ::-1]], y, epochs=1, verbose=0)
    assert float_layers(qat) == ["fb"]
    tflite = to_tflite(qat)
    result = verify(tflite, qat, [x_test, x_test[:, ::-1]])
    assert result["within_1_step"] >= 0.99


def test_mixed_qat_model_round_trips_through_keras_file(mixed_cnn, digits, tmp_path):
    qat = mixed_cnn[1]
    path = tmp_path / "mixed.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    assert float_layers(loaded) == float_layers(qat)
    np.testing.assert_array_equal(loaded.predict(digits[2], verbose=0),
                                  qat.predict(digits[2], verbose=0))
    again = to_tflite(loaded)
    assert verify(again, loaded, digits[2])["within_1_step"] >= 0.99


def _damaged_mlp(digits):
    """A trained MLP whose fc2 int8 hurts: one huge weight (into a dead input
    unit, so the float model is unchanged) sets the per-tensor scale."""
    model = _trained(mlp, digits)
    h1 = keras.Model(model.input, model.get_layer("fc1").output).predict(digits[0], verbose=0)
    dead = int(np.argmin(h1.max(axis=0)))
    if h1[:, dead].max() > 0:  # make one unit dead: its incoming weights very negative
        w1, b1 = model.get_layer("fc1").get_weights()
        w1[:, dead], b1[dead] = -1.0, -100.0
        model.get_layer("fc1").set_weights([w1, b1])
    w2, b2 = model.get_layer("fc2").get_weights()
    w2[dead, 0] = 1e3 * np.abs(w2).max()
    model.get_layer("fc2").set_weights([w2, b2])
    return model


def test_precision_auto_keeps_the_sensitive_layer_float(digits):
    model = _damaged_mlp(digits)
    x_val, y_val = digits[2], digits[3]
    sensitivity = quantization_sensitivity(model, (x_val, y_val), verbose=0)
    assert next(iter(sensitivity.drops)) == "fc2" and sensitivity.drops["fc2"] > 0.05
    budget = 0.01
    expected = choose_float_layers(sensitivity, budget)
    assert expected[0] == "fc2"
    qat = quantize_model(model, precision="auto", max_accuracy_drop=budget,
                         data=(x_val, y_val), verbose=0)
    kept = [name for name in float_layers(qat) if name in ("fc1", "fc2", "fc3")]
    assert kept == sorted(expected, key=["fc1", "fc2", "fc3"].index)
    for name in ("fc1", "fc2", "fc3"):
        assert annotation_of(model.get_layer(name)) is None  # put back
    # Measured like the sensitivity (ranges from the data, no training): the
    # mixed model keeps the float model's accuracy far better than all-int8.
    x = digits[0]
    for q in (qat, all_int8 := quantize_model(model)):
        for start in range(0, 512, 128):
            q(x[start:start + 128], training=True)
    acc = {name: float(np.mean(np.argmax(q.predict(x_val, verbose=0), -1) == y_val))
           for name, q in (("mixed", qat), ("int8", all_int8))}
    assert acc["mixed"] > acc["int8"] + 0.05
    tflite = to_tflite(qat)
    result = verify(tflite, qat, x_val, labels=y_val)
    assert result["within_1_step"] >= 0.99
    assert result["tflite_accuracy"] == pytest.approx(acc["mixed"], abs=0.01)
    nothing = quantize_model(model, precision="auto", max_accuracy_drop=0.999,
                             data=(x_val, y_val), verbose=0)
    assert float_layers(nothing) == []


def test_bad_precision_inputs_are_named(digits):
    model = _trained(mlp, digits, epochs=1)
    data = (digits[2], digits[3])
    for bad in ("fp16", 4, True, None):
        with pytest.raises(ValueError, match=r"`precision` must be one of 8, 'auto'"):
            quantize_model(model, precision=bad)
    with pytest.raises(ValueError, match=r"data=\(x, y\)"):
        quantize_model(model, precision="auto")
    for bad in (1.5, -0.1, "1%", True):
        with pytest.raises(ValueError, match=r"max_accuracy_drop=.*"):
            quantize_model(model, precision="auto", max_accuracy_drop=bad, data=data)
    with pytest.raises(ValueError, match="activation_bits=16"):
        quantize_model(model, precision="auto", data=data, activation_bits=16)
    layer = model.get_layer("fc2")
    quantize_annotate_layer(layer, 16)  # 16x8 inside the int8 file (test_int16_layers)
    assert annotation_of(layer) == 16
    with pytest.raises(ValueError, match="Received: scheme=True"):
        quantize_annotate_layer(layer, True)
    quantize_annotate_layer(layer, "float")
    quantize_annotate_layer(layer, 8)  # int8: the defaults again
    assert annotation_of(layer) is None


def test_16x8_export_refuses_float_layers(digits):
    model = _trained(mlp, digits, epochs=1)
    quantize_annotate_layer(model.get_layer("fc2"), "float")
    qat = quantize_model(model, activation_bits=16)
    clear_annotation(model.get_layer("fc2"))
    qat(digits[0][:64], training=True)
    with pytest.raises(ValueError, match=r"'fc2'.*mode='int8'"):
        to_tflite(qat, mode="int16x8")
