"""Layers at 16 bits inside an int8 QAT model and file (`quantize_annotate_layer(layer, 16)`).

References: a NumPy twin of the mixed QAT model's inference (int8, 16x8 and int8
layers), a NumPy integer twin of the 16x8 operator run on the file's own int8
input (teacher forced), LiteRT (XNNPACK and the reference kernels) and TFLite
Micro running the file."""

import keras
import numpy as np
import numpy_reference as ref
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from keras import layers as L
from mixed_helpers import annotated_qat, file_ops, mlp, trained

from tfcompress import datasets
from tfcompress.analysis import profile
from tfcompress.export import to_tflite, verify
from tfcompress.export.runners import LiteRTReferenceRunner
from tfcompress.quantization import (
    choose_precisions,
    float_layers,
    int16_layers,
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
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="c2")(h)
    h = L.ReLU(name="r2")(L.BatchNormalization(name="bn2")(h))
    h = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c3")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, L.Dense(10, name="d")(h))


def _trained(build, digits, epochs=2, seed=0):
    return trained(build, digits, epochs, seed)


def _signature(tflite):
    """[(op, input dtype, output dtype)] of the file, in execution order."""
    _, tensors, ops = file_ops(tflite)
    return [(op["op_name"], tensors[op["inputs"][0]]["dtype"].__name__,
             tensors[op["outputs"][0]]["dtype"].__name__) for op in ops
            if op["op_name"] not in ("SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE")]


@pytest.fixture(scope="module")
def cnn16(digits):
    model = _trained(_cnn, digits)
    qat = annotated_qat(model, digits, {"c2": 16, "dw": 16})
    return model, qat, to_tflite(qat)


def test_16_bit_layers_are_16x8_operators_inside_the_int8_file(cnn16):
    _, qat, tflite = cnn16
    assert int16_layers(qat) == ["quant_c2", "quant_dw"] and float_layers(qat) == []
    assert qat.get_layer("quant_c2").activation_bits == 16
    assert qat.get_layer("quant_c1").activation_bits == 8
    names = [layer.name for layer in qat.layers]
    assert "requant_dw" in names and "requant_c2" not in names  # c2 -> dw stays int16
    assert _signature(tflite) == [
        ("CONV_2D", "int8", "int8"),          # c1
        ("QUANTIZE", "int8", "int16"),        # exact: 128 (q - z)
        ("CONV_2D", "int16", "int16"),        # c2 + bn2 + r2
        ("DEPTHWISE_CONV_2D", "int16", "int16"),
        ("QUANTIZE", "int16", "int8"),        # requant_dw
        ("CONV_2D", "int8", "int8"),          # c3
        ("MEAN", "int8", "int8"),
        ("FULLY_CONNECTED", "int8", "int8"),
    ]
    interpreter, tensors, ops = file_ops(tflite)
    quantize, conv = ops[1], ops[2]
    s8 = tensors[quantize["inputs"][0]]["quantization_parameters"]["scales"][0]
    s16 = tensors[quantize["outputs"][0]]["quantization_parameters"]
    assert s16["scales"][0] == pytest.approx(s8 / 128, rel=1e-6)
    assert list(s16["zero_points"]) == [0]
    # Weights: int8 per output channel, the QAT model's fake-quantized, bn2-folded kernel.
    wrapper = qat.get_layer("quant_c2")
    folded = keras.ops.convert_to_numpy(wrapper.folded_weights()[0])  # HWIO
    bound = np.abs(folded).reshape(-1, folded.shape[-1]).max(0)
    expected = np.round(folded / (bound / 127))
    kernel = tensors[conv["inputs"][1]]
    assert kernel["dtype"] == np.int8
    np.testing.assert_array_equal(interpreter.get_tensor(conv["inputs"][1]),
                                  np.transpose(expected, (3, 0, 1, 2)))
    np.testing.assert_allclose(kernel["quantization_parameters"]["scales"], bound / 127,
                               rtol=1e-6)
    bias = tensors[conv["inputs"][2]]
    assert bias["dtype"] == np.int64
    np.testing.assert_allclose(bias["quantization_parameters"]["scales"],
                               s16["scales"][0] * bound / 127, rtol=1e-6)
    out = tensors[conv["outputs"][0]]["quantization_parameters"]
    lo, hi = (float(v) for v in wrapper.output_quantizer._bounds())
    assert out["scales"][0] == pytest.approx(max(-lo, hi) / 32767, rel=1e-6)


def test_the_16x8_operator_matches_a_numpy_integer_twin(cnn16, digits):
    """c2's operator on the file's own int8 input: q16 = 128 (q8 - z8), int64 sums
    with the int8 weights and int64 bias, rescaled to the int16 output, ReLU."""
    _, _, tflite = cnn16
    interpreter = Interpreter(model_content=tflite, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    quantize, conv = ops[1], ops[2]
    source = quantize["inputs"][0]
    _, z8 = tensors[source]["quantization"]
    s_in = tensors[quantize["outputs"][0]]["quantization"][0]
    kernel = interpreter.get_tensor(conv["inputs"][1]).astype(np.int64)  # OHWI
    s_w = tensors[conv["inputs"][1]]["quantization_parameters"]["scales"]
    bias = interpreter.get_tensor(conv["inputs"][2])
    s_out = tensors[conv["outputs"][0]]["quantization"][0]
    detail = interpreter.get_input_details()[0]
    scale, zero = detail["quantization"]
    worst = 0
    for image in digits[2][:20]:
        q = np.clip(np.round(image[None] / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(detail["index"], q)
        interpreter.invoke()
        q8 = interpreter.get_tensor(source).astype(np.int64)
        q16 = interpreter.get_tensor(quantize["outputs"][0]).astype(np.int64)
        np.testing.assert_array_equal(q16, 128 * (q8 - int(z8)))
        acc = np.stack([
            ref.conv2d(q16.astype(np.float64), np.transpose(kernel[o:o + 1], (1, 2, 3, 0)))[..., 0]
            for o in range(kernel.shape[0])], -1).round().astype(np.int64) + bias
        want = np.clip(np.round(acc * (s_in * s_w) / s_out), 0, 32767)  # ReLU fused
        got = interpreter.get_tensor(conv["outputs"][0]).astype(np.int64)
        worst = max(worst, int(np.abs(got - want).max()))
    assert worst <= 1  # fixed-point multiplier vs float rescale


def test_mixed_16_bit_file_matches_the_qat_model(cnn16, digits):
    _, qat, tflite = cnn16
    x_test = digits[2]
    for runner in ("litert", "litert_ref"):
        result = verify(tflite, qat, x_test, runner=runner)
        assert result["within_1_step"] >= 0.99, (runner, result)
        assert result["max_diff_steps"] <= 1.01, (runner, result)


def test_mixed_16_bit_file_on_tflite_micro(cnn16, digits):
    pytest.importorskip("tflite_micro")
    _, qat, tflite = cnn16
    micro = verify(tflite, qat, digits[2][:100], runner="micro")
    reference = verify(tflite, qat, digits[2][:100], runner="litert_ref")
    assert micro["within_1_step"] >= 0.99
    assert micro["max_abs_diff"] == pytest.approx(reference["max_abs_diff"], abs=1e-6)


def test_qat_inference_matches_a_numpy_twin(digits):
    """fc1 int8, fc2 16x8, fc3 int8: fc2 reads fc1's int8 output, its bias is on the
    grid s_in / 128 * s_w, its output is fake-quantized at 16 bits (symmetric,
    -32767..32767) and then at 8 bits (requant_fc2) for fc3."""
    model = _trained(mlp, digits)
    qat = annotated_qat(model, digits, {"fc2": 16})
    x_test = digits[2].reshape(len(digits[2]), -1)
    weights = {n: qat.get_layer(f"quant_{n}").layer.get_weights() for n in ("fc1", "fc2", "fc3")}

    def bounds(name):
        q = qat.get_layer(name)
        q = getattr(q, "output_quantizer", q)
        return tuple(float(v) for v in q._bounds())

    def dense(values, name, step_in):
        w, b = weights[name]
        bound = np.abs(w).max()
        wq = ref.fake_quant(w, -bound, bound, narrow_range=True)
        step = step_in * bound / 127
        return values @ wq + np.round(b / step) * step

    lo, hi = bounds("quant_input")
    xq = ref.fake_quant(x_test, lo, hi)
    h_lo, h_hi = bounds("quant_fc1")
    h1 = ref.fake_quant(np.maximum(dense(xq, "fc1", (hi - lo) / 255), 0), h_lo, h_hi)
    g_lo, g_hi = bounds("quant_fc2")
    assert g_lo == -g_hi  # symmetric int16
    h2 = np.maximum(dense(h1, "fc2", (h_hi - h_lo) / 255 / 128), 0)
    h2 = ref.fake_quant(h2, g_lo, g_hi, num_bits=16, narrow_range=True)
    r_lo, r_hi = bounds("requant_fc2")
    h2 = ref.fake_quant(h2, r_lo, r_hi)
    z_lo, z_hi = bounds("quant_fc3")
    logits = ref.fake_quant(dense(h2, "fc3", (r_hi - r_lo) / 255), z_lo, z_hi)
    got = qat.predict(digits[2], verbose=0)
    step = (z_hi - z_lo) / 255
    assert np.mean(np.abs(got - logits) <= step * 1e-3) >= 0.995  # float32 sums may tie
    assert np.max(np.abs(got - logits)) <= step * 1.001
    tflite = to_tflite(qat)
    assert verify(tflite, qat, digits[2], runner="litert_ref")["within_1_step"] >= 0.99


@pytest.mark.parametrize("int8_io", [True, False])
def test_a_16_bit_output_layer(digits, int8_io):
    """The model output from a 16-bit layer: requantized to int8 (requant_fc3), then
    dequantized for a float output."""
    model = _trained(mlp, digits, epochs=1)
    qat = annotated_qat(model, digits, {"fc3": 16})
    tflite = to_tflite(qat, int8_io=int8_io)
    tail = [op for op, _, _ in _signature(tflite)][-3:]
    assert tail == (["FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE"] if not int8_io
                    else ["QUANTIZE", "FULLY_CONNECTED", "QUANTIZE"])
    output = Interpreter(model_content=tflite).get_output_details()[0]
    assert output["dtype"] == (np.int8 if int8_io else np.float32)
    result = verify(tflite, qat, digits[2], runner="litert_ref")
    if int8_io:
        assert result["within_1_step"] >= 0.99
    else:  # the dequantized int8 output: within one step of requant_fc3's grid
        step = float(qat.get_layer("requant_fc3").scale())
        assert result["max_abs_diff"] <= step * 1.01
        assert np.mean(np.abs(np.asarray(LiteRTReferenceRunner(tflite).run(digits[2])[0])
                              - qat.predict(digits[2], verbose=0)) <= step * 1e-3) >= 0.99


def test_16_bit_beside_float_layers(digits):
    """fc1 float, fc2 16x8 (fed by fc1's requantized int8 output), fc3 int8."""
    model = _trained(mlp, digits, epochs=1)
    qat = annotated_qat(model, digits, {"fc1": "float", "fc2": 16})
    assert float_layers(qat) == ["flatten", "fc1"] or float_layers(qat) == ["fc1"]
    assert int16_layers(qat) == ["quant_fc2"]
    tflite = to_tflite(qat)
    kinds = [(op, i, o) for op, i, o in _signature(tflite)]
    assert ("FULLY_CONNECTED", "float32", "float32") in kinds
    assert ("FULLY_CONNECTED", "int16", "int16") in kinds
    assert verify(tflite, qat, digits[2], runner="litert_ref")["within_1_step"] >= 0.99


def test_keras_round_trip_keeps_the_16_bit_layers(cnn16, digits, tmp_path):
    _, qat, tflite = cnn16
    path = tmp_path / "qat16.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert int16_layers(loaded) == int16_layers(qat)
    np.testing.assert_array_equal(loaded.predict(digits[2], verbose=0),
                                  qat.predict(digits[2], verbose=0))
    again = to_tflite(loaded)
    assert _signature(again) == _signature(tflite)
    a = verify(again, loaded, digits[2], runner="litert_ref")
    assert a["within_1_step"] >= 0.99


def test_profile_counts_16_bit_layers(cnn16):
    _, qat, _ = cnn16
    rows = {row["name"]: row for row in profile(qat)["layers"]}
    c2, c3 = rows["quant_c2"], rows["quant_c3"]
    # 8 int8 weights per output channel-tap; int64 bias at 16 bits, int32 at 8.
    assert c2["param_bits"] == 3 * 3 * 8 * 8 * 8 + 8 * 64
    assert c3["param_bits"] == 3 * 3 * 8 * 8 * 8 + 8 * 32
    # Accumulator: int16 inputs, fan-in 72: 8 + 16 + ceil(log2 72) = 31 bits by the rule.
    assert (c2["activation_bits"], c2["fan_in"], c2["accumulator_bits_rule"]) == (16, 72, 31)
    assert (c3["activation_bits"], c3["accumulator_bits_rule"]) == (8, 23)


def test_16_with_activation_bits_16_is_the_whole_model(digits):
    model = _trained(mlp, digits, epochs=1)
    quantize_annotate_layer(model.get_layer("fc2"), 16)
    try:
        qat = quantize_model(model, activation_bits=16)
    finally:
        clear_annotation(model.get_layer("fc2"))
    assert int16_layers(qat) == []
    assert "requant_fc2" not in [layer.name for layer in qat.layers]


def _concat_model():
    inputs = keras.Input((8, 8, 1))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="b")(inputs)
    h = L.Concatenate()([a, b])
    return keras.Model(inputs, L.Dense(10, activation="softmax", name="out")(L.Flatten()(h)))


@pytest.mark.parametrize("name, why", [
    ("a", "feeds a Concatenate"),
    ("out", "softmax output has TFLite's fixed int8 range"),
])
def test_layers_that_cannot_be_16_bit_are_named(name, why):
    model = _concat_model()
    quantize_annotate_layer(model.get_layer(name), 16)
    try:
        with pytest.raises(ValueError, match=rf"Layer '{name}' cannot be annotated 16.*{why}"):
            quantize_model(model)
    finally:
        clear_annotation(model.get_layer(name))


def test_a_batchnorm_cannot_be_16_bit():
    inputs = keras.Input((8, 8, 1))
    h = L.BatchNormalization(name="bn")(L.MaxPooling2D()(inputs))
    model = keras.Model(inputs, L.Dense(3, name="d")(L.Flatten()(h)))
    quantize_annotate_layer(model.get_layer("bn"), 16)
    try:
        with pytest.raises(ValueError, match=r"Layer 'bn' cannot be annotated 16.*"
                                              r"BatchNormalization"):
            quantize_model(model)
    finally:
        clear_annotation(model.get_layer("bn"))


def test_unknown_per_layer_precision_is_named():
    layer = L.Dense(3)
    for bad in (32, 4, "int16", 16.5):
        with pytest.raises(ValueError, match=rf"8, 16\. Received: scheme={bad!r}"):
            quantize_annotate_layer(layer, bad)


def _outlier_mlp(digits):
    """A trained MLP with one fc1 unit stuck at 1000 (fc2 ignores it: the float model is
    unchanged): fc1's output range is [0, 1000], so an int8 step of ~3.9 wipes out the
    other units' values, while int16's step of ~0.03 keeps them."""
    model = _trained(mlp, digits)
    w1, b1 = model.get_layer("fc1").get_weights()
    w1[:, 0], b1[0] = 0.0, 1000.0
    model.get_layer("fc1").set_weights([w1, b1])
    w2, b2 = model.get_layer("fc2").get_weights()
    w2[0, :] = 0.0
    model.get_layer("fc2").set_weights([w2, b2])
    return model


def _calibrated(qat, x):
    for start in range(0, 512, 128):
        qat(x[start:start + 128], training=True)
    return qat


def test_precision_auto_chooses_16_bits_where_they_suffice(digits):
    model = _outlier_mlp(digits)
    x, _, x_val, y_val = digits
    baseline = float(np.mean(np.argmax(model.predict(x_val, verbose=0), -1) == y_val))
    budget = 0.02
    sensitivity = quantization_sensitivity(model, (x_val, y_val), verbose=0)
    assert sensitivity.drops["fc1"] > 0.1 and sensitivity.drops["fc2"] > 0.1
    chosen = choose_precisions(model, (x_val, y_val), sensitivity, budget, verbose=0)
    assert chosen == {"fc1": 16, "fc2": 16} or chosen == {"fc2": 16, "fc1": 16}
    qat = quantize_model(model, precision="auto", max_accuracy_drop=budget,
                         data=(x_val, y_val), verbose=0, init_range=None)
    assert int16_layers(qat) == ["quant_fc1", "quant_fc2"] and float_layers(qat) == []
    for name in ("fc1", "fc2", "fc3"):
        assert annotation_of(model.get_layer(name)) is None  # put back
    tflite = to_tflite(_calibrated(qat, x))
    kinds = _signature(tflite)
    assert kinds.count(("FULLY_CONNECTED", "int16", "int16")) == 2
    result = verify(tflite, qat, x_val, labels=y_val, runner="litert_ref")
    assert result["within_1_step"] >= 0.99
    all_int8 = to_tflite(_calibrated(quantize_model(model, init_range=None), x))
    int8_result = verify(all_int8, model, x_val, labels=y_val)
    assert result["tflite_accuracy"] >= baseline - budget
    assert result["tflite_accuracy"] > int8_result["tflite_accuracy"] + 0.1
