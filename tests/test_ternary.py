"""TernaryConv / TernaryDense (TWN, Li & Liu 2016) against their NumPy twins: ternarize,
forward, straight-through gradients, serialization, argument checks, the profile's
counts, and the integer-only int8 file (one CONV_2D / FULLY_CONNECTED whose kernel has
three values per channel) checked with LiteRT."""

import inspect
import re

import keras
import numpy as np
import numpy_reference as ref
import pytest
import tensorflow as tf

import tfcompress
from tfcompress import export
from tfcompress.layers import TernaryConv, TernaryDense, ternarize
from tfcompress.layers.ternary import count_ternary_conv, count_ternary_dense


def as_numpy(v):
    if isinstance(v, keras.Variable):
        v = v.value
    return np.array(v.numpy() if hasattr(v, "numpy") else v)


def assert_close(actual, expected, atol=1e-5):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol * scale)


def tape_grads(layer, x, upstream, mode):
    """(y, dL/dx, dL/dkernel) for L = sum(layer(x) * upstream), eagerly or traced."""
    x, upstream = tf.constant(x), tf.constant(upstream)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * upstream)
        dx, dw = tape.gradient(loss, [x, layer.kernel])
        return layer(x), dx, dw

    if mode == "function":
        step = tf.function(step)
    return tuple(t.numpy() for t in step(x))


CONV_CASES = [
    # (input NHWC, filters, kernel_size, strides, padding, threshold)
    ((2, 6, 6, 3), 4, 3, 1, "same", 0.7),
    ((2, 7, 5, 2), 3, 3, 2, "valid", 0.3),
    ((1, 6, 7, 3), 2, (2, 3), 2, "same", 0.95),
]


# ------------------------------------------------------------------ ternarize


def test_ternarize_by_hand():
    # Two output channels (columns). Column 0: mean |w| = 0.45, Delta = 0.315, kept 0.5
    # and -1.0, alpha = 0.75. Column 1: mean 0.25, Delta 0.175, kept 0.2, -0.3, 0.4 (0.1
    # is below), alpha = 0.3.
    w = np.array([[0.1, 0.1], [-0.2, 0.2], [0.5, -0.3], [-1.0, 0.4]], "float32")
    alpha, w_t = ternarize(w, 0.7, axis=0)
    np.testing.assert_allclose(as_numpy(alpha), [[0.75, 0.3]], rtol=1e-6)
    np.testing.assert_array_equal(as_numpy(w_t), [[0, 0], [0, 1], [1, -1], [-1, 1]])
    # One Delta for the tensor (the paper's per-layer scale): mean 0.35, Delta 0.245,
    # kept 0.5, -1.0, -0.3, 0.4, alpha = 2.2 / 4.
    alpha, w_t = ternarize(w, 0.7)
    np.testing.assert_allclose(as_numpy(alpha), [[0.55]], rtol=1e-6)
    np.testing.assert_array_equal(as_numpy(w_t), [[0, 0], [0, 0], [1, -1], [-1, 1]])
    # A higher threshold keeps fewer weights: 0.9 * 0.45 = 0.405 keeps 0.5 and -1.0 only.
    _, w_t = ternarize(w[:, :1], 0.9, axis=0)
    np.testing.assert_array_equal(as_numpy(w_t)[:, 0], [0, 0, 1, -1])


@pytest.mark.parametrize("shape, axis", [
    ((3, 3, 4, 5), (0, 1, 2)), ((7, 6), (0,)), ((3, 3, 2, 4), None), ((5, 8), 1),
])
@pytest.mark.parametrize("threshold", [0.05, 0.7, 0.99])
def test_ternarize_matches_twin(rng, shape, axis, threshold):
    w = rng.normal(size=shape).astype("float32")
    alpha, w_t = (as_numpy(t) for t in ternarize(w, threshold, axis))
    ref_alpha, ref_w_t = ref.ternarize(w, threshold, axis)
    np.testing.assert_array_equal(w_t, ref_w_t)
    assert_close(alpha, ref_alpha)
    assert set(np.unique(w_t)) <= {-1.0, 0.0, 1.0}
    assert alpha.ndim == w.ndim and np.all(alpha > 0)
    # Delta < max |W| always, so every group keeps its largest weight.
    assert np.all(np.abs(w_t).sum(axis=axis) >= 1)


def test_ternarize_zero_group_gets_zero_alpha():
    w = np.zeros((4, 2), "float32")
    w[:, 1] = [0.5, -0.1, 0.0, 0.2]
    alpha, w_t = (as_numpy(t) for t in ternarize(w, 0.7, axis=0))
    np.testing.assert_array_equal(alpha[0, 0], 0.0)
    np.testing.assert_array_equal(w_t[:, 0], 0.0)
    assert np.all(np.isfinite(alpha))


# ------------------------------------------------------------------ forward / gradients


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("shape, filters, kernel_size, strides, padding, threshold", CONV_CASES)
def test_ternary_conv_forward(rng, shape, filters, kernel_size, strides, padding, threshold,
                              use_bias):
    layer = TernaryConv(filters, kernel_size, strides=strides, padding=padding,
                        threshold=threshold, use_bias=use_bias, bias_initializer="random_normal")
    x = rng.normal(size=shape).astype("float32")
    y = as_numpy(layer(x))
    bias = as_numpy(layer.bias) if use_bias else None
    assert y.shape == tuple(layer.compute_output_shape(shape))
    assert_close(y, ref.ternary_conv(x, as_numpy(layer.kernel), strides, padding, threshold,
                                     bias))


@pytest.mark.parametrize("shape", [(6, 9), (2, 3, 9)])
def test_ternary_dense_forward(rng, shape):
    layer = TernaryDense(5, threshold=0.5, use_bias=True, bias_initializer="random_normal")
    x = rng.normal(size=shape).astype("float32")
    y = as_numpy(layer(x))
    assert_close(y, ref.ternary_dense(x, as_numpy(layer.kernel), 0.5, as_numpy(layer.bias)))


def test_ternary_kernel_has_three_values_per_channel(rng):
    layer = TernaryConv(6, 3)
    layer.build((None, 5, 5, 4))
    kernel = as_numpy(layer.ternary_kernel())
    latent = as_numpy(layer.kernel)
    for o in range(6):
        values = np.unique(kernel[..., o])
        alpha = values.max()
        np.testing.assert_array_equal(values, [-alpha, 0.0, alpha])
        kept = np.abs(latent[..., o]) > 0.7 * np.abs(latent[..., o]).mean()
        np.testing.assert_allclose(alpha, np.abs(latent[..., o])[kept].mean(), rtol=1e-6)
        np.testing.assert_array_equal(kernel[..., o] != 0, kept)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("shape, filters, kernel_size, strides, padding, threshold", CONV_CASES)
def test_ternary_conv_gradients_straight_through(rng, shape, filters, kernel_size, strides,
                                                 padding, threshold, mode):
    layer = TernaryConv(filters, kernel_size, strides=strides, padding=padding,
                        threshold=threshold)
    x = rng.normal(size=shape).astype("float32")
    layer.build(x.shape)
    kernel = as_numpy(layer.kernel)
    g = rng.normal(size=tuple(layer.compute_output_shape(shape))).astype("float32")
    y, dx, dw = tape_grads(layer, x, g, mode)
    assert_close(y, ref.ternary_conv(x, kernel, strides, padding, threshold))
    ref_dx, ref_dw = ref.ternary_conv_grads(x, kernel, g, strides, padding, threshold)
    assert_close(dx, ref_dx)
    # dL/dW = dL/d(alpha W_t): also at the zeroed weights (ternarize's own derivative is
    # 0 almost everywhere, so any other path would zero them).
    assert_close(dw, ref_dw)
    assert np.all(dw[as_numpy(layer.ternary_kernel()) == 0] != 0)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_ternary_dense_gradients_straight_through(rng, mode):
    layer = TernaryDense(5, threshold=0.6)
    x = rng.normal(size=(6, 9)).astype("float32")
    layer.build(x.shape)
    g = rng.normal(size=(6, 5)).astype("float32")
    _, dx, dw = tape_grads(layer, x, g, mode)
    ref_dx, ref_dw = ref.ternary_dense_grads(x, as_numpy(layer.kernel), g, 0.6)
    assert_close(dx, ref_dx)
    assert_close(dw, ref_dw)


def test_ternary_model_trains():
    """The straight-through gradient trains: fitting a ternary teacher's outputs."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6, 6, 3)).astype("float32")
    teacher = keras.Sequential([keras.Input((6, 6, 3)), TernaryConv(4, 3)])
    y = teacher.predict(x, verbose=0)
    inputs = keras.Input((6, 6, 3))
    student = keras.Model(inputs, TernaryConv(4, 3)(inputs))
    student.compile(keras.optimizers.Adam(0.01), "mse")
    history = student.fit(x, y, batch_size=32, epochs=8, verbose=0).history["loss"]
    assert history[-1] < 0.3 * history[0], history


# ------------------------------------------------------------------ serialization / arguments


def _config_keys_are_constructor_args(layer):
    params = set(inspect.signature(type(layer).__init__).parameters) - {"self", "kwargs"}
    base = set(keras.layers.Layer(name="x").get_config())
    keys = set(layer.get_config())
    assert params <= keys <= params | base, (keys - params - base, params - keys)


@pytest.mark.parametrize("make, shape", [
    (lambda: TernaryConv(5, (3, 2), strides=2, padding="valid", threshold=0.4,
                         use_bias=True, kernel_regularizer="l2", name="t"), (2, 7, 7, 3)),
    (lambda: TernaryDense(6, threshold=0.9, use_bias=True,
                          kernel_initializer="random_uniform"), (3, 7)),
])
def test_config_round_trip(rng, make, shape):
    layer = make()
    x = rng.normal(size=shape).astype("float32")
    y = as_numpy(layer(x))
    _config_keys_are_constructor_args(layer)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build(shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(as_numpy(clone(x)), y)


def test_save_and_load_keras_file(rng, tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = TernaryConv(6, 3, threshold=0.6)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, TernaryDense(4, use_bias=True)(x))
    data = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    expected = model.predict(data, verbose=0)
    path = tmp_path / "ternary.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert loaded.layers[1].threshold == 0.6
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), expected)


@pytest.mark.parametrize("make, received", [
    (lambda: TernaryConv(8, 3, threshold=0), "threshold=0"),
    (lambda: TernaryConv(8, 3, threshold=1), "threshold=1"),
    (lambda: TernaryConv(8, 3, threshold=1.5), "threshold=1.5"),
    (lambda: TernaryConv(8, 3, threshold=-0.7), "threshold=-0.7"),
    (lambda: TernaryConv(8, 3, threshold=True), "threshold=True"),
    (lambda: TernaryConv(8, 3, threshold="0.7"), "threshold='0.7'"),
    (lambda: TernaryConv(8, 3, threshold=None), "threshold=None"),
    (lambda: TernaryDense(4, threshold=1.0), "threshold=1.0"),
    (lambda: ternarize(np.ones(3, "float32"), 0.0), "threshold=0.0"),
    (lambda: TernaryConv(0, 3), "filters=0"),
    (lambda: TernaryConv(8, -1), "kernel_size=-1"),
    (lambda: TernaryConv(8, 3, padding="full"), "padding='full'"),
    (lambda: TernaryDense(0), "units=0"),
])
def test_invalid_arguments_raise_value_error(make, received):
    with pytest.raises(ValueError, match=re.escape(received)):
        make()


def test_threshold_message_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        TernaryConv(8, 3, threshold=2.0)


# ------------------------------------------------------------------ profile


def test_profile_counts_two_bit_kernels():
    inputs = keras.Input((8, 8, 3))
    x = TernaryConv(6, 3, strides=2, use_bias=True)(inputs)       # 4x4x6 outputs
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, TernaryDense(5)(x))
    rows = {row["type"]: row for row in tfcompress.profile(model)["layers"]}
    conv, dense = rows["TernaryConv"], rows["TernaryDense"]
    assert conv["params"] == 3 * 3 * 3 * 6 + 6
    assert conv["param_bits"] == 2 * 162 + 32 * 6 + 32 * 6  # 2-bit kernel, alpha, bias
    assert conv["adds"] == 162 * 16 and conv["macs"] == 16 * 6 and conv["binary_ops"] == 0
    assert dense["param_bits"] == 2 * 96 * 5 + 32 * 5
    assert dense["adds"] == 96 * 5 and dense["macs"] == 5
    zeros = 1.0 - np.abs(as_numpy(ternarize(model.layers[1].kernel, 0.7, (0, 1, 2))[1])).mean()
    assert conv["note"] == f"ternary kernel, {zeros:.0%} zeros"
    assert tfcompress.analysis.get_counter(TernaryConv) is count_ternary_conv
    assert tfcompress.analysis.get_counter(TernaryDense) is count_ternary_dense


def test_profile_needs_known_spatial_size():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, TernaryConv(4, 3)(inputs))
    with pytest.raises(ValueError, match="unknown dimension"):
        tfcompress.profile(model)


# ------------------------------------------------------------------ export


def _on_input_grid(blob, x):
    """x rounded to the file's int8 input grid, so Keras and LiteRT see the same inputs."""
    from ai_edge_litert.interpreter import Interpreter

    scale, zero_point = Interpreter(model_content=blob).get_input_details()[0]["quantization"]
    q = np.clip(np.round(x / scale) + zero_point, -128, 127)
    return ((q - zero_point) * scale).astype("float32")


def _int8_kernels(blob):
    """The int8 constant tensors of rank >= 2 of a file (its weight matrices)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    op_inputs = {i for op in interpreter._get_ops_details() for i in op["inputs"]}
    kernels = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2 \
                and detail["index"] in op_inputs and len(detail["quantization_parameters"]
                                                         ["scales"]) > 1:
            kernels.append(interpreter.get_tensor(detail["index"]))
    return kernels


@pytest.mark.parametrize("make, shape, op", [
    (lambda: TernaryConv(6, 3, use_bias=True, bias_initializer="random_normal"), (8, 8, 4),
     "CONV_2D"),
    (lambda: TernaryConv(5, 3, strides=2, padding="valid", threshold=0.4), (9, 9, 3),
     "CONV_2D"),
    (lambda: TernaryDense(7), (16,), "FULLY_CONNECTED"),
], ids=["conv", "conv_s2_valid", "dense"])
def test_ptq_int8_is_one_op_with_a_ternary_kernel(make, shape, op):
    """PTQ int8: the ternary kernel is folded into the constant of one CONV_2D /
    FULLY_CONNECTED, three values per output channel (-127, 0, 127: alpha is the
    channel's scale), and on inputs on the file's grid LiteRT agrees with Keras up to
    the output rounding (the binary PTQ test's tolerance)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    layer = make()
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(size=(64,) + shape).astype("float32")
    blob = export.to_tflite(model, representative_data=x)
    assert export.check_integer_only(blob, model) == [op]
    (kernel,) = _int8_kernels(blob)
    assert kernel.shape[0] == layer.kernel.shape[-1]  # TFLite: output channels first
    for o in range(kernel.shape[0]):
        assert set(np.unique(kernel[o]).tolist()) == {-127, 0, 127}, np.unique(kernel[o])
    expected_zeros = as_numpy(layer.ternary_kernel()) == 0
    np.testing.assert_array_equal(np.moveaxis(kernel, 0, -1) == 0, expected_zeros)
    report = export.verify(blob, model, _on_input_grid(blob, x[:16]))
    assert report["within_1_step"] == 1.0 and report["max_diff_steps"] <= 1.0 + 1e-3, report


def _ternary_qat_cnn():
    from keras import layers as L

    inputs = keras.Input((8, 8, 1))
    h = TernaryConv(8, 3, padding="same", use_bias=False, name="t1")(inputs)
    h = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(h))
    h = L.Flatten()(L.MaxPooling2D()(h))
    h = L.ReLU(name="r2")(TernaryDense(32, name="t2")(h))
    return keras.Model(inputs, L.Dense(10, name="head")(h))


@pytest.fixture(scope="module")
def ternary_qat():
    from tfcompress import datasets
    from tfcompress.quantization import quantize_model

    (x, y), (x_test, _) = datasets.load("digits")
    keras.utils.set_random_seed(0)
    model = _ternary_qat_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    model.fit(x, y, epochs=2, verbose=0)
    qat = quantize_model(model)
    qat.compile("adam", loss)
    qat.fit(x, y, epochs=1, verbose=0)
    return qat, x_test


def test_qat_wraps_ternary_layers_with_their_ternary_kernel(ternary_qat):
    """quantize_model folds bn1 into t1 and fake-quantizes alpha * W_t per channel:
    on the int8 grid exactly (NumPy twin of TWN, the fold and the grid)."""
    qat, _ = ternary_qat
    wrapper = qat.get_layer("quant_t1")
    assert isinstance(wrapper.layer, TernaryConv) and wrapper.batchnorm is not None
    bn = wrapper.batchnorm
    twin = ref.ternary_kernel(as_numpy(wrapper.layer.kernel), wrapper.layer.threshold)
    gamma, var = as_numpy(bn.gamma), as_numpy(bn.moving_variance)
    twin_folded = twin * gamma / np.sqrt(var + bn.epsilon)
    folded, _ = wrapper.folded_weights()
    assert_close(as_numpy(folded), twin_folded, atol=1e-5)
    quantized = as_numpy(wrapper._quantized_kernel(folded))
    assert_close(quantized, twin_folded, atol=1e-6)  # +/- alpha' is +/-127 steps, 0 is 0
    # TernaryDense: FULLY_CONNECTED has one weight scale, so the per-channel
    # alphas land on a per-tensor int8 grid (rounded there, not exact).
    dense = qat.get_layer("quant_t2")
    twin = ref.ternary_kernel(as_numpy(dense.layer.kernel), dense.layer.threshold)
    bound = np.abs(twin).max()
    assert_close(as_numpy(dense._quantized_kernel(dense.folded_weights()[0])),
                 ref.fake_quant(twin, -bound, bound, narrow_range=True), atol=1e-6)


def test_qat_gradient_reaches_the_latent_kernel_straight_through(rng):
    """d loss / d W (latent) equals d loss / d K of a float Dense computing with the
    ternary kernel K = alpha * W_t: TWN's and the int8 grid's straight-through."""
    from keras import layers as L

    from tfcompress.quantization import quantize_model

    inputs = keras.Input((6,))
    model = keras.Model(inputs, TernaryDense(4, use_bias=False, name="t")(inputs))
    qat = quantize_model(model)
    x = rng.normal(size=(16, 6)).astype("float32")
    qat(x, training=True)
    upstream = rng.normal(size=(16, 4)).astype("float32")
    wrapper = qat.get_layer("quant_t")
    with tf.GradientTape() as tape:
        out = qat(x, training=True)
        loss = tf.reduce_sum(out * upstream)
    (grad,) = tape.gradient(loss, [wrapper.layer.kernel])
    kernel = ref.ternary_kernel(as_numpy(wrapper.layer.kernel)).astype("float32")
    float_dense = L.Dense(4, use_bias=False)
    float_dense.build((None, 6))
    float_dense.set_weights([kernel])
    xq = as_numpy(qat.get_layer("quant_input")(x))  # the input on its int8 grid
    variable = float_dense.kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(float_dense(xq) * upstream)
    (expected,) = tape.gradient(loss, [variable])
    assert_close(as_numpy(grad), as_numpy(expected), atol=1e-4)


def test_qat_ternary_file_has_ternary_int8_kernels_and_parity(ternary_qat):
    qat, x_test = ternary_qat
    blob = export.to_tflite(qat)
    kernels = _int8_kernels(blob)
    (kernel,) = [k for k in kernels if k.ndim == 4]  # t1's CONV_2D: 3 values per channel
    for o in range(kernel.shape[0]):
        values = set(np.unique(kernel[o]).tolist())
        assert values <= {-127, 0, 127} and 0 in values and np.abs(kernel[o]).max() == 127
    report = export.verify(blob, qat, x_test)
    assert report["within_1_step"] >= 0.99 and report["argmax_agreement"] >= 0.99, report


def test_qat_ternary_model_round_trips(ternary_qat, tmp_path):
    qat, x_test = ternary_qat
    path = tmp_path / "ternary_qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0),
                                  qat.predict(x_test, verbose=0))
    assert isinstance(loaded.get_layer("quant_t1").layer, TernaryConv)