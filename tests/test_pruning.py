"""Magnitude pruning (Han et al. 2015; Deep Compression sec. 2): schedules, masks,
training with fit and custom loops, save/load, strip, N:M, int8 export."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import datasets, export, models
from tfcompress import layers as tl
from tfcompress.pruning import (
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    Pruner,
    PruningSchedule,
    PruningSummaries,
    UpdatePruningStep,
    get_pruning_masks,
    m_by_n_mask,
    magnitude_mask,
    prune_low_magnitude,
    sparsity_report,
    strip_pruning,
)

BATCH = 64

# --------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------


def zhu_gupta(t, s_i, s_f, t0, t_end, power):
    """arXiv:1710.01878 eq. 1, t clamped to [t0, t_end], in float64 NumPy."""
    p = np.clip((np.float64(t) - t0) / (t_end - t0), 0.0, 1.0)
    return float(s_f + (s_i - s_f) * (1.0 - p) ** power)


def reference_m_by_n(w, m, n):
    """Loops over every output position and every run of n input channels (axis -2)."""
    w = np.asarray(w)
    mask = np.zeros_like(w)
    cin = w.shape[-2]
    for lead in np.ndindex(*w.shape[:-2]):
        for out in range(w.shape[-1]):
            for start in range(0, cin, n):
                group = [abs(w[lead + (start + j, out)]) for j in range(n)]
                keep = sorted(range(n), key=lambda j: (-group[j], j))[: n - m]
                for j in keep:
                    mask[lead + (start + j, out)] = 1
    return mask


def kernels_of(model):
    """{wrapped layer name: (raw kernel, mask)} of every PruneLowMagnitude."""
    return {
        w.layer.name: (w.layer.kernel.numpy(), w.pruning_masks[0].numpy())
        for w in model.layers if isinstance(w, PruneLowMagnitude)
    }


def compile_adam(model, lr=1e-3):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


def test_constant_sparsity_prunes_on_turns_and_at_the_end():
    schedule = ConstantSparsity(0.7, begin_step=5, end_step=47, frequency=10)
    due = [t for t in range(80) if schedule(t)[0]]
    assert due == [5, 15, 25, 35, 45, 47]
    assert {schedule(t)[1] for t in range(80)} == {0.7}  # tfmot: always the target
    for t in range(80):
        assert schedule.sparsity_at(t) == (0.0 if t < 5 else 0.7)
    forever = ConstantSparsity(0.5, begin_step=0, frequency=100)
    assert [t for t in range(1001) if forever(t)[0]] == list(range(0, 1001, 100))
    assert forever(np.int64(300)) == (True, 0.5)
    assert forever(tf.constant(300, tf.int64)) == (True, 0.5)


def test_polynomial_decay_is_zhu_gupta_eq_1():
    s_i, s_f, t0, t_end, power = 0.1, 0.85, 10, 110, 3
    schedule = PolynomialDecay(s_i, s_f, t0, t_end, power=power, frequency=7)
    due = [t for t in range(200) if schedule(t)[0]]
    assert due == list(range(10, 110, 7)) + [110]
    for t in range(200):
        _, sparsity = schedule(t)
        assert sparsity == pytest.approx(zhu_gupta(t, s_i, s_f, t0, t_end, power), abs=1e-12)
        last = max([d for d in due if d <= t], default=None)
        expected = 0.0 if last is None else zhu_gupta(last, s_i, s_f, t0, t_end, power)
        assert schedule.sparsity_at(t) == pytest.approx(expected, abs=1e-12)
    # Hand-computed points: halfway, 0.85 - 0.75 * 0.5**3; the end and beyond: s_f.
    assert schedule(60)[1] == pytest.approx(0.85 - 0.75 * 0.125)
    assert schedule.sparsity_at(109) == pytest.approx(0.85 - 0.75 * (1 - 98 / 100) ** 3)
    assert schedule.sparsity_at(10_000) == pytest.approx(0.85)
    assert PolynomialDecay(0.0, 0.9, 0, 100, power=1, frequency=1)(25)[1] == pytest.approx(0.225)


def test_schedule_config_round_trips():
    for schedule in (
        ConstantSparsity(0.3, begin_step=4, end_step=90, frequency=3),
        PolynomialDecay(0.2, 0.9, begin_step=1, end_step=50, power=2.5, frequency=5),
    ):
        config = schedule.get_config()
        again = type(schedule).from_config(config)
        assert again.get_config() == config and again == schedule
        assert [again(t) for t in range(100)] == [schedule(t) for t in range(100)]
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(schedule))
        assert restored == schedule and isinstance(restored, PruningSchedule)
    assert ConstantSparsity(0.3, 4, 90, 3).get_config() == {
        "target_sparsity": 0.3, "begin_step": 4, "end_step": 90, "frequency": 3}


@pytest.mark.parametrize("make, match", [
    (lambda: ConstantSparsity(1.0), r"target_sparsity.*\[0, 1\).*target_sparsity=1\.0"),
    (lambda: ConstantSparsity(-0.1), r"target_sparsity=-0\.1"),
    (lambda: ConstantSparsity(True), r"target_sparsity=True"),
    (lambda: ConstantSparsity(float("nan")), r"target_sparsity=nan"),
    (lambda: ConstantSparsity(0.5, begin_step=-1), r"begin_step=-1"),
    (lambda: ConstantSparsity(0.5, begin_step=10, end_step=10), r"end_step=10"),
    (lambda: ConstantSparsity(0.5, frequency=0), r"frequency=0"),
    (lambda: ConstantSparsity(0.5, frequency=2.0), r"frequency=2\.0"),
    (lambda: PolynomialDecay(0.0, 1.2, 0, 10), r"final_sparsity=1\.2"),
    (lambda: PolynomialDecay(-0.1, 0.5, 0, 10), r"initial_sparsity=-0\.1"),
    (lambda: PolynomialDecay(0.0, 0.5, 0, -1), r"end_step=-1"),
    (lambda: PolynomialDecay(0.0, 0.5, 5, 3), r"end_step=3"),
    (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=0), r"power=0"),
    (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=True), r"power=True"),
    (lambda: PolynomialDecay(0.0, 0.5, True, 10), r"begin_step=True"),
])
def test_schedule_arguments_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def test_magnitude_mask_zeroes_exactly_the_smallest(rng):
    w = rng.normal(size=(37, 23)).astype(np.float32)
    order = np.argsort(np.abs(w).ravel())  # continuous values: no ties
    for sparsity in (0.0, 0.1, 0.37, 0.5, 0.9, 0.999):
        mask = magnitude_mask(w, sparsity)
        k = min(round(sparsity * w.size), w.size - 1)
        assert mask.shape == w.shape and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert int(np.sum(mask == 0)) == k
        np.testing.assert_array_equal(np.flatnonzero(mask.ravel() == 0), np.sort(order[:k]))
    # At least one weight survives; ties keep the lower index.
    assert magnitude_mask(np.array([0.1, 0.2, 0.3]), 0.9).tolist() == [0.0, 0.0, 1.0]
    assert magnitude_mask(np.ones(4), 0.5).tolist() == [1.0, 1.0, 0.0, 0.0]
    # Existing zeros are the first to go (a rising sparsity never revives them).
    assert magnitude_mask(np.array([0.0, -3.0, 0.5, 0.0, 2.0]), 0.4).tolist() == [0, 1, 1, 0, 1]
    with pytest.raises(ValueError, match=r"sparsity=1\.0"):
        magnitude_mask(w, 1.0)


@pytest.mark.parametrize("shape", [(16, 5), (3, 3, 8, 4), (2, 24, 3)])
@pytest.mark.parametrize("m, n", [(2, 4), (1, 4), (3, 8)])
def test_m_by_n_mask_keeps_the_largest_in_every_input_channel_group(rng, shape, m, n):
    w = rng.normal(size=shape).astype(np.float32)
    mask = m_by_n_mask(w, m, n)
    np.testing.assert_array_equal(mask, reference_m_by_n(w, m, n))
    groups = np.moveaxis(mask, -2, -1).reshape(-1, n)
    np.testing.assert_array_equal(np.sum(groups == 0, axis=1), m)


def test_m_by_n_mask_rejects_what_it_cannot_group():
    with pytest.raises(ValueError, match=r"shape \(6, 5\)"):
        m_by_n_mask(np.ones((6, 5)), 2, 4)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        m_by_n_mask(np.ones(8), 2, 4)
    for bad in ((4, 2), (0, 4), (2, 2)):
        with pytest.raises(ValueError, match=r"0 < m < n"):
            m_by_n_mask(np.ones((8, 2)), *bad)


# --------------------------------------------------------------------------------------
# Training with fit
# --------------------------------------------------------------------------------------


class MaskedWeightsProbe(keras.callbacks.Callback):
    """After every batch (after the optimizer step, before the epoch-end re-masking):
    the largest |raw weight| where the mask is 0."""

    def __init__(self):
        super().__init__()
        self.worst = []

    def on_train_batch_end(self, batch, logs=None):
        self.worst.append(max(
            float(np.max(np.abs(k[m == 0]), initial=0.0))
            for k, m in kernels_of(self.model).values()
        ))


@pytest.fixture(scope="module")
def lenet_pruned(digits):
    """LeNet-300-100 trained dense, then pruned 0 -> 90% over 3 epochs (Zhu-Gupta, every
    4 steps) and retrained 3 more epochs at 90%, with Adam."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = models.lenet_300_100(input_shape=(8, 8, 1))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=BATCH, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    steps = int(np.ceil(len(x) / BATCH))
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=3 * steps - 1, frequency=4)
    pruned = prune_low_magnitude(model, schedule)
    compile_adam(pruned)
    probe = MaskedWeightsProbe()
    pruned.fit(x, y, epochs=6, batch_size=BATCH, verbose=0,
               callbacks=[UpdatePruningStep(), probe])
    return model, before, pruned, probe, 6 * steps


@pytest.mark.slow
def test_lenet_pruned_to_90_percent_exactly_and_keeps_accuracy(digits, lenet_pruned):
    (_, _), (xt, yt) = digits
    model, before, pruned, probe, total_steps = lenet_pruned
    for now, then in zip(model.get_weights(), before):  # the original is untouched
        np.testing.assert_array_equal(now, then)
    assert [layer.name for layer in pruned.layers] == [
        "input", "flatten", "prune_low_magnitude_fc1", "prune_low_magnitude_fc2",
        "prune_low_magnitude_predictions"]
    for wrapper in pruned.layers[2:]:
        assert int(wrapper.pruning_step.numpy()) == total_steps - 1
    for name, (kernel, mask) in kernels_of(pruned).items():
        # Exactly round(0.9 * N) zeros, the raw kernel zero wherever the mask is.
        assert int(np.sum(mask == 0)) == round(0.9 * kernel.size), name
        assert int(np.sum(kernel == 0)) == round(0.9 * kernel.size), name
        np.testing.assert_array_equal(kernel[mask == 0], 0.0)
        # The kept weights are the largest: each kept |w| >= every pruned |w| (= 0).
        assert np.all(kernel[mask == 1] != 0)
    # After every single Adam step (momentum!), masked weights were exactly zero.
    assert len(probe.worst) == total_steps and max(probe.worst) == 0.0
    dense_acc = model.evaluate(xt, yt, verbose=0)[1]
    pruned_acc = pruned.evaluate(xt, yt, verbose=0)[1]
    # Measured (seed 0): dense 0.967, 90% pruned 0.958; seeds 1-2: 0.94-0.95.
    assert dense_acc > 0.94
    assert pruned_acc > 0.92, (dense_acc, pruned_acc)
    report = sparsity_report(pruned)
    assert [(r["layer"], r["shape"], r["size"]) for r in report] == [
        ("fc1", (64, 300), 19200), ("fc2", (300, 100), 30000), ("predictions", (100, 10), 1000)]
    assert [r["zeros"] for r in report] == [17280, 27000, 900]
    assert [r["sparsity"] for r in report] == pytest.approx([0.9, 0.9, 0.9])
    assert Pruner(pruned).sparsity() == pytest.approx(
        {"fc1/kernel": 0.9, "fc2/kernel": 0.9, "predictions/kernel": 0.9})


def test_strip_pruning_gives_the_same_model_without_wrappers(digits, lenet_pruned):
    (_, _), (xt, _) = digits
    pruned = lenet_pruned[2]
    masks_before = get_pruning_masks(pruned)
    stripped = strip_pruning(pruned)
    assert [layer.name for layer in stripped.layers] == ["input", "flatten", "fc1", "fc2",
                                                          "predictions"]
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped.layers)
    assert all(type(stripped.get_layer(n)) is keras.layers.Dense
               for n in ("fc1", "fc2", "predictions"))
    assert all(v.constraint is None for v in stripped.weights)
    np.testing.assert_allclose(stripped.predict(xt, verbose=0), pruned.predict(xt, verbose=0),
                               atol=1e-6)
    for name, (kernel, mask) in kernels_of(pruned).items():
        np.testing.assert_array_equal(stripped.get_layer(name).kernel.numpy(), kernel * mask)
        np.testing.assert_array_equal(mask, masks_before[f"{name}/kernel"])
    assert [r["zeros"] for r in sparsity_report(stripped)] == [17280, 27000, 900]
    # The pruned model is unchanged and still a pruned model.
    assert isinstance(pruned.layers[2], PruneLowMagnitude)


@pytest.mark.slow
def test_stripped_pruned_model_exports_int8(digits, lenet_pruned):
    (x, _), (xt, _) = digits
    stripped = strip_pruning(lenet_pruned[2])
    tflite = export.to_tflite(stripped, representative_data=x[:256])
    export.check_integer_only(tflite, stripped)
    report = export.verify(tflite, stripped, xt)
    assert report["argmax_agreement"] >= 0.99, report


def test_intermediate_sparsity_follows_the_schedule(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(1)
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=60, frequency=5)
    pruned = prune_low_magnitude(models.lenet_300_100(input_shape=(8, 8, 1)), schedule)
    compile_adam(pruned)
    pruned.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[UpdatePruningStep()])
    last_step = int(np.ceil(len(x) / BATCH)) - 1  # 22
    target = zhu_gupta(20, 0.0, 0.8, 0, 60, 3)  # the last update: step 20
    assert schedule.sparsity_at(last_step) == pytest.approx(target)
    assert Pruner(pruned).targets() == pytest.approx(
        {"fc1": target, "fc2": target, "predictions": target})
    for row in sparsity_report(pruned):
        assert abs(row["zeros"] - round(target * row["size"])) <= 1, row
        assert row["zeros"] == round(target * row["size"])


def test_dict_schedule_prunes_only_the_named_layers(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = models.lenet_300_100(input_shape=(8, 8, 1))
    pruned = prune_low_magnitude(model, {
        "fc1": ConstantSparsity(0.5, begin_step=0, frequency=1),
        "predictions": PolynomialDecay(0.1, 0.3, begin_step=2, end_step=8, frequency=3),
    })
    assert [layer.name for layer in pruned.layers] == [
        "input", "flatten", "prune_low_magnitude_fc1", "fc2", "prune_low_magnitude_predictions"]
    assert type(pruned.get_layer("fc2")) is keras.layers.Dense
    compile_adam(pruned)
    pruned.fit(x[:640], y[:640], epochs=1, batch_size=BATCH, verbose=0,
               callbacks=[UpdatePruningStep()])
    report = {r["layer"]: r["zeros"] for r in sparsity_report(pruned)}
    assert report == {"fc1": 9600, "fc2": 0, "predictions": 300}


def test_mask_constraint_is_what_keeps_zeros_under_adam(rng):
    """Control: masked weights get exactly zero gradient, yet Adam's momentum moves them;
    the mask constraint puts them back to zero after every step."""
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.normal(size=(64, 3)).astype(np.float32)

    def train(keep_constraint):
        keras.utils.set_random_seed(0)
        wrapper = PruneLowMagnitude(keras.layers.Dense(3), ConstantSparsity(0.5, 1, 2, 1))
        model = keras.Sequential([keras.Input((6,)), wrapper])
        optimizer = keras.optimizers.Adam(0.05)
        pruner = Pruner(model)
        if not keep_constraint:
            wrapper.layer.kernel.constraint = None
        for step in range(6):
            pruner.step()  # masks at steps 1 and 2: Adam has momentum by then
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            mask = wrapper.pruning_masks[0].numpy()
            if step >= 1:
                assert int(np.sum(mask == 0)) == 9
                np.testing.assert_array_equal(grads[0].numpy()[mask == 0], 0.0)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return np.max(np.abs(wrapper.layer.kernel.numpy()[mask == 0]))

    assert train(keep_constraint=True) == 0.0
    assert train(keep_constraint=False) > 1e-3


# --------------------------------------------------------------------------------------
# Custom loops, save/load, config
# --------------------------------------------------------------------------------------


def test_pruner_in_a_custom_training_loop(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    pruned = prune_low_magnitude(models.lenet_300_100(input_shape=(8, 8, 1)),
                                 ConstantSparsity(0.6, begin_step=2, end_step=9, frequency=3))
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    pruner = Pruner(pruned)
    updated_at = []
    for step in range(12):
        xb, yb = x[step * 32:(step + 1) * 32], y[step * 32:(step + 1) * 32]
        if pruner.step():
            updated_at.append(step)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, pruned(xb, training=True))
        grads = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        for kernel, mask in kernels_of(pruned).values():
            np.testing.assert_array_equal(kernel[mask == 0], 0.0)
    assert updated_at == [2, 5, 8, 9]
    assert [int(w.pruning_step.numpy()) for w in pruner.wrappers] == [11, 11, 11]
    assert pruner.sparsity() == {
        "fc1/kernel": round(0.6 * 19200) / 19200, "fc2/kernel": round(0.6 * 30000) / 30000,
        "predictions/kernel": round(0.6 * 1000) / 1000}


@pytest.mark.slow
def test_keras_file_round_trip_mid_schedule_resumes(tmp_path, digits):
    (x, y), (xt, _) = digits
    keras.utils.set_random_seed(0)
    steps = int(np.ceil(len(x) / BATCH))  # 23
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=2 * steps - 1, frequency=5)
    pruned = prune_low_magnitude(models.lenet_300_100(input_shape=(8, 8, 1)), schedule)
    compile_adam(pruned)
    pruned.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[UpdatePruningStep()])
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects needed
    wrappers = [layer for layer in loaded.layers if isinstance(layer, PruneLowMagnitude)]
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [steps - 1] * 3
    assert wrappers[0].pruning_schedule == schedule
    for key, mask in get_pruning_masks(pruned).items():
        np.testing.assert_array_equal(get_pruning_masks(loaded)[key], mask)
    np.testing.assert_array_equal(loaded.predict(xt, verbose=0), pruned.predict(xt, verbose=0))
    mid = sparsity_report(loaded)
    assert [r["zeros"] for r in mid] == [
        round(schedule.sparsity_at(steps - 1) * r["size"]) for r in mid]
    # Training resumes from the saved step (compiled state included) to the final target.
    probe = MaskedWeightsProbe()  # the mask constraint is back on the loaded kernels
    loaded.fit(x, y, epochs=1, batch_size=BATCH, verbose=0,
               callbacks=[UpdatePruningStep(), probe])
    assert len(probe.worst) == steps and max(probe.worst) == 0.0
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [2 * steps - 1] * 3
    assert [r["zeros"] for r in sparsity_report(loaded)] == [15360, 24000, 800]
    for kernel, mask in kernels_of(loaded).values():
        np.testing.assert_array_equal(kernel[mask == 0], 0.0)


def test_wrapper_config_round_trip_and_layer_api(rng):
    dense = keras.layers.Dense(6, name="d")
    wrapper = prune_low_magnitude(dense, PolynomialDecay(0.0, 0.5, 0, 10, frequency=2),
                                  sparsity_m_by_n=[2, 4])
    assert isinstance(wrapper, PruneLowMagnitude) and wrapper.name == "prune_low_magnitude_d"
    config = wrapper.get_config()
    assert config["sparsity_m_by_n"] == [2, 4]
    assert config["pruning_schedule"]["config"] == wrapper.pruning_schedule.get_config()
    again = PruneLowMagnitude.from_config(config)
    assert "layer" in config  # not consumed
    assert again.pruning_schedule == wrapper.pruning_schedule
    assert again.sparsity_m_by_n == (2, 4) and again.layer.units == 6
    # Layer API: masks update on demand; current_sparsity reads W * mask.
    layer = PruneLowMagnitude(keras.layers.Dense(5), ConstantSparsity(0.75, 0, frequency=1))
    x = rng.normal(size=(3, 8)).astype(np.float32)
    y_dense = layer(x).numpy()
    np.testing.assert_allclose(y_dense, x @ layer.layer.kernel.numpy(), atol=1e-5)
    raw = layer.layer.kernel.numpy()
    layer.pruning_step.assign(0)
    assert layer.update_masks() == 0.75
    assert layer.current_sparsity() == [0.75]
    np.testing.assert_array_equal(layer.pruning_masks[0].numpy(), magnitude_mask(raw, 0.75))
    np.testing.assert_allclose(layer(x).numpy(), x @ (raw * magnitude_mask(raw, 0.75)),
                               atol=1e-5)


def test_sequential_conv_model_prunes_and_strips(rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(4, name="out"),
    ])
    x = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    y = rng.normal(size=(32, 4)).astype(np.float32)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.6, 0, frequency=2))
    assert isinstance(pruned, keras.Sequential)
    assert [type(layer).__name__ for layer in pruned.layers] == [
        "PruneLowMagnitude", "BatchNormalization", "MaxPooling2D", "Flatten",
        "PruneLowMagnitude"]
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    stripped = strip_pruning(pruned)
    assert isinstance(stripped, keras.Sequential)
    assert [layer.name for layer in stripped.layers] == ["conv", "bn", "pool", "flat", "out"]
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-5)
    # The BN statistics trained (they are not the initial 0 / 1) and were copied.
    moving_mean = stripped.get_layer("bn").moving_mean.numpy()
    assert np.max(np.abs(moving_mean)) > 1e-3
    np.testing.assert_array_equal(moving_mean, pruned.get_layer("bn").moving_mean.numpy())
    assert [r["zeros"] for r in sparsity_report(stripped)] == [
        round(0.6 * 162), round(0.6 * 216)]


LAYER_CASES = {
    "conv1d": (lambda: keras.layers.Conv1D(4, 3, name="l"), (10, 3)),
    "conv2d": (lambda: keras.layers.Conv2D(4, 3, name="l"), (6, 6, 3)),
    "conv3d": (lambda: keras.layers.Conv3D(2, 2, name="l"), (4, 4, 4, 2)),
    "depthwise": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="l"),
                  (6, 6, 3)),
    "separable": (lambda: keras.layers.SeparableConv2D(4, 3, name="l"), (6, 6, 3)),
    "conv2d_transpose": (lambda: keras.layers.Conv2DTranspose(4, 3, name="l"), (5, 5, 3)),
    "embedding": (lambda: keras.layers.Embedding(20, 6, name="l"), (7,)),
    "einsum_dense": (lambda: keras.layers.EinsumDense("ab,bc->ac", 5, name="l"), (8,)),
    "dense_3d": (lambda: keras.layers.Dense(5, name="l"), (4, 8)),
    "adder_dense": (lambda: tl.AdderDense(5, name="l"), (8,)),
    "adder_conv": (lambda: tl.AdderConv(4, 3, name="l"), (6, 6, 3)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_supported_layer_type_prunes_like_masking_its_weights(case, rng):
    make, shape = LAYER_CASES[case]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape, dtype="int32" if case == "embedding" else "float32")
    model = keras.Model(inputs, make()(inputs))
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    assert Pruner(pruned).step() == ["l"]
    # Reference: the original model with each weight matrix multiplied by the mask
    # that magnitude_mask (checked above against NumPy sorting) gives for it.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    kernels = [v for v in reference.get_layer("l").weights
               if v.name in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")]
    assert len(kernels) == (2 if case == "separable" else 1)
    for v in kernels:
        w = v.numpy()
        v.assign(w * magnitude_mask(w, 0.5))
    if case == "embedding":
        x = rng.integers(0, 20, size=(16,) + shape)
    else:
        x = rng.normal(size=(16,) + shape).astype(np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), reference.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    stripped = strip_pruning(pruned)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))
    rows = sparsity_report(stripped)
    assert [r["zeros"] for r in rows] == [round(0.5 * v.numpy().size) for v in kernels]
    assert [r["weight"] for r in rows] == [v.name for v in kernels]


@keras.saving.register_keras_serializable(package="test_pruning")
class CountingDense(keras.layers.Layer):
    """A custom prunable layer (get_prunable_weights) with non-trainable state."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")
        self.calls = self.add_weight(shape=(), name="calls", initializer="zeros",
                                     trainable=False)

    def call(self, x, training=None):
        if training:
            self.calls.assign_add(1.0)
        return keras.ops.matmul(x, self.w)

    def get_prunable_weights(self):
        return [self.w]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_custom_prunable_layer_with_state(rng):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, CountingDense(4, name="custom")(inputs))
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("sgd", "mse")
    x = rng.normal(size=(40, 8)).astype(np.float32)
    pruned.fit(x, np.zeros((40, 4), np.float32), batch_size=10, epochs=1, verbose=0,
               callbacks=[UpdatePruningStep()])
    inner = pruned.layers[1].layer
    assert float(inner.calls.numpy()) == 4.0  # the state update reached the variable
    assert [r["zeros"] for r in sparsity_report(pruned)] == [16]
    np.testing.assert_allclose(pruned.predict(x, verbose=0),
                               x @ (inner.w.numpy() * pruned.layers[1].pruning_masks[0].numpy()),
                               atol=1e-5)


# --------------------------------------------------------------------------------------
# N:M structured sparsity
# --------------------------------------------------------------------------------------


def test_2_by_4_on_conv_and_dense_has_the_exact_pattern(rng):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(5, name="dense")(h))
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=4),
                                 sparsity_m_by_n=(2, 4))
    before = {name: k for name, (k, _) in kernels_of(pruned).items()}
    pruner = Pruner(pruned)
    assert pruner.step() == ["conv", "dense"]  # step 0: masks computed
    for name, (kernel, mask) in kernels_of(pruned).items():
        np.testing.assert_array_equal(mask, reference_m_by_n(before[name], 2, 4))
        np.testing.assert_array_equal(kernel, before[name] * mask)
    x = rng.normal(size=(32, 6, 6, 4)).astype(np.float32)
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    pruned.fit(x, rng.normal(size=(32, 5)).astype(np.float32), batch_size=8, epochs=3,
               verbose=0, callbacks=[UpdatePruningStep()])
    stripped = strip_pruning(pruned)
    for name, shape in (("conv", (3, 3, 4, 8)), ("dense", (128, 5))):
        kernel = stripped.get_layer(name).kernel.numpy()
        assert kernel.shape == shape
        groups = np.moveaxis(kernel, -2, -1).reshape(-1, 4)  # runs of 4 input channels
        np.testing.assert_array_equal(np.sum(groups == 0, axis=1), 2)
    assert [r["sparsity"] for r in sparsity_report(stripped)] == [0.5, 0.5]


def test_m_by_n_needs_divisible_input_channels():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
    with pytest.raises(ValueError, match=r"'d' has shape \(6, 3\).*divisible by 4"):
        prune_low_magnitude(model, sparsity_m_by_n=(2, 4))


# --------------------------------------------------------------------------------------
# TensorBoard summaries
# --------------------------------------------------------------------------------------


def test_pruning_summaries_write_the_measured_sparsity(tmp_path, rng):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="d")(inputs))
    schedule = ConstantSparsity(0.25, begin_step=0, frequency=2)
    pruned = prune_low_magnitude(model, schedule)
    pruned.compile("sgd", "mse")
    x = rng.normal(size=(32, 8)).astype(np.float32)
    pruned.fit(x, np.zeros((32, 4), np.float32), batch_size=8, epochs=2, verbose=0,
               callbacks=[UpdatePruningStep(), PruningSummaries(tmp_path)])
    files = glob.glob(os.path.join(tmp_path, "metrics", "events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for event in tf.compat.v1.train.summary_iterator(files[0]):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(
                (event.step, float(tf.make_ndarray(value.tensor))))
    assert scalars["d/kernel/sparsity"] == [(3, 0.25), (7, 0.25)]
    assert scalars["d/target_sparsity"] == [(3, 0.25), (7, 0.25)]
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="log_dir"):
            PruningSummaries(bad)
    with pytest.raises(ValueError, match="update_freq=0"):
        PruningSummaries(tmp_path, update_freq=0)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors_name_the_problem(digits):
    with pytest.raises(ValueError, match=r"'my_bn' \(BatchNormalization\) has no weights to "
                                         r"prune\. Supported: .*Conv2D.*Dense.*get_prunable"):
        prune_low_magnitude(keras.layers.BatchNormalization(name="my_bn"))
    for bad in ((4, 2), (0, 4), (2.0, 4), "24", (True, 4), (2, 4, 8)):
        with pytest.raises(ValueError, match=r"sparsity_m_by_n.*0 < m < n"):
            prune_low_magnitude(keras.layers.Dense(3), sparsity_m_by_n=bad)
    with pytest.raises(ValueError, match="pruning_schedule=0.5"):
        prune_low_magnitude(keras.layers.Dense(3), pruning_schedule=0.5)

    model = models.lenet_300_100(input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"'fc3'.*Its layers: input, flatten, fc1, fc2, "
                                         r"predictions"):
        prune_low_magnitude(model, {"fc1": ConstantSparsity(0.5), "fc3": ConstantSparsity(0.5)})
    with pytest.raises(ValueError, match=r"'flatten' \(Flatten\) has no weights to prune"):
        prune_low_magnitude(model, {"flatten": ConstantSparsity(0.5)})
    pruned = prune_low_magnitude(model)
    with pytest.raises(ValueError, match=r"already pruned.*prune_low_magnitude_fc1"):
        prune_low_magnitude(pruned)
    with pytest.raises(ValueError, match="already pruned"):
        prune_low_magnitude(pruned.get_layer("prune_low_magnitude_fc1"))

    # A nested model used to be refused here ("Nested model ..."); since issue 12 it is
    # flattened and pruned like the model it nests (tests/test_model_kinds.py).
    inputs = keras.Input((8, 8, 1))
    nested = keras.Model(inputs, model(inputs))
    assert sorted(
        layer.layer.name for layer in prune_low_magnitude(nested).layers
        if isinstance(layer, PruneLowMagnitude)
    ) == ["fc1", "fc2", "predictions"]

    (x, y), _ = digits
    plain = models.lenet_300_100(input_shape=(8, 8, 1))
    plain.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="'lenet_300_100' has no PruneLowMagnitude layer"):
        plain.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    with pytest.raises(ValueError, match="no layer with weights to prune"):
        prune_low_magnitude(keras.Sequential([keras.Input((4,)), keras.layers.ReLU()]))
