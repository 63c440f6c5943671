"""QAT with BatchNorm folding, PTQ, and the integer-only export, checked with LiteRT."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfcompress import datasets, export, models
from tfcompress import layers as tl
from tfcompress.lowering import lower_model
from tfcompress.quantization import (
    ActivationQuantizer,
    QuantizeWrapper,
    quantize_annotate_layer,
    quantize_model,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEGER_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "CONCATENATION",
    "STRIDED_SLICE", "PAD", "MEAN", "MAX_POOL_2D", "SOFTMAX", "QUANTIZE", "RESHAPE",
    "LOGISTIC", "SUB", "RELU", "RELU6", "GREATER_EQUAL", "SELECT_V2", "LEAKY_RELU", "SUM",
    "EXPAND_DIMS",
}


def bn():
    return keras.layers.BatchNormalization(momentum=0.5)


def _qat_roundtrip(body, input_shape, steps=3, seed=0, per_channel=True):
    """Builds Input -> body -> output, QAT-trains a few steps on random data,
    exports int8 and returns (verify report, op names, qat model)."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, body(inputs))
    x = rng.normal(size=(64,) + input_shape).astype("float32")
    qat = quantize_model(model, per_channel=per_channel)
    target = qat.predict(x, verbose=0) + 0.1 * rng.normal(size=qat.output.shape[1:])
    qat.compile(keras.optimizers.SGD(0.01), "mse")
    qat.fit(x, target.astype("float32"), batch_size=16, epochs=steps, verbose=0)
    tflite = export.to_tflite(qat)
    ops = export.check_integer_only(tflite, qat)
    held_out = rng.normal(size=(128,) + input_shape).astype("float32")
    return export.verify(tflite, qat, held_out), ops, qat


CASES = {
    "conv": (lambda x: keras.layers.Conv2D(8, 3, padding="same")(x), (8, 8, 3)),
    "conv_relu": (lambda x: keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x), (9, 9, 3)),
    "conv_bn": (lambda x: bn()(keras.layers.Conv2D(8, 3, padding="same")(x)), (8, 8, 3)),
    "conv_bn_relu": (
        lambda x: keras.layers.ReLU()(bn()(keras.layers.Conv2D(8, 3, use_bias=False)(x))),
        (8, 8, 3),
    ),
    "depthwise": (lambda x: keras.layers.DepthwiseConv2D(3, padding="same")(x), (8, 8, 4)),
    "depthwise_bn_relu6": (
        lambda x: keras.layers.ReLU(6.0)(bn()(keras.layers.DepthwiseConv2D(
            3, depth_multiplier=2, padding="same")(x))),
        (8, 8, 4),
    ),
    "dense": (lambda x: keras.layers.Dense(6)(x), (12,)),
    "dense_bn_relu": (
        lambda x: keras.layers.Activation("relu")(bn()(keras.layers.Dense(6)(x))), (12,),
    ),
    "dense_softmax": (lambda x: keras.layers.Dense(6, activation="softmax")(x), (12,)),
    "ghost_conv": (lambda x: tl.GhostConv(10, kernel_size=3, ratio=3, bn_momentum=0.5)(x),
                   (8, 8, 4)),
    "ghost_conv_linear": (lambda x: tl.GhostConv(8, relu=False, bn_momentum=0.5)(x),
                          (8, 8, 4)),
    "shift": (lambda x: tl.Shift(3)(keras.layers.Conv2D(9, 1)(x)), (6, 6, 3)),
    "shift_conv_bn_relu": (
        lambda x: keras.layers.ReLU()(bn()(tl.ShiftConv(8, strides=2)(x))), (8, 8, 9),
    ),
    "binary_conv": (
        lambda x: bn()(tl.BinaryConv(8, 3, strides=2)(bn()(keras.layers.Conv2D(6, 1)(x)))),
        (8, 8, 4),
    ),
    "binary_conv_bwn_valid": (
        lambda x: tl.BinaryConv(6, 3, padding="valid", binarize_input=False, scale="none")(x),
        (7, 7, 3),
    ),
    "binary_dense": (
        lambda x: bn()(tl.BinaryDense(5, ste="approx_sign")(bn()(keras.layers.Dense(12)(x)))),
        (16,),
    ),
    "adder_conv_bn": (
        lambda x: bn()(tl.AdderConv(4, 3, strides=2)(x)), (6, 6, 3),
    ),
    "adder_conv_valid_bias": (
        lambda x: tl.AdderConv(5, 3, padding="valid", use_bias=True)(x), (6, 6, 3),
    ),
    "adder_dense": (lambda x: tl.AdderDense(5)(x), (12,)),
    "add_bn_relu": (  # a BatchNormalization with no conv to fold into: ADD + MUL
        lambda x: keras.layers.ReLU()(bn()(keras.layers.Add()([
            keras.layers.Conv2D(4, 1)(x), keras.layers.Conv2D(4, 1)(x)]))),
        (6, 6, 3),
    ),
    "input_bn_conv": (
        lambda x: keras.layers.Conv2D(4, 3)(bn()(x)), (6, 6, 3),
    ),
    "add_concat_pool": (
        lambda x: keras.layers.GlobalAveragePooling2D()(keras.layers.Concatenate()([
            keras.layers.Add()([keras.layers.Conv2D(4, 1)(x), keras.layers.Conv2D(4, 1)(x)]),
            keras.layers.MaxPooling2D(1)(keras.layers.Conv2D(3, 1)(x)),
        ])),
        (6, 6, 3),
    ),
}


# The fast tier keeps one case of each kind of layer chain; CI runs them all.
FAST_CASES = {"conv_bn", "adder_dense"}


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("case", [
    pytest.param(c, marks=() if c in FAST_CASES else pytest.mark.slow) for c in sorted(CASES)
])
def test_qat_export_matches_keras_within_one_step(case, per_channel):
    body, shape = CASES[case]
    report, ops, _ = _qat_roundtrip(body, shape, per_channel=per_channel)
    assert set(ops) <= INTEGER_OPS, ops
    if case in ("adder_conv_bn", "adder_conv_valid_bias"):
        # AdderConv in int8 is 9 positions x (SUB, LEAKY_RELU, SUM, MUL) and a chain
        # of 8 requantized ADDs; a 1-step rounding difference of XNNPACK's delegated
        # kernels early in the chain is carried to the end. Measured (seed 0): 97.6%
        # (bn) and 98.8% (valid, bias) within 1 step, at most 3 steps. Until the
        # accumulation's range followed the unrounded full sum, it clipped every sum
        # on both sides, and the two agreed only because both saturated.
        assert report["within_1_step"] >= 0.97, report
        assert report["max_diff_steps"] <= 3.0 + 1e-3, report
        return
    assert report["within_1_step"] >= 0.999, report
    # A legal 1-step difference in the Add's output reaches the BatchNormalization's
    # MUL scaled by m * s_add / s_out, which can exceed 1 output step (seen with
    # first-batch ranges: seed 3, 1 element in 10,000). With the default ranges every
    # case stayed within 1 step over seeds 0-3, per-channel and per-tensor.
    max_steps = 2.0 if case == "add_bn_relu" else 1.0
    assert report["max_diff_steps"] <= max_steps + 1e-3, report


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.slow
def test_concat_behind_max_pool_quantizes_once(seed, per_channel):
    """conv -> MaxPooling -> Concatenate: the converter gives the conv's output the
    concatenation's scale (MaxPooling keeps its input's), so Keras must quantize it
    once, by the concatenation; quantizing it first with its own range clipped it
    where the file does not (seed 2: 86% of outputs within 1 step)."""
    body, shape = CASES["add_concat_pool"]
    report, _, qat = _qat_roundtrip(body, shape, seed=seed, per_channel=per_channel)
    assert report["within_1_step"] >= 0.999, report
    quantizers = [lyr.name for lyr in qat.layers if isinstance(lyr, ActivationQuantizer)]
    assert len(quantizers) == 3, quantizers  # the input, the concatenation, the pooling


@pytest.mark.parametrize("se_ratio", [0.0, 0.25], ids=["plain", "squeeze_excite"])
@pytest.mark.slow
def test_ghost_bottleneck_qat_export_close(se_ratio, tmp_path):
    """Deeper composite (Ghost -> strided dw -> [SE] -> Ghost + projected shortcut):
    every op integer, no QUANTIZE (requantization) inside: each GhostConv's primary
    output, which feeds the cheap conv and the concat, is quantized with the concat's
    range, so TFLite needs no int8 -> int8 requantization before the concatenation
    (LiteRT's XNNPACK rounded that one differently from Keras on 5% of its elements).
    With the bias rounded to int32 as in the file, seeds 0-3 with and without SE
    gave 100% within 1 step, at most 1 step (before that: 2 steps on 0.04%)."""
    report, ops, qat = _qat_roundtrip(
        lambda x: tl.GhostBottleneck(12, 8, strides=2, se_ratio=se_ratio, bn_momentum=0.5)(x),
        (8, 8, 4),
    )
    assert set(ops) <= INTEGER_OPS and "QUANTIZE" not in ops, ops
    assert report["within_1_step"] >= 0.999, report
    assert report["max_diff_steps"] <= 1.0 + 1e-3, report
    # The shared quantizer (one layer, two calls) survives .keras save/load and training.
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 4)).astype("float32")
    path = tmp_path / "ghost_qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    loaded.compile(keras.optimizers.SGD(0.01), "mse")
    loaded.fit(x, loaded.predict(x, verbose=0), epochs=1, verbose=0)


def _fake_quant_np(values, lo, hi):
    """NumPy twin of TF's 8-bit FakeQuant: zero nudged onto the grid, then clip and round."""
    lo, hi = min(lo, 0.0), max(hi, min(lo, 0.0) + 1e-6)
    s = (hi - lo) / 255
    zero = np.clip(np.round(-lo / s), 0, 255)
    lo = -zero * s
    return np.round((np.clip(values, lo, lo + 255 * s) - lo) / s) * s + lo


def test_wrapper_matches_numpy_fold_then_quantize():
    """Inference output of a folded Conv+BN+ReLU equals a NumPy twin: fold with the
    moving statistics, symmetric per-channel int8 weights, the bias rounded to int32
    at scale s_in * s_w, float conv, ReLU, asymmetric int8 output with the
    quantizer's range (TF FakeQuant nudging)."""
    rng = np.random.default_rng(3)
    inputs = keras.Input((5, 5, 2))
    conv = keras.layers.Conv2D(3, 3, use_bias=True)
    norm = keras.layers.BatchNormalization()
    model = keras.Model(inputs, keras.layers.ReLU()(norm(conv(inputs))))
    conv.set_weights([rng.normal(size=(3, 3, 2, 3)), rng.normal(size=3)])
    norm.set_weights([rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3),
                      rng.uniform(0.5, 2, 3)])
    qat = quantize_model(model)
    wrapper = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    wrapper.output_quantizer.range_min.assign(-0.5)
    wrapper.output_quantizer.range_max.assign(7.3)
    x = rng.normal(size=(2, 5, 5, 2)).astype("float32")
    xq = qat.get_layer("quant_input")(x).numpy()  # default range [-6, 6]

    gamma, beta, mean, var = (np.asarray(w) for w in norm.get_weights())
    scale = gamma / np.sqrt(var + norm.epsilon)
    w = conv.get_weights()[0] * scale
    b = beta + (conv.get_weights()[1] - mean) * scale
    s_w = np.abs(w).max(axis=(0, 1, 2)) / 127
    wq = np.clip(np.round(w / s_w), -127, 127) * s_w
    b = np.round(b / (12 / 255 * s_w)) * (12 / 255 * s_w)  # int32 at s_in * s_w
    y = np.zeros((2, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            y[:, i, j] = np.einsum("nhwc,hwco->no", xq[:, i:i + 3, j:j + 3], wq)
    y = np.maximum(y + b, 0)
    expected = _fake_quant_np(y, -0.5, 7.3)
    got = qat.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batchnorm_folding_equals_conv_then_bn_in_float():
    rng = np.random.default_rng(4)
    for layer, shape in [
        (keras.layers.Conv2D(5, 3, padding="same"), (6, 6, 3)),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (6, 6, 3)),
        (keras.layers.Dense(5), (7,)),
    ]:
        inputs = keras.Input(shape)
        norm = keras.layers.BatchNormalization()
        model = keras.Model(inputs, norm(layer(inputs)))
        channels = norm.gamma.shape[0]
        norm.set_weights([rng.uniform(0.5, 2, channels), rng.normal(size=channels),
                          rng.normal(size=channels), rng.uniform(0.2, 3, channels)])
        wrapper = QuantizeWrapper(layer, batchnorm=norm)
        kernel, bias = (np.asarray(t) for t in wrapper.folded_weights())
        x = rng.normal(size=(4,) + shape).astype("float32")
        folded = np.asarray(wrapper._op(x, kernel)) + bias
        np.testing.assert_allclose(folded, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_standalone_batchnorm_is_add_then_mul(tmp_path):
    """A BatchNormalization with nothing to fold into (here after an Add) runs as the
    file's ADD then MUL, with the ReLU fused: NumPy twin (x + Q(d)) -> Q_sum ->
    * Q(m) -> ReLU -> Q_out, with m = gamma / sqrt(var + eps), d = beta / m - mean and
    one asymmetric int8 scale per constant. Training moves the statistics as Keras'
    BatchNormalization does; the layer survives .keras save/load."""
    from tfcompress.quantization import QuantizeBatchNorm

    rng = np.random.default_rng(6)
    inputs = keras.Input((4, 4, 3))
    norm = keras.layers.BatchNormalization(momentum=0.8)
    model = keras.Model(inputs, keras.layers.ReLU()(norm(keras.layers.Add()([inputs, inputs]))))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.2, 3, 3)
    norm.set_weights([gamma, beta, mean, var])
    qat = quantize_model(model)
    wrapper = next(lyr for lyr in qat.layers if isinstance(lyr, QuantizeBatchNorm))
    assert wrapper.activation == "relu" and len(qat.layers) == 5  # input, its Q, Add, its Q
    wrapper.sum_quantizer.range_min.assign(-3.0)
    wrapper.sum_quantizer.range_max.assign(4.0)
    wrapper.output_quantizer.range_min.assign(0.0)
    wrapper.output_quantizer.range_max.assign(5.0)
    x = rng.normal(size=(8, 4, 4, 3)).astype("float32")
    before = keras.Model(qat.inputs, wrapper.input).predict(x, verbose=0)

    m = gamma / np.sqrt(var + norm.epsilon)
    d = beta / m - mean
    y = _fake_quant_np(before + _fake_quant_np(d, d.min(), d.max()), -3.0, 4.0)
    y = np.maximum(y * _fake_quant_np(m, 0.0, m.max()), 0.0)
    expected = _fake_quant_np(y, 0.0, 5.0)
    np.testing.assert_allclose(qat.predict(x, verbose=0), expected, atol=1e-5)

    path = tmp_path / "bn.keras"
    qat.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0),
                                  qat.predict(x, verbose=0))

    reference = keras.layers.BatchNormalization(momentum=0.8)
    reference.build(before.shape)
    reference.set_weights([gamma, beta, mean, var])
    reference(before, training=True)
    wrapper(before, training=True)
    for ours, theirs in zip(wrapper.layer.weights[2:], reference.weights[2:]):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(wrapper.layer.moving_mean.numpy(), mean)  # the statistics moved


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_folded_training_gradients_equal_conv_then_bn(kind):
    """With the folded weights and the inputs already on their int8 grids (so
    quantization changes nothing), the QAT layer's training-mode gradients equal
    those of the float layer followed by BatchNormalization in training mode:
    straight-through quantizers, and the gradient of the batch statistics kept."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    layer, shape = {
        "conv": (keras.layers.Conv2D(5, 3, padding="same"), (6, 6, 3)),
        "depthwise": (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
        "dense": (keras.layers.Dense(5), (7,)),
    }[kind]
    inputs = keras.Input(shape)
    norm = keras.layers.BatchNormalization()
    model = keras.Model(inputs, norm(layer(inputs)))
    c = norm.gamma.shape[0]
    gamma, var = rng.uniform(0.5, 2, c), rng.uniform(0.2, 3, c)
    norm.set_weights([gamma, rng.normal(size=c), rng.normal(size=c), var])
    # Folded kernel = integers x scale, with 127 in every output channel (Dense: one scale).
    ints = rng.integers(-126, 127, size=layer.kernel.shape)
    if kind == "dense":
        ints[0, 0] = 127
    else:  # conv: [0, 0, 0, every output]; depthwise: [0, 0, every input, every multiplier]
        ints[0, 0, 0 if kind == "conv" else slice(None)] = 127
    out_shape = (layer.kernel.shape[2], 2) if kind == "depthwise" else (c,)
    scale = 2.0 ** rng.integers(-8, -4, size=out_shape) if kind != "dense" else 2.0 ** -6
    fold = (gamma / np.sqrt(var + norm.epsilon)).reshape(out_shape)
    layer.kernel.assign((ints * scale / fold).astype("float32"))
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    x = rng.integers(-128, 128, size=(16,) + shape) / 16.0  # the input's grid: step 1/16
    x.flat[:2] = -8.0, 127 / 16
    x = x.astype("float32")

    qat = quantize_model(model)
    wrapper = next(w for w in qat.layers if isinstance(w, QuantizeWrapper))
    out_q = wrapper.output_quantizer  # a range wide enough to clip nothing
    out_q.initialized.assign(1.0)
    out_q.range_min.assign(-1e3)
    out_q.range_max.assign(1e3)
    r = rng.normal(size=(16,) + tuple(model.output.shape[1:])).astype("float32")

    def grads(m, variables):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(m(x, training=True) * r)
        return [g.numpy() for g in tape.gradient(loss, variables)]

    expected = grads(model, [layer.kernel, layer.bias, norm.gamma, norm.beta])
    wrapped, folded_bn = wrapper.layer, wrapper.batchnorm
    got = grads(qat, [wrapped.kernel, wrapped.bias, folded_bn.gamma, folded_bn.beta])
    atol = 1e-4 * max(np.abs(e).max() for e in expected)  # the bias's is 0 up to rounding
    for name, e, g in zip(("kernel", "bias", "gamma", "beta"), expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=atol, err_msg=name)


def test_training_mode_uses_batch_statistics_and_updates_moving_ones():
    rng = np.random.default_rng(5)
    inputs = keras.Input((6,))
    dense, norm = keras.layers.Dense(4, use_bias=False), keras.layers.BatchNormalization()
    model = keras.Model(inputs, norm(dense(inputs)))
    qat = quantize_model(model, batch_statistics="float")
    wrapper = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    x = (3.0 + rng.normal(size=(256, 6))).astype("float32")
    float_bn = model(x, training=True).numpy()  # conv-then-BN with batch statistics
    before = np.asarray(wrapper.batchnorm.moving_mean).copy()
    out = qat(x, training=True).numpy()
    after = np.asarray(wrapper.batchnorm.moving_mean)
    raw_mean = (x @ np.asarray(dense.kernel)).mean(axis=0)
    m = wrapper.batchnorm.momentum
    np.testing.assert_allclose(after, m * before + (1 - m) * raw_mean, rtol=1e-4, atol=1e-5)
    # Equal to BN with batch statistics up to int8 weight/activation rounding.
    assert np.abs(out - float_bn).max() < 0.1 * np.abs(float_bn).max()
    assert np.corrcoef(out.ravel(), float_bn.ravel())[0, 1] > 0.999


def test_activation_range_starts_at_first_batch_or_at_init_range(tmp_path):
    """r <- d * r + (1 - d) * r_batch (zero kept inside), from the first batch's
    range by default, or from `init_range` (TF's / tfmot's (-6, 6)); and
    quantize_model gives every non-fixed quantizer but the input's that start."""
    x1 = np.array([[-1.0, 2.0, 0.5]], "float32")
    x2 = np.array([[0.5, 3.0, 1.0]], "float32")  # min 0.5 -> 0 (zero stays inside)
    for init, (lo, hi) in ((None, (-1.0, 2.0)), ((-6.0, 6.0), (-6.0, 6.0))):
        quantizer = ActivationQuantizer(ema_decay=0.9, init_range=init)
        if init is not None:
            lo, hi = 0.9 * lo + 0.1 * -1.0, 0.9 * hi + 0.1 * 2.0
        quantizer(x1, training=True)
        lo, hi = 0.9 * lo + 0.1 * 0.0, 0.9 * hi + 0.1 * 3.0
        quantizer(x2, training=True)
        np.testing.assert_allclose(
            [float(quantizer.range_min.numpy()), float(quantizer.range_max.numpy())],
            [lo, hi], rtol=1e-6,
        )
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, activation="relu")(inputs)
    x = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(x))
    qat = quantize_model(keras.Model(inputs, x), ema_decay=0.999, init_range=(-6, 6))
    starts = {
        lyr.name: (lyr.init_range, float(lyr.initialized.numpy()))
        for lyr in qat._flatten_layers() if isinstance(lyr, ActivationQuantizer)
        and lyr.fixed_range is None
    }
    assert starts.pop("quant_input") == (None, 0.0)  # the data's range, from the first batch
    assert sorted(starts.values()) == [((-6.0, 6.0), 1.0)] * 2, starts
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    data = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), qat.predict(data, verbose=0))
    wrapper = next(lyr for lyr in loaded.layers if isinstance(lyr, QuantizeWrapper))
    assert wrapper.init_range == (-6.0, 6.0)
    with pytest.raises(ValueError, match=r"init_range.*Received: init_range=\(1, 2\)"):
        ActivationQuantizer(init_range=(1, 2))


@pytest.mark.slow
def test_per_tensor_annotation_gives_one_weight_scale():
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((6, 6, 3))
    per_tensor = keras.layers.Conv2D(4, 3, name="per_tensor")
    per_channel = keras.layers.Conv2D(4, 3, name="per_channel")
    model = keras.Model(inputs, per_channel(per_tensor(inputs)))
    quantize_annotate_layer(per_tensor, "per_tensor")
    qat = quantize_model(model)
    qat.predict(np.random.default_rng(0).normal(size=(8, 6, 6, 3)), verbose=0)
    details = Interpreter(model_content=export.to_tflite(qat)).get_tensor_details()
    # Distinct weight scales of each conv kernel (the converter may store one
    # per-tensor scale repeated per channel).
    scales = {
        d["name"]: len(set(d["quantization_parameters"]["scales"])) for d in details
        if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] == 4
    }
    assert sorted(scales.values()) == [1, 4], scales


def test_qat_model_saves_and_loads(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.ReLU()(bn()(keras.layers.Conv2D(4, 3)(inputs)))
    x = tl.GhostConv(6, bn_momentum=0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(x)))
    qat = quantize_model(model)
    data = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype("float32")
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(data, np.arange(16) % 3, epochs=1, verbose=0)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), qat.predict(data, verbose=0))
    # Each wrapper finds its input's quantizer again in the loaded graph (its bias
    # is rounded with that scale): the model input's, or another wrapper's output's.
    quantizers = {id(getattr(lyr, "output_quantizer", lyr)) for lyr in loaded.layers}
    wrappers = [lyr for lyr in loaded.layers if isinstance(lyr, QuantizeWrapper)]
    assert len(wrappers) == 4 and wrappers[0].input_quantizer is loaded.get_layer("quant_input")
    assert all(id(w.input_quantizer) in quantizers for w in wrappers)


@pytest.mark.slow
def test_inference_bias_is_the_files_int32_bias():
    """TFLite stores a bias as int32 at scale s_in * s_w, and the QAT model's
    inference adds that rounded bias. A coarse input grid (range +/-100) makes the
    bias grid (0.0123) coarser than the output's (0.0016), so the unrounded bias
    would land 2-3 output steps away. Inputs that quantize to 0 isolate the bias;
    the reference is a NumPy twin and the LiteRT interpreter."""
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    qat = quantize_model(keras.Model(inputs, dense(inputs)))
    wrapper = qat.get_layer(f"quant_{dense.name}")
    assert wrapper.input_quantizer is qat.get_layer("quant_input")
    rng = np.random.default_rng(5)
    kernel = rng.uniform(-1, 1, size=(4, 3)).astype("float32")
    kernel[0, 0] = 2.0  # Dense: one weight scale, 2 / 127
    step = 200 / 255 * 2 / 127  # s_in * s_w
    bias = (step * np.array([10.3, -4.6, 7.7])).astype("float32")
    wrapper.layer.set_weights([kernel, bias])
    qat.get_layer("quant_input").range_min.assign(-100.0)
    qat.get_layer("quant_input").range_max.assign(100.0)
    wrapper.output_quantizer.range_min.assign(-0.2)
    wrapper.output_quantizer.range_max.assign(0.2)

    def out_grid(y):  # FakeQuant on (-0.2, 0.2): the zero point nudges to 127.5 -> 128
        return _fake_quant_np(y, -0.2, 0.2)

    x = rng.uniform(-0.3, 0.3, size=(8, 4)).astype("float32")  # all quantize to 0
    expected = out_grid(np.round(bias / step) * step) * np.ones((8, 1))
    np.testing.assert_allclose(qat.predict(x, verbose=0), expected, atol=1e-6)
    assert np.abs(out_grid(bias) - expected[0]).min() > 1.5 * 0.4 / 255  # the test can fail
    report = export.verify(export.to_tflite(qat, x), qat, x)
    assert report["max_diff_steps"] < 1e-3, report


@pytest.mark.parametrize("standalone", [False, True])
def test_softmax_output_trains_on_the_logits(standalone):
    """In training the loss must reach the logits behind a softmax output.

    Reference: cross-entropy -log p[y] from the training-mode probabilities, for
    labels whose probability is ~1e-10. Had the output been fake-quantized on its
    fixed 1/256 grid, Keras would fall back to probabilities clipped at 1e-7: the
    loss would stop at -log(1e-7) = 16.1 and the gradient would vanish. At
    inference the output is still on TFLite's grid (scale 1/256)."""
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8,))
    dense = keras.layers.Dense(4, activation=None if standalone else "softmax")
    out = keras.layers.Softmax()(dense(inputs)) if standalone else dense(inputs)
    # Logits ranges from the first batch: a (-6, 6) start would clip these logits.
    qat = quantize_model(keras.Model(inputs, out), init_range=None)
    x = np.random.default_rng(3).normal(size=(64, 8)).astype("float32")
    inference = qat.predict(x, verbose=0)
    np.testing.assert_allclose(inference * 256, np.round(inference * 256), atol=1e-3)
    logits_kernel = dense.kernel.numpy()
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    qat_dense = next(w for w in qat.trainable_weights if w.shape == logits_kernel.shape)
    qat_dense.assign(logits_kernel * 15.0)  # confident, so the least likely class has p ~ 0
    with tf.GradientTape() as tape:
        probs = qat(x, training=True)
        y = tf.argmin(probs, axis=-1)
        loss = loss_fn(y, probs)
    reference = np.mean(-np.log(np.take_along_axis(
        probs.numpy().astype(np.float64), y.numpy()[:, None], axis=1)))
    assert reference > 20.0  # beyond the clipped-probability ceiling of 16.1
    np.testing.assert_allclose(float(loss), reference, rtol=1e-4)
    grad = tape.gradient(loss, qat_dense)
    assert float(tf.norm(grad)) > 1.0


@pytest.mark.slow
def test_ptq_keeps_argmax_on_held_out_digits():
    keras.utils.set_random_seed(0)
    (x, y), (xt, _) = datasets.load("digits")
    model = models.small_cnn(input_shape=(8, 8, 1))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    tflite = export.to_tflite(model, representative_data=x[:200])
    assert set(export.check_integer_only(tflite, model)) <= INTEGER_OPS
    assert export.verify(tflite, model, xt)["argmax_agreement"] >= 0.99


@pytest.mark.slow
def test_lowering_is_exact_and_removes_composites():
    model = models.resnet20(conv="ghost", input_shape=(8, 8, 1))
    flat = lower_model(model)
    kinds = {type(layer) for layer in flat.layers}
    assert not kinds & {tl.GhostConv, tl.GhostBottleneck, tl.ShiftConv}
    data = np.random.default_rng(2).normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(flat.predict(data, verbose=0), model.predict(data, verbose=0),
                               atol=1e-6)


def test_errors_name_the_problem():
    inputs = keras.Input((8, 8, 2))
    upsample = keras.Model(inputs, keras.layers.UpSampling2D(name="my_upsampling")(inputs))
    with pytest.raises(ValueError, match="my_upsampling.*UpSampling2D.*Supported: "):
        quantize_model(upsample)
    negate = keras.Model(inputs, keras.layers.Conv2D(2, 1)(_Negate(name="my_negate")(inputs)))
    with pytest.raises(ValueError, match="Not integer-only: operator NEG.*my_negate"):
        export.to_tflite(negate, representative_data=np.ones((4, 8, 8, 2), "float32"))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match="needs `representative_data`"):
        export.to_tflite(plain)
    with pytest.raises(ValueError, match=r"shape \(4, 8, 8\).*\(8, 8, 2\)"):
        export.to_tflite(plain, representative_data=np.ones((4, 8, 8), "float32"))
    with pytest.raises(ValueError, match="empty"):
        export.to_tflite(plain, representative_data=np.ones((0, 8, 8, 2), "float32"))
    with pytest.raises(ValueError, match="no defined input shape"):
        export.to_tflite(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="subclassed"):
        quantize_model(_Subclassed())
    with pytest.raises(ValueError, match="scheme='int4'"):
        quantize_annotate_layer(keras.layers.Dense(2), "int4")
    with pytest.raises(ValueError, match="ema_decay=1.5"):
        ActivationQuantizer(ema_decay=1.5)


class _Negate(keras.layers.Layer):
    """-x: TFLite has no int8 NEG, so the converter leaves a float island."""

    def call(self, x):
        return -x


def test_sign_exports_as_greater_equal_and_select_only():
    """Sign is GREATER_EQUAL + SELECT_V2 in float and int8 (no SHAPE / BROADCAST_TO,
    which LiteRT ran ~35x slower), and its outputs are exactly +/-1 with sign(0) = +1."""
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, tl.Sign()(inputs))
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype("float32")
    x[0, 0, 0] = 0.0
    expected = np.where(x >= 0, 1.0, -1.0)
    for mode in ("float32", "int8"):
        blob = export.to_tflite(model, representative_data=x, mode=mode)
        ops = sorted({op["op_name"] for op in Interpreter(model_content=blob)._get_ops_details()})
        assert ops == ["GREATER_EQUAL", "SELECT_V2"], (mode, ops)
        lite, _ = export.run_tflite(blob, x)
        if mode == "float32":
            np.testing.assert_array_equal(lite, expected)
        else:
            # The sign of the int8 input (a tiny negative x rounds to the zero point,
            # i.e. to 0, whose sign is +1), as +/-1 on the int8 grid of [-1, 1].
            detail = Interpreter(model_content=blob).get_input_details()[0]
            scale, zero_point = detail["quantization"]
            q = np.clip(np.round(x / scale) + zero_point, -128, 127)
            np.testing.assert_array_equal(np.sign(lite), np.where(q >= zero_point, 1.0, -1.0))
            np.testing.assert_allclose(np.abs(lite), 1.0, atol=1.0 / 255)


def test_binary_conv_ptq_folds_the_kernel_and_runs():
    """PTQ of a float BinaryConv: sign(W) is folded into a constant +/-alpha kernel
    (one CONV_2D; a computed kernel made LiteRT reject the int8 conv), the input
    binarization is GREATER_EQUAL + SELECT_V2, and LiteRT agrees with Keras."""
    from ai_edge_litert.interpreter import Interpreter

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, tl.BinaryConv(6, 3)(inputs))
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 4)).astype("float32")
    blob = export.to_tflite(model, representative_data=x)
    ops = sorted(op["op_name"] for op in Interpreter(model_content=blob)._get_ops_details())
    assert ops == ["CONV_2D", "GREATER_EQUAL", "SELECT_V2"], ops
    # Inputs already on the file's int8 grid, so both binarize the same values (a tiny
    # |x| that int8 rounds to 0 would otherwise flip its sign): the rest is exact
    # (+/-1 inputs, +/-alpha weights) up to the output rounding.
    scale, zero_point = Interpreter(model_content=blob).get_input_details()[0]["quantization"]
    on_grid = (np.clip(np.round(x[:16] / scale) + zero_point, -128, 127) - zero_point) * scale
    report = export.verify(blob, model, on_grid.astype("float32"))
    assert report["within_1_step"] == 1.0 and report["max_diff_steps"] <= 1.0 + 1e-3, report


@pytest.mark.slow
def test_adder_ptq_exports_integer_only():
    """AdderConv lowers to STRIDED_SLICE + CONCATENATION + SUB + LEAKY_RELU(-1) + a 1x1
    CONV_2D with weights -1 (every tap summed at once, rounded once), all int8.

    |x - w| is LEAKY_RELU with alpha -1, not ABS: XNNPACK delegates only the former in
    int8. No SUM: int8 SUM rounds differently on each runtime (tests/test_micro.py)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, tl.AdderConv(4, 3, strides=2)(inputs))
    x = rng.normal(size=(64, 6, 6, 3)).astype("float32")
    tflite = export.to_tflite(model, representative_data=x)
    ops = set(export.check_integer_only(tflite, model))
    assert {"SUB", "LEAKY_RELU", "CONV_2D"} <= ops and "DEQUANTIZE" not in ops
    assert not ops & {"ABS", "NEG", "SUM", "MUL", "ADD"}, ops
    lite, _ = export.run_tflite(tflite, x[:16])
    expected = model.predict(x[:16], verbose=0)
    # PTQ of a sum of 27 8-bit |x - w| terms: a few percent of the output range.
    assert np.abs(lite - expected).max() < 0.05 * (expected.max() - expected.min())


def test_degenerate_calibration_range_is_an_error():
    """Calibration that never makes a ReLU positive gives its output a ~0 scale,
    which LiteRT aborts on: the export must refuse it, naming the layer."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="always_negative", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(-1.0))(inputs)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="degenerate scale"):
        export.to_tflite(model, representative_data=np.ones((8, 4), "float32"))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


_STRATEGY_SCRIPT = r"""
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfcompress.quantization import quantize_model, QuantizeWrapper
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6, 6, 2)).astype("float32"); y = (np.arange(64) % 3)
with strategy.scope():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs)))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(h))
    qat = quantize_model(keras.Model(inputs, out))
    qat.compile("adam", "sparse_categorical_crossentropy")
hist = qat.fit(x, y, batch_size=16, epochs=2, verbose=0).history["loss"]
q = qat.get_layer("quant_input")
print(strategy.num_replicas_in_sync, hist[-1], float(q.range_min.numpy()), float(q.range_max.numpy()))
"""


@pytest.mark.slow
def test_qat_trains_under_mirrored_strategy():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", _STRATEGY_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    replicas, loss, lo, hi = result.stdout.split()[-4:]
    assert int(replicas) == 2
    assert np.isfinite(float(loss))
    assert float(lo) < -1.0 and float(hi) > 1.0  # ranges learned from N(0, 1) inputs


def test_batch_statistics_from_the_quantized_pass_match_a_numpy_twin():
    """batch_statistics="quantized" (the default): one conv pass; mu_B = mean(z) / f + b and
    sigma_B^2 = var(z) / f^2 from z = x Q_w(w f), f = gamma / sigma (NumPy twin),
    the moving statistics move to them; inference is the same as "float"'s."""
    import numpy_reference as ref

    rng = np.random.default_rng(7)
    inputs = keras.Input((6,))
    dense = keras.layers.Dense(4, name="fc")
    norm = keras.layers.BatchNormalization(name="bn", epsilon=1e-3)
    model = keras.Model(inputs, norm(dense(inputs)))
    norm.set_weights([rng.uniform(0.5, 2.0, 4), rng.normal(size=4),
                      rng.normal(size=4), rng.uniform(0.5, 2.0, 4)])
    dense.set_weights([rng.normal(size=(6, 4)), rng.normal(size=4)])
    fast = quantize_model(model)  # the default
    exact = quantize_model(model, batch_statistics="float")
    x = (1.0 + rng.normal(size=(128, 6))).astype("float32")
    fast.get_layer("quant_input")(x, training=True)  # the input's range first
    exact.get_layer("quant_input")(x, training=True)
    wrapper = fast.get_layer("quant_fc")
    assert wrapper.batch_statistics == "quantized"
    bn = wrapper.batchnorm
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in bn.get_weights())
    w, b = (np.asarray(v, np.float64) for v in wrapper.layer.get_weights())
    lo, hi = (float(v) for v in fast.get_layer("quant_input")._bounds())
    xq = ref.fake_quant(x, lo, hi)
    sigma = np.sqrt(var + 1e-3)
    f = gamma / sigma
    w_fold = w * f
    bound = np.abs(w_fold).max()  # Dense: one scale
    z = xq @ ref.fake_quant(w_fold, -bound, bound, narrow_range=True)
    mean_b, var_b = z.mean(0) / f + b, z.var(0) / f ** 2
    sigma_b = np.sqrt(var_b + 1e-3)
    expected = z * sigma / sigma_b + beta + (b - mean_b) * gamma / sigma_b
    wrapper.output_quantizer.quantize_in_training = False  # compare before rounding
    out = fast(x, training=True).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    m = bn.momentum
    np.testing.assert_allclose(np.asarray(bn.moving_mean), m * mean + (1 - m) * mean_b,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), m * var + (1 - m) * var_b,
                               rtol=1e-4, atol=1e-5)
    # The float pass's statistics differ from these only by the weights' rounding.
    exact.get_layer("quant_fc").output_quantizer.quantize_in_training = False
    assert np.abs(exact(x, training=True).numpy() - out).max() < 0.05 * np.abs(out).max()
    with pytest.raises(ValueError, match=r"`batch_statistics` must be one of 'float', "
                                         r"'quantized'. Received: batch_statistics='fast'"):
        quantize_model(model, batch_statistics="fast")


def test_quantized_batch_statistics_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, use_bias=False, name="c")(inputs)
    model = keras.Model(inputs, keras.layers.ReLU()(keras.layers.BatchNormalization()(h)))
    qat = quantize_model(model, batch_statistics="quantized")
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    qat(x, training=True)
    qat.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras")
    assert loaded.get_layer("quant_c").batch_statistics == "quantized"
    np.testing.assert_array_equal(loaded(x).numpy(), qat(x).numpy())
