"""Bit widths beyond int8: 16x8 (int16 activations, int8 weights) QAT and PTQ, 4-bit
weights; NumPy twins of the quantizers, files against LiteRT, errors."""

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import datasets, export
from tfcompress.quantization import ActivationQuantizer, fake_quant_weights

L = keras.layers


def _fake_quant_np(values, lo, hi, num_bits, narrow_range):
    """TensorFlow's FakeQuantWithMinMaxVars in NumPy (nudged range, round half up),
    in float32 as the kernel computes."""
    f = np.float32
    qmin, qmax = f(1 if narrow_range else 0), f(2 ** num_bits - 1)
    scale = (f(hi) - f(lo)) / (qmax - qmin)
    zero = qmin - f(lo) / scale
    nudged_zero = np.clip(np.floor(zero + f(0.5)), qmin, qmax)
    nudged_lo = (qmin - nudged_zero) * scale
    nudged_hi = (qmax - nudged_zero) * scale
    clipped = np.clip(np.asarray(values, f), nudged_lo, nudged_hi)
    return np.floor((clipped - nudged_lo) * (f(1) / scale) + f(0.5)) * scale + nudged_lo


def test_four_bit_weights_match_numpy_per_channel():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 6)).astype("float32")
    got = keras.ops.convert_to_numpy(fake_quant_weights(kernel, per_channel=True, num_bits=4))
    bound = np.abs(kernel).max(axis=(0, 1, 2))
    scale = bound / 7.0
    expected = np.clip(np.round(kernel / scale), -7, 7) * scale  # levels -7..7
    np.testing.assert_allclose(got, expected, atol=1e-6 * bound.max())
    for channel in range(6):
        assert len(np.unique(np.round(got[..., channel] / scale[channel]))) <= 15


def test_four_bit_weights_pass_the_gradient_straight_through():
    kernel = keras.Variable(np.linspace(-1.0, 1.0, 24, dtype="float32").reshape(2, 12))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = fake_quant_weights(kernel, per_channel=False, num_bits=4)
        loss = keras.ops.sum(out * np.arange(24, dtype="float32").reshape(2, 12))
    grad = tape.gradient(loss, kernel.value)
    np.testing.assert_allclose(grad.numpy(), np.arange(24, dtype="float32").reshape(2, 12))


def test_sixteen_bit_activation_quantizer_is_symmetric_and_matches_numpy():
    quantizer = ActivationQuantizer(num_bits=16, fixed_range=(-0.5, 2.0))
    values = np.random.default_rng(0).uniform(-3.0, 3.0, 5000).astype("float32")
    values[:3] = [-2.0, 0.0, 2.0]
    got = keras.ops.convert_to_numpy(quantizer(values))
    expected = _fake_quant_np(values, -2.0, 2.0, 16, narrow_range=True)
    scale = float(keras.ops.convert_to_numpy(quantizer.scale()))
    # Values on a rounding tie (half a step) may go either way in float32.
    position = (np.clip(values, -2.0, 2.0) + 2.0) / scale
    ties = np.abs(position - np.floor(position) - 0.5) < 1e-3
    assert ties.mean() < 0.01
    np.testing.assert_allclose(got[~ties], expected[~ties], atol=1e-6)
    assert np.abs(got - expected)[ties].max(initial=0.0) <= scale * (1 + 1e-3)
    assert scale == pytest.approx(2.0 / 32767)
    # Zero point 0: the grid is k * scale, k in -32767..32767.
    steps = got / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-2)
    assert np.round(steps).min() == -32767 and np.round(steps).max() == 32767


def test_sixteen_bit_quantizer_gradient_is_zero_outside_the_range():
    import tensorflow as tf

    quantizer = ActivationQuantizer(num_bits=16, fixed_range=(-1.0, 1.0))
    values = tf.constant([-2.0, -0.5, 0.0, 0.7, 1.5])
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = quantizer(values)
    np.testing.assert_allclose(tape.gradient(out, values).numpy(), [0, 1, 1, 1, 0])


def _conv_head_model(head_activation=None):
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same")(inputs)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.Flatten()(h)
    return keras.Model(inputs, L.Dense(10, activation=head_activation)(h))


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_test, y_test) = datasets.load("digits")
    return x, y, x_test, y_test


def _trained(model, x, y, epochs=2, logits=True):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def _tensor_types(tflite):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    return interpreter, {d["name"]: np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}


@pytest.mark.slow
def test_sixteen_by_eight_qat_file_is_within_one_int16_step(digits):
    x, y, x_test, _ = digits
    keras.utils.set_random_seed(0)
    float_model = _trained(_conv_head_model(), x, y)
    qat = _trained(tfcompress.quantize_model(float_model, activation_bits=16), x, y, epochs=1)
    tflite = export.to_tflite(qat, mode="int16x8")
    interpreter, types = _tensor_types(tflite)
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.int16
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.int16
    # The conv and dense biases as the 16x8 kernels read them: int64 (the converter
    # wrote int32, which is rewritten).
    assert sum(t == np.int64 for t in types.values()) >= 2
    assert np.int32 not in [t for n, t in types.items() if "bias" in n.lower()]
    for runner in ("litert", "litert_ref"):
        report = export.verify(tflite, qat, x_test, runner=runner)
        assert report["within_1_step"] >= 0.99, (runner, report)
        # An int16 step of this output is about range / 65534.
        assert report["output_scale"] < 1e-3
    # Without the rewrite the 16x8 convolutions misread their biases: far off.
    from tfcompress.export import convert

    assert convert.int64_biases(tflite) == tflite  # nothing left to rewrite


@pytest.mark.slow
def test_int32_biases_are_what_breaks_the_converters_16x8_file(digits, monkeypatch):
    x, y, x_test, _ = digits
    keras.utils.set_random_seed(0)
    qat = _trained(tfcompress.quantize_model(_conv_head_model(), activation_bits=16), x, y,
                   epochs=1)
    from tfcompress.export import convert

    monkeypatch.setattr(convert, "int64_biases", lambda tflite: tflite)
    report = export.verify(export.to_tflite(qat, mode="int16x8"), qat, x_test[:64])
    assert report["within_1_step"] < 0.9, report


@pytest.mark.slow
def test_sixteen_by_eight_ptq_keeps_the_float_accuracy(digits):
    x, y, x_test, y_test = digits
    keras.utils.set_random_seed(0)
    model = _trained(_conv_head_model("softmax"), x, y, epochs=3, logits=False)
    tflite = export.to_tflite(model, x[:256], mode="int16x8")
    interpreter, _ = _tensor_types(tflite)
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.int16
    report = export.verify(tflite, model, x_test, labels=y_test)
    assert abs(report["tflite_accuracy"] - report["keras_accuracy"]) <= 0.005, report
    assert report["argmax_agreement"] >= 0.99
    assert report["max_abs_diff"] < 0.02  # probabilities: far finer than int8's 1/256


@pytest.mark.slow
def test_four_bit_qat_file_matches_keras_and_stores_int4_weights(digits):
    x, y, x_test, _ = digits
    keras.utils.set_random_seed(0)
    qat = _trained(tfcompress.quantize_model(_conv_head_model(), weight_bits=4), x, y, epochs=1)
    tflite = export.to_tflite(qat)
    report = export.verify(tflite, qat, x_test)
    assert report["within_1_step"] >= 0.999 and report["max_diff_steps"] <= 1.0 + 1e-3, report
    eight = _trained(tfcompress.quantize_model(_conv_head_model(), weight_bits=8), x, y, epochs=1)
    assert len(tflite) < len(export.to_tflite(eight))  # int4 storage is smaller
    # The trained kernels are on the 4-bit grid (15 levels per output channel).
    wrapper = next(layer for layer in qat.layers if hasattr(layer, "weight_bits"))
    kernel, _ = wrapper.folded_weights()
    grid = keras.ops.convert_to_numpy(wrapper._quantized_kernel(kernel))
    for channel in range(grid.shape[-1]):
        assert len(np.unique(grid[..., channel])) <= 15


@pytest.mark.slow
def test_bits_survive_a_keras_round_trip(tmp_path, digits):
    x, y, x_test, _ = digits
    keras.utils.set_random_seed(0)
    qat = _trained(tfcompress.quantize_model(_conv_head_model(), activation_bits=16,
                                             weight_bits=4), x, y, epochs=1)
    qat.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras")
    bits = {layer.num_bits for layer in tfcompress.core.all_layers(loaded)
            if isinstance(layer, ActivationQuantizer)}
    assert bits == {16}
    np.testing.assert_allclose(loaded.predict(x_test[:32], verbose=0),
                               qat.predict(x_test[:32], verbose=0), atol=1e-6)


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"activation_bits": 12}, "`activation_bits` must be one of 8, 16. Received: activation_bits=12"),
    ({"weight_bits": 2}, "`weight_bits` must be one of 8, 4. Received: weight_bits=2"),
    ({"weight_bits": True}, "weight_bits=True"),
])
def test_unsupported_bit_widths_are_named(kwargs, text):
    with pytest.raises(ValueError, match=text.replace("(", r"\(").replace("`", ".")):
        tfcompress.quantize_model(_conv_head_model(), **kwargs)


def test_layers_that_stay_int8_are_named():
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, tfcompress.layers.AdderConv(4, 3, name="adder")(inputs))
    with pytest.raises(ValueError, match=r"'adder'.*8 bits only"):
        tfcompress.quantize_model(model, activation_bits=16)
    with pytest.raises(ValueError, match=r"'adder'.*8 bits only"):
        tfcompress.quantize_model(model, weight_bits=4)
    binary = keras.Model(inputs, tfcompress.layers.BinaryConv(4, 3, name="bin")(inputs))
    with pytest.raises(ValueError, match="16x8 mode does not run"):
        tfcompress.quantize_model(binary, activation_bits=16)


def test_modes_must_match_the_qat_bits():
    eight = tfcompress.quantize_model(_conv_head_model())
    with pytest.raises(ValueError, match="8-bit activations.*mode='int8'"):
        export.to_tflite(eight, mode="int16x8")
    sixteen = tfcompress.quantize_model(_conv_head_model(), activation_bits=16)
    with pytest.raises(ValueError, match="mode='int16x8'"):
        export.to_tflite(sixteen, mode="int8")


def test_an_op_16x8_cannot_run_is_named_with_its_layer():
    inputs = keras.Input((8,))
    hidden = L.Dense(16, activation="hard_swish", name="swish_dense")(inputs)
    model = keras.Model(inputs, L.Dense(4)(hidden))
    data = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    with pytest.raises(ValueError, match=r"HARD_SWISH.*'swish_dense'"):
        export.to_tflite(model, data, mode="int16x8")


def test_profile_counts_the_bits_the_file_holds():
    model = _conv_head_model()
    kernels = 3 * 3 * 16 + 8 * 8 * 16 * 10
    biases = 16 + 10
    for kwargs, expected in [
        ({}, 8 * kernels + 32 * biases),
        ({"weight_bits": 4}, 4 * kernels + 32 * biases),
        ({"activation_bits": 16}, 8 * kernels + 64 * biases),
    ]:
        qat = tfcompress.quantize_model(model, **kwargs)
        assert tfcompress.profile(qat)["total"]["param_bits"] == expected, kwargs


def test_lsq_step_starts_at_the_papers_value_and_its_gradient_is_eq_3():
    import tensorflow as tf

    quantizer = ActivationQuantizer(range_learning="lsq")
    x = tf.constant([[-1.0, 0.3, 0.9, 2.5]])
    quantizer(x, training=True)
    assert float(quantizer.step.numpy()) == pytest.approx(2 * np.mean(np.abs(x)) / np.sqrt(127))
    assert float(quantizer.signed.numpy()) == 1.0  # a negative input: (Q_n, Q_p) = (128, 127)
    quantizer.step.assign(0.01)
    upstream = np.array([[1.0, 2.0, 3.0, 4.0]], "float32")
    with tf.GradientTape() as tape:
        y = quantizer(x, training=True, update_range=False)
        loss = tf.reduce_sum(y * upstream)
    d_step = tape.gradient(loss, quantizer.step.value)
    # Esser et al. eq. 3 by hand: v = x / s = (-100, 30, 90, 250); inside -> round(v) - v
    # (0 here but for float error), above Q_p = 127 -> Q_p; g = 1 / sqrt(N Q_p), N = 4.
    v = x.numpy() / 0.01
    d = np.where((v > -128) & (v < 127), np.round(v) - v, np.where(v <= -128, -128, 127))
    expected = np.sum(upstream * d) / np.sqrt(4 * 127)
    assert float(d_step.numpy()) == pytest.approx(expected, rel=1e-4)
    assert expected == pytest.approx(4 * 127 / np.sqrt(4 * 127), rel=1e-3)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x, training=True, update_range=False)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [[1, 1, 1, 0]])  # STE in range


def test_pact_alpha_gets_the_clipped_gradient_and_its_l2_penalty():
    import tensorflow as tf

    quantizer = ActivationQuantizer(range_learning="pact", pact_decay=1e-2)
    x = tf.constant([[0.2, 0.5, 1.5, 3.0]])  # non-negative: range [0, alpha]
    quantizer(x, training=True)
    assert float(quantizer.alpha.numpy()) == pytest.approx(3.0)  # first batch's max |x|
    quantizer.alpha.assign(1.0)
    with tf.GradientTape() as tape:
        y = quantizer(x, training=True)
        loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0, 3.0, 4.0]]))
    # dy/dalpha = 1 where x >= alpha: 3 + 4.
    assert float(tape.gradient(loss, quantizer.alpha.value).numpy()) == pytest.approx(7.0)
    assert float(quantizer.losses[0]) == pytest.approx(1e-2 * 1.0 ** 2)
    np.testing.assert_allclose(y.numpy()[0, 2:], [1.0, 1.0], atol=1e-6)  # clipped at alpha


@pytest.mark.slow
@pytest.mark.parametrize("range_learning", ["lsq", "pact"])
def test_learned_ranges_train_export_and_save(range_learning, digits, tmp_path):
    x, y, x_test, _ = digits
    keras.utils.set_random_seed(0)
    float_model = _trained(_conv_head_model(), x, y)
    qat = tfcompress.quantize_model(float_model, range_learning=range_learning)
    qat(x[:1])
    quantizers = [getattr(layer, "output_quantizer", layer) for layer in qat.layers]
    learned = [q for q in quantizers if isinstance(q, ActivationQuantizer) and q.learns]
    assert learned, "no learned range"
    _trained(qat, x[:64], y[:64], epochs=1)  # the first batch sets the start
    start = [float(keras.ops.convert_to_numpy(q._bounds()[1])) for q in learned]
    _trained(qat, x, y, epochs=2)
    end = [float(keras.ops.convert_to_numpy(q._bounds()[1])) for q in learned]
    assert start != end  # fit trained the step / clipping level
    tflite = export.to_tflite(qat)
    report = export.verify(tflite, qat, x_test)
    assert report["within_1_step"] >= 0.999 and report["max_diff_steps"] <= 1.0 + 1e-3, report
    qat.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_allclose(loaded.predict(x_test[:32], verbose=0),
                               qat.predict(x_test[:32], verbose=0), atol=1e-6)


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"range_learning": "minmax"}, "range_learning='minmax'"),
    ({"range_learning": None}, "range_learning=None"),
])
def test_unknown_range_learning_is_named(kwargs, text):
    with pytest.raises(ValueError, match=text):
        tfcompress.quantize_model(_conv_head_model(), **kwargs)
    with pytest.raises(ValueError, match=text):
        ActivationQuantizer(**kwargs)
