"""`recalibrate_batchnorm` against a NumPy reference, and `verify`'s accuracies.

Every expected statistic is computed here, independently of the library: the
BatchNorm's input is read off a sub-model `keras.Model(inputs, bn.input)` (or by
calling the composite layer's own sublayers), then reduced with NumPy in float64
over every axis but the channel axis (population variance, E[x^2] - E[x]^2).
"""

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import export
from tfcompress.layers import GhostConv

RTOL = 1e-4
WRONG_MEAN, WRONG_VAR = 5.0, 0.01


def _np_stats(values):
    """Float64 mean and population variance over all axes but the last (channels)."""
    values = np.asarray(values, np.float64)
    axes = tuple(range(values.ndim - 1))
    mean = values.mean(axis=axes)
    return mean, np.square(values).mean(axis=axes) - np.square(mean)


def _input_of(model, layer, x):
    """The inference-mode input of `layer` (a layer of `model` itself) on `x`."""
    return keras.Model(model.inputs, layer.input).predict(x, batch_size=64, verbose=0)


def _spoil(bn):
    """Deliberately wrong moving statistics."""
    bn.moving_mean.assign(np.full(bn.moving_mean.shape, WRONG_MEAN, "float32"))
    bn.moving_variance.assign(np.full(bn.moving_variance.shape, WRONG_VAR, "float32"))


def _assert_stats(bn, mean, var):
    """The layer's moving statistics equal the reference (relative ~1e-4)."""
    scale_m = np.abs(mean).max() + np.sqrt(var).max()
    np.testing.assert_allclose(np.asarray(bn.moving_mean), mean, rtol=RTOL, atol=RTOL * scale_m)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), var, rtol=RTOL,
                               atol=RTOL * var.max())


def _conv_bn_model():
    """Conv2D -> BN -> ReLU -> Conv2D -> BN -> GAP -> Dense on 6x6x2 inputs."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(3, 3, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def _data(rng, n=300, shape=(6, 6, 2)):
    """Inputs far from zero mean / unit variance, so default statistics are wrong too."""
    return (rng.normal(size=(n, *shape)) * 3.0 + 2.0).astype("float32")


def test_stats_equal_numpy_population_stats_of_each_input(rng):
    """Measures each BN's moving_mean / moving_variance after recalibration against
    NumPy's float64 mean / population variance of its inference-mode input over all
    300 examples and 6x6 (resp. 4x4) positions; bn2's input is computed with bn1
    already fixed (and differs from the one computed with bn1's wrong stats). Also
    the returned report (max |mean shift|, max variance ratio), and that the
    normalized inference output has mean 0 and variance var / (var + eps)."""
    model = _conv_bn_model()
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    for bn in (bn1, bn2):
        _spoil(bn)
    x = _data(rng)
    stale_mean2, _ = _np_stats(_input_of(model, bn2, x))  # bn2's input with bn1 wrong
    others = {w.path: np.asarray(w) for w in model.weights
              if "moving" not in w.path}

    report = tfcompress.recalibrate_batchnorm(model, x, batch_size=64)

    mean1, var1 = _np_stats(_input_of(model, bn1, x))
    x2 = _input_of(model, bn2, x)
    mean2, var2 = _np_stats(x2)
    assert np.abs(mean2 - stale_mean2).max() > 0.1, "bn1's fix must change bn2's input"
    _assert_stats(bn1, mean1, var1)
    _assert_stats(bn2, mean2, var2)

    assert set(report) == {"bn1", "bn2"}
    for name, mean, var in (("bn1", mean1, var1), ("bn2", mean2, var2)):
        assert report[name]["mean_shift"] == pytest.approx(np.abs(mean - WRONG_MEAN).max(),
                                                           rel=RTOL)
        assert report[name]["variance_ratio"] == pytest.approx((var / WRONG_VAR).max(),
                                                               rel=RTOL)

    # In inference mode the normalized output is centred, with variance var/(var+eps).
    normalized = (np.asarray(x2, np.float64) - np.asarray(bn2.moving_mean)) / np.sqrt(
        np.asarray(bn2.moving_variance, np.float64) + bn2.epsilon)
    n_mean, n_var = _np_stats(normalized)
    np.testing.assert_allclose(n_mean, 0.0, atol=1e-4)
    np.testing.assert_allclose(n_var, var2 / (var2 + bn2.epsilon), rtol=1e-4)
    # The layer's own inference output (gamma=1, beta=0) is that normalized output.
    out_mean, out_var = _np_stats(
        keras.Model(model.inputs, bn1.output).predict(x, verbose=0))
    np.testing.assert_allclose(out_mean, 0.0, atol=1e-4)
    np.testing.assert_allclose(out_var, var1 / (var1 + bn1.epsilon), rtol=1e-4)

    # Nothing but the moving statistics changed.
    for w in model.weights:
        if "moving" not in w.path:
            np.testing.assert_array_equal(np.asarray(w), others[w.path])


def test_batches_limits_the_examples_used(rng):
    """Measures the stats after `batches=1, batch_size=32` against NumPy over x[:32]
    only (which differ from those over all 300 examples)."""
    model = _conv_bn_model()
    x = _data(rng)
    x[32:] += 4.0  # the rest of the data has another mean: using it would show
    tfcompress.recalibrate_batchnorm(model, x, batches=1, batch_size=32)
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        mean, var = _np_stats(_input_of(model, bn, x[:32]))
        _assert_stats(bn, mean, var)
        full_mean, _ = _np_stats(_input_of(model, bn, x))
        assert np.abs(full_mean - mean).max() > 0.1


def test_sequential_model(rng):
    """Measures a Sequential model's BN stats against NumPy over its input."""
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    bn = model.get_layer("bn")
    _spoil(bn)
    x = _data(rng, n=200)
    report = tfcompress.recalibrate_batchnorm(model, x, batch_size=50)
    assert len(report) == 1
    conv_out = model.get_layer("conv")(x)  # independent of the Sequential graph
    _assert_stats(bn, *_np_stats(conv_out))


def test_nested_functional_submodel(rng):
    """Measures the stats of a BN inside a nested functional model (after an outer
    BN) against NumPy over its input, computed through both models' graphs."""
    inner_in = keras.Input((6, 6, 4))
    inner_bn = keras.layers.BatchNormalization(name="inner_bn")
    inner = keras.Model(
        inner_in, inner_bn(keras.layers.Conv2D(3, 1, name="inner_conv")(inner_in)),
        name="inner")
    inputs = keras.Input((6, 6, 2))
    outer_bn = keras.layers.BatchNormalization(name="outer_bn")
    h = keras.layers.ReLU()(outer_bn(keras.layers.Conv2D(4, 3, padding="same")(inputs)))
    y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inner(h)))
    model = keras.Model(inputs, y)
    for bn in (inner_bn, outer_bn):
        _spoil(bn)
    x = _data(rng, n=200)

    report = tfcompress.recalibrate_batchnorm(model, x, batch_size=64)

    assert len(report) == 2
    _assert_stats(outer_bn, *_np_stats(_input_of(model, outer_bn, x)))
    h_np = keras.Model(model.inputs, h).predict(x, verbose=0)  # the inner model's input
    inner_x = keras.Model(inner.inputs, inner_bn.input).predict(h_np, verbose=0)
    _assert_stats(inner_bn, *_np_stats(inner_x))


def test_xy_tuple_data(rng):
    """Measures the stats with `(x, y)` as data (y ignored) against NumPy over x."""
    model = _conv_bn_model()
    x = _data(rng, n=200)
    y = rng.integers(0, 2, size=200)
    report = tfcompress.recalibrate_batchnorm(model, (x, y))
    assert set(report) == {"bn1", "bn2"}
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        _assert_stats(bn, *_np_stats(_input_of(model, bn, x)))


def test_multi_input_model_with_list_data(rng):
    """Measures the stats of a BN on concatenated inputs (reference: NumPy over the
    concatenated arrays themselves) and of a BN after a conv, with list data."""
    a, b = keras.Input((6, 6, 2), name="a"), keras.Input((6, 6, 3), name="b")
    bn_cat = keras.layers.BatchNormalization(name="bn_cat")
    bn_conv = keras.layers.BatchNormalization(name="bn_conv")
    h = bn_cat(keras.layers.Concatenate()([a, b]))
    h = bn_conv(keras.layers.Conv2D(4, 3)(h))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    for bn in (bn_cat, bn_conv):
        _spoil(bn)
    xa, xb = _data(rng, n=150), _data(rng, n=150, shape=(6, 6, 3)) - 7.0

    tfcompress.recalibrate_batchnorm(model, [xa, xb], batch_size=40)

    _assert_stats(bn_cat, *_np_stats(np.concatenate([xa, xb], axis=-1)))
    conv_in = keras.Model(model.inputs, bn_conv.input).predict([xa, xb], verbose=0)
    _assert_stats(bn_conv, *_np_stats(conv_in))


def _ghost_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = GhostConv(8, kernel_size=3, name="ghost")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_ghostconv_sublayer_bns(rng):
    """Measures GhostConv's `primary_bn` stats against NumPy over `primary_conv`
    applied to the GhostConv's input, and `cheap_bn`'s over `cheap_conv` of the
    ReLU of the (recalibrated) primary_bn's inference output."""
    model = _ghost_model()
    ghost = model.get_layer("ghost")
    for bn in (ghost.primary_bn, ghost.cheap_bn):
        _spoil(bn)
    x = _data(rng, n=200)

    report = tfcompress.recalibrate_batchnorm(model, x, batch_size=64)

    assert len(report) == 2
    x_in = _input_of(model, ghost, x)
    primary = np.asarray(ghost.primary_conv(x_in))
    mean, var = _np_stats(primary)
    assert np.abs(mean - WRONG_MEAN).max() > 0.1
    _assert_stats(ghost.primary_bn, mean, var)
    ghost_in = keras.ops.relu(ghost.primary_bn(primary, training=False))
    _assert_stats(ghost.cheap_bn, *_np_stats(ghost.cheap_conv(ghost_in)))


def test_bad_arguments_raise(rng):
    """Checks the ValueErrors: non-positive batch_size / batches (the message names
    the value), a subclassed model (named), data with no examples."""
    model = _conv_bn_model()
    x = _data(rng, n=20)
    with pytest.raises(ValueError, match="batch_size=0"):
        tfcompress.recalibrate_batchnorm(model, x, batch_size=0)
    with pytest.raises(ValueError, match="batches=-1"):
        tfcompress.recalibrate_batchnorm(model, x, batches=-1)
    with pytest.raises(ValueError, match="batch_size=True"):
        tfcompress.recalibrate_batchnorm(model, x, batch_size=True)

    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.bn = keras.layers.BatchNormalization()

        def call(self, inputs, training=None):
            return self.bn(inputs, training=training)

    net = Net(name="my_subclassed_net")
    net(x)
    with pytest.raises(ValueError, match="my_subclassed_net.*subclassed"):
        tfcompress.recalibrate_batchnorm(net, x)
    with pytest.raises(ValueError, match="no examples"):
        tfcompress.recalibrate_batchnorm(model, x[:0])


def test_recalibrated_stats_survive_save_and_load(rng, tmp_path):
    """Measures the moving stats (plain BN and GhostConv's sublayer BNs) of a
    reloaded `.keras` file against the recalibrated model's."""
    inputs = keras.Input((6, 6, 2))
    x = GhostConv(8, kernel_size=3, name="ghost")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    ghost = model.get_layer("ghost")
    bns = [ghost.primary_bn, ghost.cheap_bn, model.get_layer("bn")]
    for bn in bns:
        _spoil(bn)
    data = _data(rng, n=100)
    tfcompress.recalibrate_batchnorm(model, data)
    for bn in bns:
        assert np.abs(np.asarray(bn.moving_mean) - WRONG_MEAN).max() > 0.1

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    lghost = loaded.get_layer("ghost")
    for bn, lbn in zip(bns, [lghost.primary_bn, lghost.cheap_bn, loaded.get_layer("bn")]):
        np.testing.assert_array_equal(np.asarray(lbn.moving_mean), np.asarray(bn.moving_mean))
        np.testing.assert_array_equal(np.asarray(lbn.moving_variance),
                                      np.asarray(bn.moving_variance))
    np.testing.assert_allclose(loaded.predict(data, verbose=0), model.predict(data, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_model_without_batchnorm_is_untouched(rng):
    """Checks that a model without BatchNormalization gives {} and keeps every weight."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    before = [np.array(w) for w in model.get_weights()]
    assert tfcompress.recalibrate_batchnorm(model, _data(rng, n=50)) == {}
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_verify_accuracies_match_numpy_argmax(rng):
    """Measures `verify(..., labels=y)`'s keras_accuracy / tflite_accuracy against
    NumPy argmax accuracy of `model.predict(x)` and of `run_tflite(...)[0]` for a
    float32 export (random labels: accuracy strictly between 0 and 1); wrong-length
    labels raise ValueError."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(5, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, x)
    data = _data(rng, n=120)
    labels = rng.integers(0, 5, size=120)
    tflite = export.to_tflite(model, mode="float32")

    report = export.verify(tflite, model, data, labels=labels)

    keras_acc = np.mean(model.predict(data, verbose=0).argmax(-1) == labels)
    lite_acc = np.mean(export.run_tflite(tflite, data)[0].argmax(-1) == labels)
    assert 0.0 < keras_acc < 1.0
    assert report["keras_accuracy"] == pytest.approx(keras_acc, abs=1e-12)
    assert report["tflite_accuracy"] == pytest.approx(lite_acc, abs=1e-12)
    assert report["examples"] == 120
    with pytest.raises(ValueError, match="119 entries for 120 examples"):
        export.verify(tflite, model, data, labels=labels[:-1])


@pytest.mark.slow
def test_recalibration_recovers_a_channel_pruned_model():
    """small_cnn on the digits pruned to half its MACs: the pruned model's BatchNorms still
    hold the unpruned statistics. Measured (seed 0, no fine-tuning): l1 68.9% -> 93.3%,
    fpgm 72.2% -> 92.8%, bn_scale 58.9% -> 90.8% test accuracy."""
    from tfcompress import datasets, models, pruning

    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = datasets.load("digits")
    model = models.small_cnn(input_shape=(8, 8, 1), num_classes=10)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10, verbose=0)
    for criterion in ("l1", "fpgm", "bn_scale"):
        pruned = pruning.prune_channels(model, target={"macs": 0.5}, criterion=criterion)
        pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        before = pruned.evaluate(xt, yt, verbose=0)[1]
        tfcompress.recalibrate_batchnorm(pruned, x)
        after = pruned.evaluate(xt, yt, verbose=0)[1]
        assert after > 0.85 and after > before + 0.1, (criterion, before, after)


def test_mode_accuracies_measures_without_changing_the_model(rng):
    keras.utils.set_random_seed(0)
    model = tfcompress.models.small_cnn(input_shape=(8, 8, 1))
    x = rng.random((300, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 300)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    state = [np.array(v) for v in model.weights]
    result = tfcompress.recalibration.mode_accuracies(model, x, y, batch_size=100)
    for before, variable in zip(state, model.weights):  # moving statistics included
        np.testing.assert_array_equal(before, np.asarray(variable))
    inference = np.asarray(twin(x, training=False)).argmax(-1)
    training = np.concatenate([np.asarray(twin(x[i:i + 100], training=True)).argmax(-1)
                               for i in range(0, 300, 100)])
    assert result == {"inference": float(np.mean(inference == y)),
                      "training": float(np.mean(training == y))}
