"""HashedDense (HashedNets) against a NumPy twin: forward, bucket gradients, hashing
statistics, lowering, profile, .keras round trip and int8 export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress
from tfcompress import export
from tfcompress.layers import HashedDense, hash_indices


def _numpy_hash(m, n, buckets, seed):
    """An independent twin of the hash: splitmix64's finalizer in Python integers."""
    mask = (1 << 64) - 1

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    index = np.empty((m, n), np.int64)
    sign = np.empty((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            key = (seed * 0x9E3779B97F4A7C15 + i * n + j) & mask
            first = mix(key)
            second = mix(first ^ 0xD6E8FEB86659FD93)
            index[i, j] = first % buckets
            sign[i, j] = -1.0 if second >> 63 else 1.0
    return index, sign


def test_hash_matches_its_python_twin_and_spreads_evenly():
    index, sign = hash_indices((7, 5), 11, seed=3)
    ref_index, ref_sign = _numpy_hash(7, 5, 11, 3)
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_array_equal(sign, ref_sign)
    big, big_sign = hash_indices((300, 100), 1000, seed=0)
    counts = np.bincount(big.ravel(), minlength=1000)
    assert counts.min() > 0 and abs(counts.mean() - 30) < 1e-9 and counts.std() < 8  # ~sqrt(30)
    assert abs(big_sign.mean()) < 0.02


def test_forward_and_bucket_gradient_match_numpy(rng):
    layer = HashedDense(6, buckets=9, activation="relu", seed=5)
    x = rng.normal(size=(4, 10)).astype("float32")
    layer.build((None, 10))
    buckets = rng.normal(size=9).astype("float32")
    bias = rng.normal(size=6).astype("float32")
    layer.set_weights([buckets, bias])
    index, sign = _numpy_hash(10, 6, 9, 5)
    virtual = buckets[index] * sign
    np.testing.assert_allclose(layer(x), np.maximum(x @ virtual + bias, 0), rtol=1e-6)
    g = rng.normal(size=(4, 6)).astype("float32")
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * g)
    grad = tape.gradient(loss, layer.kernel_buckets).numpy()
    upstream = g * (x @ virtual + bias > 0)
    virtual_grad = x.T @ upstream                     # dL/dV
    expected = np.bincount(index.ravel(), weights=(sign * virtual_grad).ravel(), minlength=9)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((20,))
    x = HashedDense(16, buckets=40, activation="relu", seed=1)(inputs)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def test_trains_saves_lowers_and_profiles(rng, tmp_path):
    model = _model()
    x = rng.normal(size=(64, 20)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    history = model.fit(x, y, epochs=5, verbose=0).history["loss"]
    assert history[-1] < history[0]
    model.save(tmp_path / "h.keras")
    loaded = keras.saving.load_model(tmp_path / "h.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    lowered = tfcompress.lowering.lower_model(model)
    assert [type(layer).__name__ for layer in lowered.layers[1:]] == ["Dense", "Dense"]
    np.testing.assert_allclose(lowered.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    row = tfcompress.profile(model)["layers"][0]
    assert (row["params"], row["macs"]) == (40 + 16, 20 * 16)


@pytest.mark.slow
def test_qat_int8_export_is_within_one_step(rng):
    model = _model()
    qat = tfcompress.quantize_model(model)
    x = rng.normal(size=(64, 20)).astype("float32")
    qat.compile(keras.optimizers.SGD(0.01), "mse")
    qat.fit(x, qat.predict(x, verbose=0), batch_size=16, epochs=2, verbose=0)
    tflite = export.to_tflite(qat)
    export.check_integer_only(tflite, qat)
    report = export.verify(tflite, qat, rng.normal(size=(128, 20)).astype("float32"))
    assert report["within_1_step"] >= 0.999, report


@pytest.mark.parametrize("kwargs, message", [
    ({"units": 0, "buckets": 4}, "units=0"),
    ({"units": 4, "buckets": 0}, "buckets=0"),
    ({"units": 4, "buckets": 4, "seed": 1.5}, "seed=1.5"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        HashedDense(**kwargs)
    assert message in str(info.value)
