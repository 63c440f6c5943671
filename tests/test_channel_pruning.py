"""Structured pruning that removes channels (issue 13): groups, criteria against NumPy
twins, exact removal of all-zero channels, MACs by hand, sparsity training,
sensitivity analysis, save/load and int8 export of the pruned models."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress
from tfcompress import export, models
from tfcompress.pruning import (
    GroupLasso,
    channel_groups,
    channel_importance,
    prune_channels,
    prune_low_magnitude,
    with_regularizer,
)

L = keras.layers


def rand(rng, *shape):
    return rng.normal(size=shape).astype("float32")


def randomize(model, seed=0):
    """Random weights everywhere, BatchNorm statistics away from 0/1, so that a wrong
    slice or a wrong channel shows in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c),
                               rng.normal(size=c) * 0.1, rng.uniform(0.5, 2, c)])
        elif layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5
                               for w in layer.weights])
    return model


def zero_channels(layer, channels, bn=None):
    """A zero filter and bias for `channels` of a producer (and a zero BN channel)."""
    weights = layer.get_weights()
    weights[0][..., channels] = 0.0
    if len(weights) > 1:
        weights[1][channels] = 0.0
    layer.set_weights(weights)
    if bn is not None:
        gamma, beta, mean, var = bn.get_weights()
        gamma[channels], beta[channels] = 0.0, 0.0
        bn.set_weights([gamma, beta, mean, var])


# ----------------------------------------------------------------------- model builders


def residual():
    inputs = keras.Input((6, 6, 2), name="image")
    x = L.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    x = L.ReLU(name="relu1")(L.BatchNormalization(name="bn1")(x))
    y = L.Conv2D(6, 3, padding="same", name="conv2")(x)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.ReLU(name="relu2")(L.Add(name="add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return randomize(keras.Model(inputs, L.Dense(3, name="fc")(x), name="residual"))


def concatenating():
    inputs = keras.Input((6, 6, 2), name="image")
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inputs)
    b = L.Conv2D(5, 1, activation="relu", name="conv_b")(inputs)
    x = L.Concatenate(name="cat")([a, b])
    x = L.Conv2D(3, 3, padding="same", activation="relu", name="conv_c")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return randomize(keras.Model(inputs, L.Dense(2, name="fc")(x), name="concat"))


def depthwise():
    return randomize(keras.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(4, 3, padding="same", name="conv1"),
        L.BatchNormalization(name="bn1"),
        L.ReLU(name="relu1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw"),
        L.BatchNormalization(name="bn_dw"),
        L.ReLU(name="relu_dw"),
        L.Conv2D(3, 1, name="pw"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(2, name="fc"),
    ], name="depthwise"))


def flatten_dense():
    return randomize(keras.Sequential([
        keras.Input((6, 6, 1)),
        L.Conv2D(5, 3, activation="relu", name="conv"),
        L.MaxPooling2D(2, name="pool"),
        L.Flatten(name="flat"),
        L.Dense(7, activation="relu", name="fc1"),
        L.Dense(3, name="fc2"),
    ], name="flatten_dense"))


def probe(model, n=16, seed=1):
    shape = model.inputs[0].shape[1:]
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype("float32")


def group(model, name):
    (found,) = [g for g in channel_groups(model) if g.name == name]
    return found


# ------------------------------------------------------------------------------ groups


def test_groups_follow_residuals_concats_depthwise_and_flatten():
    res = {g.name: g for g in channel_groups(residual())}
    # The Add makes conv1's and conv2's channels one group, through both BNs and ReLUs.
    assert res["conv1"].producers == ["conv1", "conv2"] and res["conv1"].prunable
    assert ("conv2", "in") in res["conv1"].members and ("fc", "in") in res["conv1"].members
    assert {("bn1", "through"), ("bn2", "through"), ("add", "through")} <= set(
        res["conv1"].members)
    assert res["fc"].prunable is False and "model output 'fc'" in res["fc"].reason
    cat = {g.name: g for g in channel_groups(concatenating())}
    assert (cat["conv_a"].channels, cat["conv_b"].channels) == (4, 5)
    assert ("conv_c", "in") in cat["conv_a"].members and ("conv_c", "in") in cat["conv_b"].members
    dw = {g.name: g for g in channel_groups(depthwise())}
    assert dw["conv1"].channels == 4 and ("dw", "in") in dw["conv1"].members
    assert ("pw", "in") in dw["conv1"].members  # through the depthwise, 2 channels each
    fl = {g.name: g for g in channel_groups(flatten_dense())}
    assert ("fc1", "in") in fl["conv"].members and fl["fc1"].channels == 7


def test_groups_of_inputs_outputs_and_unknown_layers_say_why():
    inputs = keras.Input((4, 4, 3), name="image")
    x = L.Conv2D(3, 1, name="conv")(inputs)
    y = L.Add(name="add_input")([x, inputs])  # tied to the model input
    z = L.Conv2D(4, 1, name="conv2")(y)
    z = L.Permute((1, 3, 2), name="permute")(z)  # not followed by the analysis
    model = keras.Model(inputs, L.Flatten(name="flat")(z))
    groups = {g.name: g for g in channel_groups(model)}
    assert not groups["conv"].prunable and "model input 'image'" in groups["conv"].reason
    assert not groups["conv2"].prunable and "'permute' (Permute)" in groups["conv2"].reason


def test_composite_layers_are_grouped_in_their_lowered_form():
    groups = channel_groups(models.resnet20("ghost", input_shape=(8, 8, 1)))
    stem = groups[0]
    # A ghost pair (primary channel + its cheap copy) is one channel: 16 stem channels
    # tied to 8 ghost pairs through the residual Adds.
    assert stem.name == "stem_conv" and stem.channels == 8 and stem.prunable
    assert "stage1_block1_conv2_primary_conv" in stem.producers
    shift = {g.name: g for g in channel_groups(models.resnet20("shift", input_shape=(8, 8, 1)))}
    blocked = [g for g in shift.values() if not g.prunable and "Shift" in (g.reason or "")]
    assert blocked  # Shift assigns offsets by channel position: its input is pinned


# ------------------------------------------------------------- exact removal of zeros


@pytest.mark.parametrize("make, zeroed, removed", [
    # (builder, {producer: (channels, its BN)}, {group: removed channel indices})
    (residual, {"conv1": ([1, 4], "bn1"), "conv2": ([1, 4], "bn2")}, {"conv1": [1, 4]}),
    (concatenating, {"conv_a": ([0], None), "conv_b": ([2, 3], None)},
     {"conv_a": [0], "conv_b": [2, 3]}),
    (depthwise, {"conv1": ([2], "bn1")}, {"conv1": [2]}),
    (flatten_dense, {"conv": ([0, 3], None), "fc1": ([5], None)}, {"conv": [0, 3], "fc1": [5]}),
])
def test_channels_zero_in_every_producer_are_removed_and_nothing_changes(make, zeroed, removed):
    model = make()
    for name, (channels, bn) in zeroed.items():
        zero_channels(model.get_layer(name), channels,
                      None if bn is None else model.get_layer(bn))
    if make is depthwise:  # the depthwise bias (and its BN) must keep channels 4, 5 at zero
        dw, bn = model.get_layer("dw"), model.get_layer("bn_dw")
        kernel, bias = dw.get_weights()
        bias[[4, 5]] = 0.0
        dw.set_weights([kernel, bias])
        gamma, beta, mean, var = bn.get_weights()
        gamma[[4, 5]], beta[[4, 5]] = 0.0, 0.0
        bn.set_weights([gamma, beta, mean, var])
    x = probe(model)
    reference = model.predict(x, verbose=0)
    weights = [w.copy() for w in model.get_weights()]
    pruned = prune_channels(model)  # no sparsity: only the all-zero channels go
    report = {g["name"]: g["removed"] for g in pruned.channel_pruning_report.groups}
    for name, channels in removed.items():
        assert report[name] == channels, name
    assert sum(len(v) for v in report.values()) == sum(len(v) for v in removed.values())
    np.testing.assert_allclose(pruned.predict(x, verbose=0), reference, rtol=1e-5, atol=1e-5)
    assert pruned.count_params() < model.count_params()
    for before, after in zip(weights, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(before, after)


def test_a_channel_zero_in_only_one_producer_of_a_residual_stays():
    model = residual()
    zero_channels(model.get_layer("conv1"), [2], model.get_layer("bn1"))
    pruned = prune_channels(model)
    assert all(not g["removed"] for g in pruned.channel_pruning_report.groups)


def test_removed_slices_are_exactly_the_original_weights():
    """NumPy reference of the surgery: conv_b's channel 1 is input row 4 + 1 = 5 of
    conv_c (concatenation offset); conv1's channel 2 in the depthwise model is
    depthwise channel 2 and pointwise rows 4, 5; the flattened conv channel 3 is
    rows p * 5 + 3 of fc1."""
    cat = concatenating()
    pruned = prune_channels(cat, {"conv_b": 0.2}, criterion="l1")
    (gone,) = [g["removed"] for g in pruned.channel_pruning_report.groups if g["name"] == "conv_b"]
    assert len(gone) == 1
    row = 4 + gone[0]
    np.testing.assert_array_equal(
        pruned.get_layer("conv_c").kernel.numpy(),
        np.delete(cat.get_layer("conv_c").kernel.numpy(), row, axis=2))
    np.testing.assert_array_equal(
        pruned.get_layer("conv_b").kernel.numpy(),
        np.delete(cat.get_layer("conv_b").kernel.numpy(), gone[0], axis=3))

    dw = depthwise()
    pruned = prune_channels(dw, {"conv1": 0.25}, criterion="l1")
    (gone,) = [g["removed"] for g in pruned.channel_pruning_report.groups if g["name"] == "conv1"]
    (c,) = gone
    np.testing.assert_array_equal(pruned.get_layer("dw").kernel.numpy(),
                                  np.delete(dw.get_layer("dw").kernel.numpy(), c, axis=2))
    np.testing.assert_array_equal(
        pruned.get_layer("pw").kernel.numpy(),
        np.delete(dw.get_layer("pw").kernel.numpy(), [2 * c, 2 * c + 1], axis=2))
    np.testing.assert_array_equal(
        pruned.get_layer("bn_dw").gamma.numpy(),
        np.delete(dw.get_layer("bn_dw").gamma.numpy(), [2 * c, 2 * c + 1]))

    fl = flatten_dense()
    pruned = prune_channels(fl, {"conv": 0.2}, criterion="l2")
    (gone,) = [g["removed"] for g in pruned.channel_pruning_report.groups if g["name"] == "conv"]
    (c,) = gone
    rows = [p * 5 + c for p in range(4)]  # 2x2 positions after the pooling
    np.testing.assert_array_equal(pruned.get_layer("fc1").kernel.numpy(),
                                  np.delete(fl.get_layer("fc1").kernel.numpy(), rows, axis=0))


# --------------------------------------------------------------------- criteria twins


def _hand_built(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(x))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return randomize(keras.Model(inputs, L.Dense(3, name="fc")(x)), seed)


def test_norm_fpgm_and_bn_criteria_equal_their_numpy_twins():
    model = _hand_built()
    kernel = model.get_layer("conv").kernel.numpy().astype(np.float64)
    fc = model.get_layer("fc").kernel.numpy().astype(np.float64)
    filters = kernel.reshape(-1, 4).T  # one row per output channel
    l1 = np.abs(filters).sum(1) + np.abs(fc).sum(1)
    l2 = np.sqrt((filters**2).sum(1)) + np.sqrt((fc**2).sum(1))
    fpgm = np.array([sum(np.linalg.norm(filters[c] - filters[j]) for j in range(4))
                     for c in range(4)])
    gamma = np.abs(model.get_layer("bn").gamma.numpy())
    for criterion, expected in (("l1", l1), ("l2", l2), ("fpgm", fpgm), ("bn_scale", gamma)):
        scores = channel_importance(model, criterion)["conv"]
        np.testing.assert_allclose(scores, expected, rtol=1e-6, err_msg=criterion)
    # A group without BatchNormalization has no bn_scale score.
    inputs = keras.Input((5,))
    plain = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(3, name="hidden")(inputs)))
    assert channel_importance(plain, "bn_scale")["hidden"] is None
    a = channel_importance(model, "random", seed=1)["conv"]
    np.testing.assert_array_equal(a, channel_importance(model, "random", seed=1)["conv"])
    assert not np.array_equal(a, channel_importance(model, "random", seed=2)["conv"])


def test_taylor_is_the_squared_first_order_term_from_gradient_tape():
    model = _hand_built()
    rng = np.random.default_rng(3)
    x, y = rand(rng, 40, 6, 6, 2), rng.integers(0, 3, 40)
    names = [("conv", "kernel", 3), ("conv", "bias", 0), ("bn", "gamma", 0),
             ("bn", "beta", 0), ("fc", "kernel", 0)]
    variables = [getattr(model.get_layer(n), a) for n, a, _ in names]
    expected, batches = np.zeros(4), 0
    for start in range(0, 40, 16):  # the criterion's batches of 16
        xb, yb = x[start:start + 16], y[start:start + 16]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                yb, model(xb, training=False), from_logits=True))
        grads = tape.gradient(loss, [v.value for v in variables])
        term = np.zeros(4)
        for (_, _, axis), g, v in zip(names, grads, variables):
            gw = np.moveaxis(np.asarray(g) * v.numpy(), axis, 0).reshape(4, -1)
            term += gw.sum(1)
        expected += term**2
        batches += 1
    scores = channel_importance(model, "taylor", data=(x, y), batch_size=16)["conv"]
    np.testing.assert_allclose(scores, expected / batches, rtol=1e-4)


@pytest.mark.slow
def test_dcp_chooses_the_channel_the_labels_depend_on_first():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rand(rng, 256, 6, 6, 2)
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32")  # only input channel 0 matters
    inputs = keras.Input((6, 6, 2))
    conv = L.Conv2D(4, 1, name="conv")
    h = L.GlobalAveragePooling2D(name="gap")(L.ReLU(name="relu")(conv(inputs)))
    model = keras.Model(inputs, L.Dense(2, name="fc")(h))
    kernel = np.zeros((1, 1, 2, 4), np.float32)
    kernel[0, 0, 0, 2] = 3.0  # channel 2 carries the label's input channel
    kernel[0, 0, 1, [0, 1, 3]] = [0.5, -0.3, 0.2]  # the others carry noise
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    scores = channel_importance(model, "dcp", data=(x, y), dcp_rounds=4)["conv"]
    assert sorted(scores) == [1.0, 2.0, 3.0, 4.0]  # an order of choice
    assert int(np.argmax(scores)) == 2
    # A group inside a stage (not at its end) is switched off at its consumers' inputs.
    inner = L.Conv2D(4, 1, name="inner")
    h = L.GlobalAveragePooling2D()(L.ReLU()(L.Conv2D(3, 1, name="outer")(inner(inputs))))
    deeper = keras.Model(inputs, L.Dense(2, name="head")(h))
    inner.set_weights([kernel, np.zeros(4, np.float32)])
    outer_kernel = np.full((1, 1, 4, 3), 0.1, np.float32)
    deeper.get_layer("outer").set_weights([outer_kernel, np.zeros(3, np.float32)])
    scores = channel_importance(deeper, "dcp", data=(x, y), dcp_rounds=4)["inner"]
    assert sorted(scores) == [1.0, 2.0, 3.0, 4.0] and int(np.argmax(scores)) == 2


# ------------------------------------------------------------------ sparsity and targets


def test_macs_after_pruning_equal_profile_minus_the_removed_share():
    model = randomize(models.small_cnn(input_shape=(8, 8, 1)))
    before = tfcompress.profile(model)
    rows = {r["name"]: r for r in before["layers"]}
    pruned = prune_channels(model, {"conv1": 0.25, "conv3": 0.5})
    # conv1 loses 8 of 32 outputs (its MACs and conv2's inputs shrink by 1/4), conv3
    # 64 of 128 (its MACs and the classifier's inputs halve).
    expected = (before["total"]["macs"]
                - rows["conv1"]["macs"] * 8 / 32 - rows["conv2"]["macs"] * 8 / 32
                - rows["conv3"]["macs"] * 64 / 128 - rows["predictions"]["macs"] * 64 / 128)
    assert tfcompress.profile(pruned)["total"]["macs"] == expected
    assert pruned.channel_pruning_report.macs == (before["total"]["macs"], expected)


def test_targets_keep_the_fraction_of_macs_or_energy():
    model = randomize(models.resnet20(input_shape=(8, 8, 1)))
    full = tfcompress.profile(model)["total"]["macs"]
    pruned = prune_channels(model, target={"macs": 0.5}, criterion="l2", round_to=2)
    macs = tfcompress.profile(pruned)["total"]["macs"]
    assert macs <= 0.5 * full and macs >= 0.4 * full
    for g in pruned.channel_pruning_report.groups:
        if g["prunable"] and g["removed"]:
            assert g["kept"] % 2 == 0, g
    energy = tfcompress.estimate_energy(model)["total"]["total_pj"]
    lean = prune_channels(model, target={"energy": 0.6})
    assert tfcompress.estimate_energy(lean)["total"]["total_pj"] <= 0.6 * energy * 1.001
    x = probe(model, 4)
    assert lean.predict(x, verbose=0).shape == (4, 10)


def test_round_to_and_exclude():
    model = randomize(models.small_cnn(input_shape=(8, 8, 1)))
    pruned = prune_channels(model, 0.3, round_to=8, exclude=("conv2",))
    kept = {g["name"]: g["kept"] for g in pruned.channel_pruning_report.groups}
    assert kept == {"conv1": 24, "conv2": 64, "conv3": 96, "predictions": 10}
    assert pruned.get_layer("conv1").filters == 24


# ----------------------------------------------------------- save, load, int8, training


@pytest.mark.slow
@pytest.mark.parametrize("make", [residual, concatenating, depthwise, flatten_dense])
def test_pruned_models_train_save_load_and_export_int8_within_one_step(make, tmp_path):
    model = make()
    pruned = prune_channels(model, 0.4, criterion="fpgm")
    assert type(pruned).__name__ in ("Functional", "Sequential")
    x = probe(model, 64)
    y = np.random.default_rng(0).integers(0, pruned.outputs[0].shape[-1], 64)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    qat = tfcompress.quantize_model(pruned)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=1, verbose=0)
    report = export.verify(export.to_tflite(qat, x), qat, x)
    assert report["within_1_step"] >= 0.999 and report["max_diff_steps"] <= 1 + 1e-3, report


# ------------------------------------------------------------------- sparsity training


def test_group_lasso_against_numpy_and_with_regularizer():
    rng = np.random.default_rng(0)
    w = rand(rng, 3, 3, 4, 5)
    value = float(GroupLasso(0.01)(keras.ops.convert_to_tensor(w)))
    assert value == pytest.approx(0.01 * np.linalg.norm(w.reshape(-1, 5), axis=0).sum(), rel=1e-5)
    assert GroupLasso.from_config(GroupLasso(0.5, axis=0).get_config()).axis == 0
    model = _hand_built()
    regularized = with_regularizer(model, GroupLasso(0.01))
    expected = 0.01 * (np.linalg.norm(model.get_layer("conv").kernel.numpy().reshape(-1, 4),
                                      axis=0).sum()
                       + np.linalg.norm(model.get_layer("fc").kernel.numpy(), axis=0).sum())
    assert float(sum(regularized.losses)) == pytest.approx(expected, rel=1e-5)
    slim = with_regularizer(model, keras.regularizers.L1(1e-2), target="gamma")
    gamma = model.get_layer("bn").gamma.numpy()
    assert float(sum(slim.losses)) == pytest.approx(1e-2 * np.abs(gamma).sum(), rel=1e-5)
    assert model.losses == []  # the input model has no regularizer
    with pytest.raises(ValueError, match="target='bias'"):
        with_regularizer(model, GroupLasso(), target="bias")
    with pytest.raises(ValueError, match="strength=-1"):
        GroupLasso(-1)


def test_group_lasso_training_shrinks_whole_filters():
    rng = np.random.default_rng(0)
    x = rand(rng, 128, 6, 6, 2)
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32")
    norms = {}
    for strength in (0.0, 0.5):
        keras.utils.set_random_seed(0)
        model = with_regularizer(_hand_built(), GroupLasso(strength))
        model.compile(keras.optimizers.SGD(0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=20, batch_size=32, verbose=0, shuffle=False)
        norms[strength] = np.linalg.norm(
            model.get_layer("conv").kernel.numpy().reshape(-1, 4), axis=0)
    assert norms[0.5].sum() < 0.5 * norms[0.0].sum()


# ------------------------------------------------------------------ sensitivity analysis


def test_sensitivity_analysis_curves_csv_plot_and_targets(tmp_path):
    model = randomize(models.small_cnn(input_shape=(8, 8, 1)))
    rng = np.random.default_rng(0)
    x, y = rand(rng, 64, 8, 8, 1), rng.integers(0, 10, 64)
    reference = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    for granularity in ("channel", "weight"):
        result = tfcompress.sensitivity_analysis(
            model, (x, y), sparsities=(0.0, 0.5, 0.9), granularity=granularity, verbose=0)
        assert result.baseline == pytest.approx(reference)
        for points in result.curves.values():
            assert points[0] == (0.0, pytest.approx(result.baseline))  # sparsity 0: baseline
        targets = result.sparsities_for(1.0)
        assert set(targets) == set(result.curves) and set(targets.values()) == {0.9}
    assert set(result.curves) == {"conv1", "conv2", "conv3", "predictions"}  # weight: layers
    result.to_csv(tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "name,sparsity,metric" and len(lines) == 2 + 4 * 3
    result.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The targets feed the pruning functions as they are.
    pruned = prune_low_magnitude(model, result.sparsities_for(1.0))
    assert len([w for w in pruned.layers if type(w).__name__ == "PruneLowMagnitude"]) == 4
    channel = tfcompress.sensitivity_analysis(model, (x, y), sparsities=(0.5,), verbose=0)
    prune_channels(model, channel.sparsities_for(1.0))


def test_sparsities_for_stops_at_the_first_drop():
    from tfcompress.pruning import SensitivityResult

    result = SensitivityResult("m", "weight", "accuracy", 0.9, {
        "a": [(0.1, 0.9), (0.5, 0.89), (0.9, 0.5)],
        "b": [(0.1, 0.7), (0.5, 0.9)],  # recovers after a drop: not trusted
    })
    assert result.sparsities_for(0.02) == {"a": 0.5, "b": 0.0}


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_clear_errors():
    model = randomize(models.small_cnn(input_shape=(8, 8, 1)))
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ValueError, match="sparsity.*\\[0, 1\\)"):
            prune_channels(model, bad)
    with pytest.raises(ValueError, match="'l1'.*criterion='magnitude'"):
        prune_channels(model, 0.5, criterion="magnitude")
    for criterion in ("taylor", "dcp"):
        with pytest.raises(ValueError, match=f"criterion='{criterion}' needs `data`"):
            prune_channels(model, 0.5, criterion=criterion)
    with pytest.raises(ValueError, match="cannot be reached"):
        prune_channels(model, target={"macs": 0.001})
    with pytest.raises(ValueError, match="target=.*'flops'"):
        prune_channels(model, target={"flops": 0.5})
    with pytest.raises(ValueError, match="No layer named 'conv9'.*conv1"):
        prune_channels(model, {"conv9": 0.5})
    with pytest.raises(ValueError, match="'predictions' cannot be pruned.*model output"):
        prune_channels(model, {"predictions": 0.5})
    with pytest.raises(ValueError, match="not both"):
        prune_channels(model, 0.5, target={"macs": 0.5})
    with pytest.raises(ValueError, match="round_to=0"):
        prune_channels(model, 0.5, round_to=0)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = L.Dense(2)

        def call(self, x):
            return self.fc(x)

    sub = Sub()
    sub(np.ones((1, 3), "float32"))
    for entry in (channel_groups, prune_channels, lambda m: channel_importance(m, "l1")):
        with pytest.raises(ValueError, match="subclassed"):
            entry(sub)
    with pytest.raises(ValueError, match="quantization-aware"):
        prune_channels(tfcompress.quantize_model(model), 0.5)
    with pytest.raises(ValueError, match="granularity='layer'"):
        tfcompress.sensitivity_analysis(model, (probe(model), np.zeros(16)), granularity="layer")
    with pytest.raises(ValueError, match="sparsities"):
        tfcompress.sensitivity_analysis(model, (probe(model), np.zeros(16)), sparsities=(1.5,))


@pytest.mark.slow
def test_every_model_kind_and_compact_layer_prunes():
    x = None
    for model in (models.resnet20("ghost", input_shape=(8, 8, 1)),
                  models.resnet20("adder", input_shape=(8, 8, 1)),
                  models.resnet20("binary", input_shape=(8, 8, 1)),
                  models.ghostnet(width=0.5, input_shape=(32, 32, 3))):
        x = probe(model, 2)
        pruned = prune_channels(randomize(model), target={"macs": 0.7}) if not model.name.endswith(
            "adder") else prune_channels(randomize(model), 0.3)
        assert pruned.predict(x, verbose=0).shape == model.predict(x, verbose=0).shape
        assert pruned.count_params() < model.count_params()
    assert math.isfinite(float(np.sum(x)))
