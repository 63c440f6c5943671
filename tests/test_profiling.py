"""profile(): parameters, MACs, additions, binary ops and bits against hand formulas."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import math

import keras
import pytest
from keras import layers

from tfcompress import models
from tfcompress.layers import (
    AdderConv,
    AdderDense,
    BinaryConv,
    BinaryDense,
    GhostBottleneck,
    GhostConv,
    Shift,
    ShiftConv,
    make_divisible,
)
from tfcompress.profiling import (
    count_layer,
    format_profile,
    get_counter,
    profile,
    register_counter,
)


def _single(layer, shape):
    """A functional model wrapping one layer; returns (model, its profile row)."""
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer(inputs))
    result = profile(model)
    (row,) = result["layers"]
    assert result["total"]["params"] == model.count_params()
    return model, row


# --------------------------------------------------------------------------- reference models


def test_lenet_300_100_params_and_macs():
    result = profile(models.lenet_300_100())
    total = result["total"]
    assert total["params"] == 266_610
    assert total["macs"] == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    assert total["adds"] == total["binary_ops"] == total["non_trainable_params"] == 0
    assert total["param_bits"] == 32 * 266_610
    assert [row["name"] for row in result["layers"]] == ["flatten", "fc1", "fc2", "predictions"]
    assert result["layers"][1]["output_shape"] == (None, 300)


def test_lenet5_params_and_macs():
    total = profile(models.lenet5())["total"]
    assert total["params"] == 431_080
    conv1 = 24 * 24 * 20 * (5 * 5 * 1)
    conv2 = 8 * 8 * 50 * (5 * 5 * 20)
    assert total["macs"] == conv1 + conv2 + 800 * 500 + 500 * 10 == 2_293_000


def test_resnet20_conv_macs_by_hand():
    total = profile(models.resnet20("conv"))["total"]
    macs = 32 * 32 * 9 * 3 * 16 + 6 * 32 * 32 * 9 * 16 * 16
    macs += 16 * 16 * (9 * 16 * 32 + 5 * 9 * 32 * 32 + 16 * 32)
    macs += 8 * 8 * (9 * 32 * 64 + 5 * 9 * 64 * 64 + 32 * 64)
    macs += 64 * 10
    assert total["macs"] == macs == 40_813_184  # AdderNet's table: 41.17M
    assert total["params"] == 274_042
    assert total["trainable_params"] == 272_474


@pytest.mark.slow
def test_resnet20_variants_count_what_replaces_the_multiplications():
    shape = (8, 8, 1)
    conv = profile(models.resnet20("conv", input_shape=shape))
    block_macs = sum(
        row["macs"] for row in conv["layers"] if "stage" in row["name"] and "_conv" in row["name"]
    )
    rest = conv["total"]["macs"] - block_macs
    adder = profile(models.resnet20("adder", input_shape=shape))["total"]
    assert adder["adds"] == 2 * block_macs
    assert adder["macs"] == rest
    binary = profile(models.resnet20("binary", input_shape=shape))["total"]
    assert binary["binary_ops"] == block_macs
    # Ordinary layers, plus one alpha multiplication per output of the 18 binary convs.
    alphas = 3 * 2 * 64 * 16 + 3 * 2 * 16 * 32 + 3 * 2 * 4 * 64
    assert binary["macs"] == rest + alphas
    assert binary["param_bits"] < conv["total"]["param_bits"] / 15
    ghost = profile(models.resnet20("ghost", input_shape=shape))["total"]
    shift = profile(models.resnet20("shift", input_shape=shape))["total"]
    assert 0.45 < (ghost["macs"] - rest) / block_macs < 0.6
    assert shift["macs"] < conv["total"]["macs"] / 5


@pytest.fixture(scope="module")
def ghostnet_profile():
    model = models.ghostnet()
    return model, profile(model)


def test_ghostnet_matches_paper(ghostnet_profile):
    model, result = ghostnet_profile
    total = result["total"]
    assert total["params"] == model.count_params() == 5_204_476
    assert total["trainable_params"] == 5_182_508
    assert abs(total["trainable_params"] - 5.2e6) / 5.2e6 < 0.01  # paper: 5.2M
    assert total["macs"] == 141_150_512
    assert abs(total["macs"] - 141e6) / 141e6 < 0.01  # paper: 141M FLOPs
    assert len(result["layers"]) == len(model.layers) - 1  # every layer but the Input


@pytest.mark.parametrize(
    "build",
    [
        models.lenet_300_100,
        models.lenet5,
        lambda: models.small_cnn(input_shape=(8, 8, 1)),
        lambda: models.ghostnet(width=0.5, input_shape=(8, 8, 1), num_classes=10),
    ]
    + [lambda c=c: models.resnet20(c, input_shape=(8, 8, 1)) for c in models.CONVS],
)
def test_total_params_equal_count_params(build):
    model = build()
    result = profile(model)
    assert result["total"]["params"] == model.count_params()
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    assert result["total"]["trainable_params"] == trainable
    json.dumps(result)  # plain numbers, strings and tuples: serializable


# --------------------------------------------------------------------------- keras layers


def test_conv_family_macs_by_hand():
    inputs = keras.Input((11, 13, 3))
    x = layers.Conv2D(8, (3, 5), strides=2, name="conv")(inputs)  # valid: 5x5x8
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)  # 5x5x16
    x = layers.SeparableConv2D(4, 3, padding="same", name="sep")(x)  # 5x5x4
    x = layers.Conv2D(6, 1, groups=2, name="grouped")(x)  # 5x5x6
    x = layers.Conv2DTranspose(3, 2, strides=2, name="up")(x)  # 10x10x3
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(7, name="fc")(x)
    model = keras.Model(inputs, outputs)
    macs = {row["name"]: row["macs"] for row in profile(model)["layers"]}
    assert macs["conv"] == 5 * 5 * 8 * (3 * 5 * 3)
    assert macs["dw"] == 5 * 5 * 16 * (3 * 3)
    assert macs["sep"] == 5 * 5 * (16 * 3 * 3 + 16 * 4)
    assert macs["grouped"] == 5 * 5 * 6 * (1 * 1 * 4 // 2)
    assert macs["up"] == 5 * 5 * 6 * (2 * 2 * 3)  # every input pixel x the whole kernel
    assert macs["fc"] == 300 * 7
    assert macs["flatten"] == 0


def test_conv1d_and_dense_on_sequences():
    inputs = keras.Input((20, 4))
    x = layers.Conv1D(6, 3, name="conv")(inputs)  # 18 x 6
    outputs = layers.Dense(5, name="fc")(x)  # applied to each of 18 steps
    macs = {row["name"]: row["macs"] for row in profile(keras.Model(inputs, outputs))["layers"]}
    assert macs == {"conv": 18 * 6 * 3 * 4, "fc": 18 * 6 * 5}


def test_batch_normalization_params_marked_and_zero_macs():
    _, row = _single(layers.BatchNormalization(), (4, 4, 10))
    assert row["params"] == 40
    assert row["trainable_params"] == 20
    assert row["non_trainable_params"] == 20  # moving mean and variance
    assert row["macs"] == row["adds"] == 0
    assert row["param_bits"] == 40 * 32


# --------------------------------------------------------------------------- tfcompress layers


def test_ghost_conv_macs_half_of_conv():
    k, d, c_in, filters, h, w = 3, 3, 16, 32, 8, 8
    _, conv = _single(layers.Conv2D(filters, k, padding="same", use_bias=False), (h, w, c_in))
    _, ghost = _single(GhostConv(filters, kernel_size=k, ratio=2), (h, w, c_in))
    m = filters // 2
    assert ghost["macs"] == m * k * k * c_in * h * w + m * (2 - 1) * d * d * h * w
    assert conv["macs"] == filters * k * k * c_in * h * w
    assert 0.5 < ghost["macs"] / conv["macs"] < 0.54
    # Parameters too: primary + cheap kernels + both BNs.
    assert ghost["params"] == m * k * k * c_in + m * d * d + 4 * m + 4 * m
    assert ghost["non_trainable_params"] == 4 * m


def test_ghost_conv_ratio_3_strided_uneven_filters():
    c_in, filters, s, d = 6, 10, 3, 5
    layer = GhostConv(filters, kernel_size=1, ratio=s, dw_kernel_size=d, strides=2)
    _, row = _single(layer, (9, 9, c_in))
    m = math.ceil(filters / s)  # 4 intrinsic maps, 8 ghosts computed, 10 kept
    hw = 5 * 5
    assert row["output_shape"] == (None, 5, 5, filters)
    assert row["macs"] == m * c_in * hw + m * (s - 1) * d * d * hw


def test_ghost_bottleneck_sums_its_convolutions():
    c_in, mid, out, h = 16, 48, 24, 16
    block = GhostBottleneck(mid, out, kernel_size=3, strides=2, se_ratio=0.25)
    _, row = _single(block, (h, h, c_in))
    hw_in, hw_out = h * h, (h // 2) ** 2
    ghost1 = (mid // 2) * c_in * hw_in + (mid // 2) * 9 * hw_in
    dw = 9 * mid * hw_out
    reduced = make_divisible(mid * 0.25, 4)
    se = mid * reduced + reduced * mid
    ghost2 = (out // 2) * mid * hw_out + (out // 2) * 9 * hw_out
    shortcut = 9 * c_in * hw_out + c_in * out * hw_out
    assert row["macs"] == ghost1 + dw + se + ghost2 + shortcut
    assert row["adds"] == row["binary_ops"] == 0


def test_ghost_bottleneck_identity_shortcut():
    _, row = _single(GhostBottleneck(32, 16), (4, 4, 16))
    hw = 16
    assert row["macs"] == 16 * 16 * hw + 16 * 9 * hw + 8 * 32 * hw + 8 * 9 * hw


def test_adder_layers_count_additions_only():
    k, c_in, c_out, h = 3, 5, 12, 6
    _, row = _single(AdderConv(c_out, k), (h, h, c_in))
    assert row["adds"] == 2 * k * k * c_in * c_out * h * h
    assert row["macs"] == row["binary_ops"] == 0
    assert row["params"] == k * k * c_in * c_out
    _, row = _single(AdderConv(c_out, k, strides=2, padding="valid"), (7, 7, c_in))
    assert row["adds"] == 2 * k * k * c_in * c_out * 3 * 3
    _, row = _single(AdderDense(7), (20,))
    assert (row["adds"], row["macs"]) == (2 * 20 * 7, 0)


def test_shift_is_free_and_shift_conv_is_its_pointwise_conv():
    _, row = _single(Shift(3), (6, 6, 9))
    assert (row["params"], row["macs"], row["adds"], row["param_bits"]) == (0, 0, 0, 0)
    _, row = _single(ShiftConv(16, strides=2), (8, 8, 9))
    assert row["macs"] == 9 * 16 * 4 * 4
    assert row["params"] == 9 * 16 + 16


def test_binary_layers():
    k, c_in, c_out, h = 3, 4, 8, 6
    kernel = k * k * c_in * c_out
    _, row = _single(BinaryConv(c_out, k), (h, h, c_in))
    assert row["binary_ops"] == kernel * h * h
    assert row["macs"] == c_out * h * h  # alpha scaling, scale="channel"
    assert row["adds"] == 0
    assert row["params"] == kernel
    assert row["param_bits"] == kernel * 1 + 32 * c_out  # 1-bit kernel + float alpha
    _, row = _single(BinaryConv(c_out, k, scale="none", use_bias=True), (h, h, c_in))
    assert (row["macs"], row["param_bits"]) == (0, kernel + 32 * c_out)  # the bias here
    _, row = _single(BinaryConv(c_out, k, binarize_input=False), (h, h, c_in))
    assert (row["binary_ops"], row["adds"]) == (0, kernel * h * h)  # BWN: +-x sums
    _, row = _single(BinaryDense(10), (64,))
    assert (row["binary_ops"], row["macs"], row["param_bits"]) == (640, 10, 640 + 320)


# --------------------------------------------------------------------------- model kinds


def test_sequential_models():
    stack = [layers.Conv2D(4, 3, name="conv"), layers.Flatten(), layers.Dense(10, name="fc")]
    expected = 26 * 26 * 4 * 9 + 26 * 26 * 4 * 10
    with_input = keras.Sequential([keras.Input((28, 28, 1))] + stack)
    assert profile(with_input)["total"]["macs"] == expected
    built = keras.Sequential(
        [layers.Conv2D(4, 3, name="conv"), layers.Flatten(), layers.Dense(10, name="fc")]
    )
    built.build((None, 28, 28, 1))
    result = profile(built)
    assert result["total"]["macs"] == expected
    assert result["total"]["params"] == built.count_params()


def test_nested_models_and_shared_layers():
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Conv2D(4, 3, padding="same", name="conv")], name="inner"
    )
    shared = layers.Dense(5, name="shared")
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    ya = shared(layers.GlobalAveragePooling2D(name="gap_a")(inner(a)))
    yb = shared(layers.GlobalAveragePooling2D(name="gap_b")(inner(b)))
    model = keras.Model([a, b], layers.Add(name="add")([ya, yb]))
    result = profile(model)
    rows = {row["name"]: row for row in result["layers"]}
    assert rows["inner/conv"]["macs"] == 2 * (64 * 4 * 27)  # called on both inputs
    assert rows["inner/conv"]["params"] == 27 * 4 + 4  # weights once
    assert rows["shared"]["macs"] == 2 * 4 * 5
    assert "called 2 times" in rows["shared"]["note"]
    assert result["total"]["params"] == model.count_params()


def test_unbuilt_subclassed_and_dynamic_models_raise():
    with pytest.raises(ValueError, match="not built.*keras.Input"):
        profile(keras.Sequential([layers.Dense(3)]))

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = layers.Dense(3)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(keras.ops.ones((1, 4)))
    with pytest.raises(ValueError, match="subclassed"):
        profile(net)
    with pytest.raises(ValueError, match="keras.Model"):
        profile(layers.Dense(3))
    inputs = keras.Input((None, None, 3))
    dynamic = keras.Model(inputs, layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match=r"unknown dimension.*keras.Input"):
        profile(dynamic)


# --------------------------------------------------------------------------- registry


class Scale(layers.Layer):
    """A per-channel multiplication: weights, and no built-in counter."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gamma


class CountedScale(Scale):
    pass


class MyConv(layers.Conv2D):
    pass


def test_register_counter_and_fallbacks():
    _, row = _single(Scale(), (4, 4, 3))
    assert row["macs"] == 0 and "no counter" in row["note"]
    assert row["params"] == 3

    @register_counter(CountedScale)
    def count_scale(layer, input_shape, output_shape):
        return {"macs": math.prod(output_shape[1:]), "nonzero_params": 2}

    assert get_counter(CountedScale) is count_scale
    model, row = _single(CountedScale(), (4, 4, 3))
    assert row["macs"] == 48 and "note" not in row
    assert row["nonzero_params"] == 2
    assert profile(model)["total"]["nonzero_params"] == 2
    # Called twice: operations per call, layer properties once.
    shared = CountedScale()
    a, b = keras.Input((4, 4, 3)), keras.Input((4, 4, 3))
    twice = keras.Model([a, b], layers.Add()([shared(a), shared(b)]))
    (row,) = [row for row in profile(twice)["layers"] if row["type"] == "CountedScale"]
    assert (row["macs"], row["nonzero_params"], row["params"]) == (96, 2, 3)
    # Subclasses inherit the counter of the closest registered class.
    _, row = _single(MyConv(2, 3, padding="same"), (5, 5, 1))
    assert row["macs"] == 25 * 2 * 9


def test_register_counter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layer_class=<class 'int'>"):
        register_counter(int, lambda *args: {})
    with pytest.raises(ValueError, match="fn=3"):
        register_counter(Scale, 3)

    class Negative(Scale):
        pass

    register_counter(Negative, lambda layer, i, o: {"macs": -1})
    with pytest.raises(ValueError, match="macs=-1"):
        _single(Negative(), (2, 2, 1))


def test_count_layer_on_a_single_layer():
    conv = layers.Conv2D(8, 3, padding="same")
    conv.build((None, 4, 4, 2))
    counts = count_layer(conv, (None, 4, 4, 2))
    assert counts["macs"] == 3 * 3 * 2 * 8 * 16
    assert counts["param_bits"] == 32 * (3 * 3 * 2 * 8 + 8)
    assert counts["counted"] is True


# --------------------------------------------------------------------------- table


def test_format_profile_table(capsys):
    result = profile(models.resnet20("adder", input_shape=(8, 8, 1)), print_table=True)
    printed = capsys.readouterr().out
    table = format_profile(result)
    assert printed.strip() == table.strip()
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("Layer"))
    titles = ("Type", "Output shape", "Params", "Non-train", "MACs", "Adds", "Binary ops", "Bits")
    for title in titles:
        assert title in header
    assert any(line.startswith("stage1_block1_conv1") and "AdderConv" in line for line in lines)
    total_line = next(line for line in lines if line.startswith("Total"))
    assert f"{result['total']['adds']:,}" in total_line
    assert f"{result['total']['params']:,}" in total_line
    # Aligned: every layer line has the width of the header's rule.
    rule = lines[1]
    assert set(rule) == {"-"}
    layer_lines = lines[lines.index(header) + 2 : lines.index(header) + 2 + len(result["layers"])]
    assert all(len(line) <= len(rule) for line in layer_lines)
    assert len({line.index("AdderConv") for line in layer_lines if "AdderConv" in line}) == 1
    with pytest.raises(ValueError, match="profile"):
        format_profile({"rows": []})


# --------------------------------------------------------------------------- wrapped models


def _two_dense():
    inputs = keras.Input((8,))
    x = layers.Dense(4, name="fc1")(inputs)
    return keras.Model(inputs, layers.Dense(3, use_bias=False, name="fc2")(x))


def _rows(model):
    return {row["name"]: row for row in profile(model)["layers"]}


def test_profile_of_a_pruned_model_counts_the_file():
    from tfcompress.pruning import ConstantSparsity, prune_low_magnitude

    keras.utils.set_random_seed(0)
    pruned = prune_low_magnitude(_two_dense(), ConstantSparsity(0.5, 0))
    for wrapper in pruned.layers[1:]:
        wrapper.pruning_step.assign(0)
        wrapper.update_masks()
    rows = _rows(pruned)
    fc1, fc2 = rows["prune_low_magnitude_fc1"], rows["prune_low_magnitude_fc2"]
    # fc1: 8x4 kernel, 16 of 32 zeroed, 4 biases; the mask and step are no parameters.
    assert (fc1["macs"], fc1["params"], fc1["nonzero_params"]) == (32, 36, 16 + 4)
    assert fc1["param_bits"] == 32 * (16 + 4)
    assert (fc2["macs"], fc2["params"], fc2["param_bits"]) == (12, 12, 32 * 6)
    total = profile(pruned)["total"]
    assert (total["params"], total["macs"], total["param_bits"]) == (48, 44, 32 * 26)
    assert pruned.count_params() == 48 + 32 + 12 + 2  # what profile leaves out


def test_profile_of_a_clustered_model_counts_indices_and_codebooks():
    from tfcompress.clustering import cluster_weights

    keras.utils.set_random_seed(0)
    rows = _rows(cluster_weights(_two_dense(), 4))
    fc1, fc2 = rows["cluster_fc1"], rows["cluster_fc2"]
    # 2-bit indices (4 centroids) plus 4 float32 centroids; fc1's biases stay float32.
    assert (fc1["macs"], fc1["params"]) == (32, 36)
    assert fc1["param_bits"] == 32 * 2 + 4 * 32 + 4 * 32
    assert (fc2["macs"], fc2["params"], fc2["param_bits"]) == (12, 12, 12 * 2 + 4 * 32)
    # Pruned first: the kept zeros need a fifth symbol, so 3-bit indices.
    model = _two_dense()
    kernel = model.get_layer("fc2").kernel.numpy()
    kernel[0] = 0.0
    model.get_layer("fc2").set_weights([kernel])
    row = _rows(cluster_weights(model, {"fc2": 4}))["cluster_fc2"]
    assert row["param_bits"] == 12 * 3 + 4 * 32


def test_profile_of_a_qat_model_counts_int8_weights_and_int32_biases():
    from tfcompress.quantization import quantize_model

    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    y = layers.Conv2D(4, 1, name="side")(inputs)
    x = layers.BatchNormalization(name="bn2")(layers.Add(name="add")([x, y]))
    outputs = layers.Dense(3, name="fc")(layers.Flatten(name="flat")(x))
    rows = _rows(quantize_model(keras.Model(inputs, outputs)))
    # conv + folded BN: 3*3*2*4 int8 weights, 4 int32 biases (the folded BN's).
    conv = rows["quant_conv"]
    assert (conv["macs"], conv["params"], conv["param_bits"]) == (36 * 72, 76, 72 * 8 + 4 * 32)
    side = rows["quant_side"]
    assert (side["macs"], side["params"], side["param_bits"]) == (36 * 8, 12, 8 * 8 + 4 * 32)
    # A BatchNormalization after an Add: the file's ADD and MUL constants, int8.
    bn2 = rows["quant_bn2"]
    assert (bn2["macs"], bn2["params"], bn2["param_bits"]) == (0, 8, 8 * 8)
    fc = rows["quant_fc"]
    assert (fc["macs"], fc["params"], fc["param_bits"]) == (432, 435, 432 * 8 + 3 * 32)
    quantizers = [row for row in rows.values() if row["type"] == "ActivationQuantizer"]
    assert quantizers and all(row["params"] == row["param_bits"] == 0 for row in quantizers)


# --------------------------------------------------------------------------- accumulators


def test_rows_carry_accumulator_widths_and_totals_leave_them_out():
    result = profile(models.lenet_300_100())
    rows = {row["name"]: row for row in result["layers"]}
    # Float Dense layers at the int8 export's widths: 8 + 8 + ceil(log2 fan-in).
    for name, fan_in in (("fc1", 784), ("fc2", 300), ("predictions", 100)):
        row = rows[name]
        assert row["fan_in"] == fan_in
        assert row["accumulator_bits_rule"] == 16 + math.ceil(math.log2(fan_in))
        assert row["accumulator_bits_exact"] is None
        assert row["overflows_16bit"] is True
    assert "fan_in" not in rows["flatten"]
    assert "fan_in" not in result["total"] and "overflows_16bit" not in result["total"]
    last = format_profile(result).splitlines()[-1]
    assert last.endswith("3 of 3 layers: fc1 (26), fc2 (25), predictions (23)")
