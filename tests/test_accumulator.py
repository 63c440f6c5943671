"""Accumulator widths: the rule against its formula, the exact bound against brute force
over every input, and what `profile` reports for float, binary and QAT layers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import itertools
import math

import keras
import numpy as np
import pytest
from keras import layers

import tfcompress
from tfcompress.analysis import (
    accumulator_bits,
    accumulator_range,
    format_profile,
    layer_accumulator,
    profile,
    register_accumulator,
    signed_width,
)
from tfcompress.layers import (
    BinaryConv,
    BinaryDense,
    GhostBottleneck,
    GhostConv,
    HashedDense,
    ShiftConv,
)

FIELDS = ("fan_in", "weight_bits", "activation_bits", "accumulator_bits_rule",
          "accumulator_bits_exact", "overflows_16bit")


def _brute_width(lo, hi):
    """Smallest b with [lo, hi] inside [-2**(b-1), 2**(b-1) - 1], by counting up."""
    b = 1
    while not (-(2 ** (b - 1)) <= lo and hi <= 2 ** (b - 1) - 1):
        b += 1
    return b


def _values(bits, signed):
    if bits == 1:
        return np.array([-1, 1])
    if signed:
        return np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1))
    return np.arange(0, 2**bits)


def _brute_range(kernel, bits, signed, zero_points=(None,)):
    """min / max of kernel^T a over EVERY input vector a (and every listed zero point)."""
    kernel = np.asarray(kernel, dtype=np.int64).reshape(-1, np.shape(kernel)[-1])
    q = _values(bits, signed)
    inputs = np.array(list(itertools.product(q, repeat=kernel.shape[0])), dtype=np.int64)
    lo, hi = None, None
    for z in zero_points:
        sums = (inputs - (0 if z is None else z)) @ kernel  # (inputs, channels)
        lo = sums.min() if lo is None else min(lo, sums.min())
        hi = sums.max() if hi is None else max(hi, sums.max())
    return int(lo), int(hi)


def _rows(model):
    return {row["name"]: row for row in profile(model)["layers"]}


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("n_w", "n_a", "k"),
    [(8, 8, 1), (8, 8, 2), (8, 8, 3), (8, 8, 144), (8, 8, 1152), (8, 8, 4096),
     (4, 4, 9), (4, 8, 100), (16, 8, 27), (2, 2, 5), (8, 16, 576), (1, 8, 64)],
)
def test_rule_is_n_w_plus_n_a_plus_ceil_log2_k(n_w, n_a, k):
    rule, exact = accumulator_bits(n_w, n_a, k)
    assert rule == n_w + n_a + math.ceil(math.log2(k))
    assert exact is None


def test_rule_numbers_from_the_documents():
    # int8 x int8 over a 3x3x16 window: 2n + log2(c k^2) = 16 + ceil(log2 144) = 24.
    assert accumulator_bits(8, 8, 3 * 3 * 16)[0] == 24
    # K = 1: (-128) * (-128) = 16384 = 2**14 needs 16 bits (int15 stops at 16383).
    assert accumulator_bits(8, 8, 1)[0] == 16 == _brute_width(16384, 16384)
    assert accumulator_bits(8, 8, 1152)[0] == 27  # 3x3x128: 16 + 11


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 144, 1000, 32767, 32768])
def test_binary_rule_is_ceil_log2_k_plus_1_plus_1(k):
    rule, exact = accumulator_bits(1, 1, k, integer_kernel=np.ones((k, 1)))
    assert rule == math.ceil(math.log2(k + 1)) + 1
    # +/-1 x +/-1 over K terms spans exactly [-K, K].
    assert exact == rule == _brute_width(-k, k)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 9, 144, 256])
def test_rule_bounds_the_worst_case_and_is_tight_at_powers_of_two(n, k):
    rule, _ = accumulator_bits(n, n, k)
    low = -(2 ** (n - 1))
    # Signed x signed: the worst sum is K * (-2**(n-1))**2, all weights and inputs -2**(n-1).
    worst_signed = k * low * low
    exact = accumulator_bits(n, n, k, integer_kernel=np.full((k, 1), low))[1]
    assert exact == _brute_width(0, worst_signed)
    if k & (k - 1) == 0:
        assert exact == rule
    else:
        assert exact == rule - 1
    # Unsigned inputs, or any zero point: |a| up to 2**n - 1, still within the rule.
    worst_unsigned = k * low * (2**n - 1)
    assert _brute_width(worst_unsigned, 0) <= rule
    for kwargs in ({"signed_activations": False}, {"zero_point": "any"}):
        bits = accumulator_bits(n, n, k, integer_kernel=np.full((k, 1), low), **kwargs)[1]
        assert bits == _brute_width(worst_unsigned, 0) <= rule


# --------------------------------------------------------------------------- the exact bound


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize(
    "mode", ["signed", "unsigned", "zero_point=-8", "zero_point=3", "zero_point=7", "any"]
)
def test_exact_bound_equals_brute_force_for_every_4bit_kernel(k, mode):
    """Every 4-bit kernel of K <= 2 terms, every 4-bit input vector."""
    signed = mode != "unsigned"
    zero_point = None
    zero_points = (None,)
    if mode.startswith("zero_point"):
        zero_point = int(mode.split("=")[1])
        zero_points = (zero_point,)
    elif mode == "any":
        zero_point = "any"
        zero_points = tuple(range(-8, 8))
    for kernel in itertools.product(range(-8, 8), repeat=k):
        kernel = np.array(kernel).reshape(k, 1)
        expected = _brute_range(kernel, 4, signed, zero_points)
        got = accumulator_range(kernel, 4, signed_activations=signed, zero_point=zero_point)
        assert got == expected, (kernel.ravel(), mode)
        rule, exact = accumulator_bits(4, 4, k, kernel, signed, zero_point)
        assert exact == _brute_width(*expected) <= rule


@pytest.mark.parametrize("mode", ["signed", "unsigned", "zero_point=5", "any"])
def test_exact_bound_equals_brute_force_k3_several_channels(mode):
    """K = 3, three output channels: the widest channel decides; every input enumerated."""
    rng = np.random.default_rng(0)
    signed = mode != "unsigned"
    zero_point, zero_points = None, (None,)
    if mode == "zero_point=5":
        zero_point, zero_points = 5, (5,)
    elif mode == "any":
        zero_point, zero_points = "any", tuple(range(-8, 8))
    kernels = [rng.integers(-8, 8, size=(3, 3)) for _ in range(12)]
    kernels += [np.full((3, 3), -8), np.array([[7, -8, 0], [7, -8, 0], [7, -8, 0]])]
    for kernel in kernels:
        expected = _brute_range(kernel, 4, signed, zero_points)
        per_channel = [
            _brute_width(*_brute_range(kernel[:, [c]], 4, signed, zero_points))
            for c in range(3)
        ]
        assert accumulator_range(kernel, 4, signed, zero_point) == expected
        exact = accumulator_bits(4, 4, 3, kernel, signed, zero_point)[1]
        assert exact == _brute_width(*expected) == max(per_channel)


def test_exact_bound_binary_kernels_brute_force():
    # +/-1 weights with +/-1 inputs, and with 4-bit inputs (BWN), K <= 3.
    for k in (1, 2, 3):
        for signs in itertools.product((-1, 1), repeat=k):
            kernel = np.array(signs).reshape(k, 1)
            expected = _brute_range(kernel, 1, True)
            assert accumulator_bits(1, 1, k, kernel)[1] == _brute_width(*expected)
            assert expected == (-k, k)
            expected = _brute_range(kernel, 4, True, tuple(range(-8, 8)))
            exact = accumulator_bits(1, 4, k, kernel, zero_point="any")[1]
            assert exact == _brute_width(*expected)


def test_exact_bound_takes_conv_layout_and_reads_nonzeros_only():
    # A (kh, kw, C_in, C_out) kernel as is: fan-in kh*kw*C_in, channels last.
    rng = np.random.default_rng(1)
    kernel = rng.integers(-127, 128, size=(3, 3, 4, 5))
    kernel[..., 2] = 0
    flat = kernel.reshape(36, 5)
    positive = np.maximum(flat, 0).sum(0)
    negative = np.maximum(-flat, 0).sum(0)
    # Signed int8 inputs: hi = 127 P + 128 N, lo = -128 P - 127 N.
    hi = int((127 * positive + 128 * negative).max())
    lo = int((-128 * positive - 127 * negative).min())
    assert accumulator_range(kernel, 8) == (lo, hi)
    assert accumulator_bits(8, 8, 36, kernel)[1] == _brute_width(lo, hi)
    # The int8 export's inputs, any zero point: 255 * max(P, N), both signs.
    bound = int(255 * np.maximum(positive, negative).max())
    assert accumulator_range(kernel, 8, zero_point="any") == (-bound, bound)
    assert accumulator_bits(8, 8, 36, kernel, zero_point="any")[1] == \
        math.ceil(math.log2(bound + 1)) + 1
    # An all-zero kernel sums to 0: one bit.
    assert accumulator_bits(8, 8, 4, np.zeros((4, 2)))[1] == 1


def test_signed_width():
    assert [signed_width(v, v) for v in (0, 1, 2, 127, 128, -1, -128, -129)] == \
        [1, 2, 3, 8, 9, 1, 8, 9]
    assert signed_width(-32768, 32767) == 16 == signed_width(-32640, 32385)
    with pytest.raises(ValueError, match="lo=3, hi=2"):
        signed_width(3, 2)
    with pytest.raises(ValueError, match="lo=0.5"):
        signed_width(0.5, 2)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_bits": 0}, "weight_bits=0"),
        ({"weight_bits": 2.5}, "weight_bits=2.5"),
        ({"weight_bits": True}, "weight_bits=True"),
        ({"weight_bits": "8"}, "weight_bits='8'"),
        ({"activation_bits": 0}, "activation_bits=0"),
        ({"activation_bits": 8.0}, "activation_bits=8.0"),
        ({"fan_in": 0}, "fan_in=0"),
        ({"fan_in": -3}, "fan_in=-3"),
        ({"fan_in": 2.0}, "fan_in=2.0"),
        ({"signed_activations": "yes"}, "signed_activations='yes'"),
        ({"zero_point": 128}, r"\[-128, 127\].*zero_point=128"),
        ({"zero_point": -1, "signed_activations": False}, r"\[0, 255\].*zero_point=-1"),
        ({"zero_point": "some"}, "zero_point='some'"),
        ({"integer_kernel": [[128], [0]]}, r"\[-128, 127\].*value of 128"),
        ({"integer_kernel": [[0.5], [1]]}, "integers.*value of 0.5"),
        ({"integer_kernel": np.zeros((3, 2))}, r"shape \(3, 2\).*fan_in=2"),
        ({"integer_kernel": "abc"}, "integer_kernel"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    args = {"weight_bits": 8, "activation_bits": 8, "fan_in": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        accumulator_bits(**args)


def test_bad_binary_arguments():
    with pytest.raises(ValueError, match=r"-1 or \+1.*value of 0 at"):
        accumulator_bits(1, 1, 2, integer_kernel=[[1], [0]])
    with pytest.raises(ValueError, match="no zero point.*zero_point=0"):
        accumulator_bits(1, 1, 2, zero_point=0)


# --------------------------------------------------------------------------- profile


def test_profile_conv_then_dense_fan_ins_and_rule_bits():
    inputs = keras.Input((6, 6, 16))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Flatten(name="flat")(x)
    model = keras.Model(inputs, layers.Dense(10, name="fc")(x))
    result = profile(model)
    rows = {row["name"]: row for row in result["layers"]}
    conv, fc = rows["conv"], rows["fc"]
    assert conv["fan_in"] == 3 * 3 * 16
    assert fc["fan_in"] == 6 * 6 * 8
    # Float layers at the int8 export's widths: no integer weights yet.
    assert (conv["weight_bits"], conv["activation_bits"]) == (8, 8)
    assert conv["accumulator_bits_rule"] == 8 + 8 + math.ceil(math.log2(144)) == 24
    assert fc["accumulator_bits_rule"] == 8 + 8 + math.ceil(math.log2(288)) == 25
    assert conv["accumulator_bits_exact"] is None and conv["overflows_16bit"] is True
    for name in ("bn", "flat"):
        assert not any(key in rows[name] for key in FIELDS)
    assert not any(key in result["total"] for key in FIELDS)  # not summed
    assert result["total"]["params"] == model.count_params()


def _ones_output_max(layer, shape):
    """Most terms one output sums, measured: kernel of ones, bias 0, input of ones."""
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer(inputs))
    for weight in layer.weights:
        weight.assign(np.ones(weight.shape) if "kernel" in weight.path else
                      np.zeros(weight.shape))
    out = model.predict(np.ones((1, *shape), "float32"), verbose=0)
    return model, round(float(out.max()))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: layers.Conv2D(6, (3, 5), name="x"), (9, 9, 4)),
        (lambda: layers.Conv2D(6, 3, groups=2, name="x"), (7, 7, 4)),
        (lambda: layers.DepthwiseConv2D(3, depth_multiplier=2, name="x"), (7, 7, 5)),
        (lambda: layers.Conv2DTranspose(4, 3, strides=2, name="x"), (5, 5, 3)),
        (lambda: layers.Conv2DTranspose(4, 4, strides=3, name="x"), (5, 5, 2)),
        (lambda: layers.Conv1D(4, 5, name="x"), (12, 3)),
        (lambda: layers.Dense(4, name="x"), (7, 11)),
    ],
)
def test_fan_in_is_the_most_terms_one_output_sums(make, shape):
    model, measured = _ones_output_max(make(), shape)
    row = _rows(model)["x"]
    assert row["fan_in"] == measured
    assert row["accumulator_bits_rule"] == 16 + math.ceil(math.log2(measured))


def test_composite_layers_report_their_widest_operation():
    inputs = keras.Input((6, 6, 12))
    x = layers.SeparableConv2D(10, 3, padding="same", name="sep")(inputs)  # 9 vs 12
    x = ShiftConv(16, name="shift")(x)  # its 1x1 conv: 10
    x = GhostConv(16, kernel_size=3, ratio=2, name="ghost")(x)  # 3*3*16 vs 3*3
    rows = _rows(keras.Model(inputs, x))
    assert rows["sep"]["fan_in"] == 12
    assert rows["shift"]["fan_in"] == 10
    assert rows["ghost"]["fan_in"] == 144
    assert rows["ghost"]["accumulator_bits_rule"] == 24
    # GhostBottleneck: its widest convolutions, the SE reduction and the second Ghost
    # module's 1x1, both over the 32 middle channels (others: 8, 9).
    inputs = keras.Input((4, 4, 8))
    x = GhostBottleneck(32, 16, kernel_size=3, se_ratio=0.25, name="block")(inputs)
    x = HashedDense(5, buckets=7, name="hashed")(layers.Flatten()(x))
    rows = _rows(keras.Model(inputs, x))
    assert rows["block"]["fan_in"] == 32
    assert rows["hashed"]["fan_in"] == 4 * 4 * 16  # the virtual matrix's rows


def test_binary_layers_report_one_bit_operands():
    inputs = keras.Input((6, 6, 16))
    x = BinaryConv(8, 3, name="xnor")(inputs)
    x = layers.Flatten()(x)
    x = BinaryDense(4, binarize_input=False, name="bwn")(x)
    model = keras.Model(inputs, x)
    rows = _rows(model)
    xnor, bwn = rows["xnor"], rows["bwn"]
    assert (xnor["fan_in"], xnor["weight_bits"], xnor["activation_bits"]) == (144, 1, 1)
    assert xnor["accumulator_bits_rule"] == xnor["accumulator_bits_exact"] == \
        math.ceil(math.log2(145)) + 1 == 9
    assert xnor["overflows_16bit"] is False
    # Binary weights on int8 inputs (any zero point): 255 * max(#(+1), #(-1)) per channel.
    signs = np.where(model.get_layer("bwn").kernel.numpy() >= 0, 1, -1)
    plus, minus = (signs > 0).sum(0), (signs < 0).sum(0)
    bound = int(255 * np.maximum(plus, minus).max())
    assert (bwn["fan_in"], bwn["weight_bits"], bwn["activation_bits"]) == (6 * 6 * 8, 1, 8)
    assert bwn["accumulator_bits_exact"] == math.ceil(math.log2(bound + 1)) + 1
    assert bwn["accumulator_bits_rule"] == 1 + 8 + math.ceil(math.log2(288))


@pytest.mark.parametrize(("k", "flagged"), [(32767, False), (32768, True)])
def test_large_fan_in_overflows_16_bits_small_does_not(k, flagged):
    inputs = keras.Input((k,))
    row = _rows(keras.Model(inputs, BinaryDense(1, name="fc")(inputs)))["fc"]
    # ceil(log2(K + 1)) + 1: 16 bits for K = 32767, 17 for K = 32768.
    assert row["accumulator_bits_exact"] == (17 if flagged else 16)
    assert row["overflows_16bit"] is flagged


def _qat_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 5, 3))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    outputs = layers.Dense(3, name="fc")(layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4))
    bn.gamma.assign(np.linspace(0.5, 1.5, 4))
    return tfcompress.quantize_model(model)


def _reference_int8(kernel2d, per_channel):
    """Symmetric int8 as TFLite stores it: s = max|w| / 127, q = round(w / s)."""
    bound = np.abs(kernel2d).max(axis=0 if per_channel else None)
    return np.round(kernel2d / (bound / 127.0)).astype(np.int64)


def _any_zero_point_bits(q):
    positive, negative = np.maximum(q, 0).sum(0), np.maximum(-q, 0).sum(0)
    bound = int(255 * np.maximum(positive, negative).max())
    return math.ceil(math.log2(bound + 1)) + 1


def test_qat_model_reports_exact_bits_from_its_int8_weights():
    qat = _qat_model()
    rows = _rows(qat)
    conv_kernel = qat.get_layer("quant_conv").folded_weights()[0].numpy()  # BN folded
    q_conv = _reference_int8(conv_kernel.reshape(27, 4), per_channel=True)
    assert np.abs(q_conv).max() == 127
    dw_kernel = qat.get_layer("quant_dw").folded_weights()[0].numpy()  # (3, 3, 4, 2)
    q_dw = _reference_int8(dw_kernel.reshape(9, 8), per_channel=True)
    fc_kernel = qat.get_layer("quant_fc").folded_weights()[0].numpy()
    q_fc = _reference_int8(fc_kernel, per_channel=False)  # FULLY_CONNECTED: one scale
    for name, q, fan_in in (("quant_conv", q_conv, 27), ("quant_dw", q_dw, 9),
                            ("quant_fc", q_fc, 72)):
        row = rows[name]
        assert (row["fan_in"], row["weight_bits"], row["activation_bits"]) == (fan_in, 8, 8)
        assert row["accumulator_bits_rule"] == 16 + math.ceil(math.log2(fan_in))
        assert row["accumulator_bits_exact"] == _any_zero_point_bits(q), name
        assert row["accumulator_bits_exact"] < row["accumulator_bits_rule"]
    assert "fan_in" not in rows["flat"] and "fan_in" not in rows["quant_input"]


@pytest.mark.parametrize(("second", "exact", "flagged"), [(0.001, 16, False), (0.5, 17, True)])
def test_qat_flag_uses_the_exact_bound(second, exact, flagged):
    # Dense 2 -> 1: the rule says 8 + 8 + 1 = 17 bits, but weights [127, 0] reach only
    # 255 * 127 = 32385, which fits 16; [127, 64] reach 255 * 191 = 48705: 17.
    inputs = keras.Input((2,))
    model = keras.Model(inputs, layers.Dense(1, use_bias=False, name="fc")(inputs))
    model.get_layer("fc").kernel.assign([[1.0], [second]])
    row = _rows(tfcompress.quantize_model(model))["quant_fc"]
    assert row["accumulator_bits_rule"] == 17
    assert row["accumulator_bits_exact"] == exact
    assert row["overflows_16bit"] is flagged


def test_qat_integers_per_channel_for_convs_one_scale_for_dense():
    # Channel 0 holds the largest weight (1.0 -> 127), channel 1 four 0.1s. A conv scales
    # each channel: the 0.1s become 127, 255 * 508 needs 18 bits. TFLite's
    # FULLY_CONNECTED has one scale: they are 13, and 255 * 127 = 32385 fits 16.
    kernel = np.array([[1.0, 0.1], [0.0, 0.1], [0.0, 0.1], [0.0, 0.1]])
    inputs = keras.Input((1, 1, 4))
    model = keras.Model(inputs, layers.Conv2D(2, 1, use_bias=False, name="conv")(inputs))
    model.get_layer("conv").kernel.assign(kernel.reshape(1, 1, 4, 2))
    row = _rows(tfcompress.quantize_model(model))["quant_conv"]
    assert (row["accumulator_bits_rule"], row["accumulator_bits_exact"]) == (18, 18)
    assert _any_zero_point_bits(np.array([[127, 127]] + [[0, 127]] * 3)) == 18
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2, use_bias=False, name="fc")(inputs))
    model.get_layer("fc").kernel.assign(kernel)
    row = _rows(tfcompress.quantize_model(model))["quant_fc"]
    assert (row["accumulator_bits_rule"], row["accumulator_bits_exact"]) == (18, 16)
    assert _any_zero_point_bits(np.array([[127, 13]] + [[0, 13]] * 3)) == 16


def test_pruned_and_clustered_layers_report_the_wrapped_layer():
    from tfcompress.clustering import cluster_weights
    from tfcompress.pruning import ConstantSparsity, prune_low_magnitude

    def two_dense():
        inputs = keras.Input((8,))
        x = layers.Dense(4, name="fc1")(inputs)
        return keras.Model(inputs, layers.Dense(3, name="fc2")(x))

    keras.utils.set_random_seed(0)
    pruned = _rows(prune_low_magnitude(two_dense(), ConstantSparsity(0.5, 0)))
    clustered = _rows(cluster_weights(two_dense(), 4))
    for row, fan_in in ((pruned["prune_low_magnitude_fc1"], 8),
                        (clustered["cluster_fc2"], 4)):
        assert row["fan_in"] == fan_in
        assert row["accumulator_bits_rule"] == 16 + math.ceil(math.log2(fan_in))
        assert row["accumulator_bits_exact"] is None  # float until exported


def test_register_accumulator():
    class Int4Dense(layers.Dense):
        pass

    register_accumulator(Int4Dense, lambda layer: {
        "weight_bits": 4, "activation_bits": 4, "fan_in": layer.kernel.shape[0],
        "integer_kernel": np.full(layer.kernel.shape, -8)})
    layer = Int4Dense(2)
    layer.build((None, 16))
    entry = layer_accumulator(layer)
    # 16 inputs of -8 * -8 = 64 each: 1024 = 2**10 needs 12 bits; the rule 4 + 4 + 4.
    assert entry == {"fan_in": 16, "weight_bits": 4, "activation_bits": 4,
                     "accumulator_bits_rule": 12, "accumulator_bits_exact": 12,
                     "overflows_16bit": False}
    class Broken(layers.Dense):
        pass

    register_accumulator(Broken, lambda layer: {"weight_bits": 8, "bits": 8})
    broken = Broken(2)
    broken.build((None, 3))
    with pytest.raises(ValueError, match=r"Unknown: \['bits'\], missing: \['activation_bits'"):
        layer_accumulator(broken)
    with pytest.raises(ValueError, match="layer_class=<class 'int'>"):
        register_accumulator(int, lambda layer: None)
    with pytest.raises(ValueError, match="fn=3"):
        register_accumulator(Int4Dense, 3)


# --------------------------------------------------------------------------- table


def test_format_profile_shows_accumulator_columns_and_overflows():
    table = format_profile(profile(_qat_model()))
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("Layer"))
    for title in ("Bits", "Acc rule", "Acc exact"):
        assert title in header
    conv_line = next(line for line in lines if line.startswith("quant_conv"))
    rows = _rows(_qat_model())
    conv = rows["quant_conv"]
    assert conv_line.split()[-2:] == [str(conv["accumulator_bits_rule"]),
                                      str(conv["accumulator_bits_exact"])]
    summary = lines[-1]
    assert summary.startswith("Accumulators over 16 bits")
    assert "3 of 3 layers" in summary
    assert f"quant_conv ({conv['accumulator_bits_exact']})" in summary

    inputs = keras.Input((4, 4, 16))
    x = BinaryConv(8, 3, name="xnor")(inputs)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(2, name="fc")(x)
    table = format_profile(profile(keras.Model(inputs, x)))
    lines = table.splitlines()
    assert lines[-1] == ("Accumulators over 16 bits (exact when known, else the rule): "
                         "1 of 2 layers: fc (23)")  # 16 + ceil(log2(4 * 4 * 8))
    fc_line = next(line for line in lines if line.startswith("fc "))
    assert fc_line.split()[-2:] == ["23", "-"]


def test_qat_exact_bits_match_the_int8_weights_of_the_exported_file():
    from ai_edge_litert.interpreter import Interpreter

    from tfcompress import export

    qat = _qat_model()
    x = np.random.default_rng(0).normal(size=(32, 5, 5, 3)).astype("float32")
    interpreter = Interpreter(model_content=export.to_tflite(qat, x))
    interpreter.allocate_tensors()
    # The filter is the second input of each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED.
    filters = {
        op["op_name"]: interpreter.get_tensor(op["inputs"][1])
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    }
    assert sorted(filters) == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    weights = {"quant_conv": filters["CONV_2D"], "quant_dw": filters["DEPTHWISE_CONV_2D"],
               "quant_fc": filters["FULLY_CONNECTED"]}
    assert all(w.dtype == np.int8 for w in weights.values())
    # TFLite layouts: CONV_2D (out, kh, kw, in), DEPTHWISE (1, kh, kw, out), FC (out, in).
    in_file = {
        "quant_conv": weights["quant_conv"].reshape(4, -1).T,
        "quant_dw": weights["quant_dw"].reshape(-1, 8),
        "quant_fc": weights["quant_fc"].T,
    }
    rows = _rows(qat)
    for name, q in in_file.items():
        q = q.astype(np.int64)
        assert q.shape[0] == rows[name]["fan_in"]
        assert rows[name]["accumulator_bits_exact"] == _any_zero_point_bits(q), name
