"""The Deep Compression pipeline end to end on the shipped digits, and its tools.

prune -> retrain -> cluster -> fine-tune -> Huffman-coded container -> int8 .tflite:
the numbers each stage promises are checked against independent counts (zeros,
distinct values, file bytes, LiteRT outputs).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfcompress import coding, datasets, deep_compression, export, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARSITY = {"fc1": 0.9, "fc2": 0.8, "predictions": 0.5}
CLUSTERS = 16


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.fixture(scope="module")
def result(digits):
    keras.utils.set_random_seed(0)
    (x_train, y_train), test = digits
    model = models.lenet_300_100(input_shape=(8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=15, verbose=0)
    config = deep_compression.DeepCompressionConfig(
        sparsity=SPARSITY, clusters=CLUSTERS, prune_epochs=3, retrain_epochs=3,
        finetune_epochs=2, batch_size=64,
    )
    return model, deep_compression.run(model, (x_train, y_train), test, config, verbose=0)


def _kernel(model, name):
    return np.asarray(model.get_layer(name).kernel)


@pytest.mark.slow
def test_each_layer_reaches_its_sparsity_and_cluster_count(result):
    model, out = result
    for name, target in SPARSITY.items():
        kernel = _kernel(out.model, name)
        zeros = int(np.sum(kernel == 0))
        assert zeros == round(target * kernel.size), (name, zeros, kernel.size)
        distinct = np.unique(kernel[kernel != 0])
        assert 2 <= distinct.size <= CLUSTERS, (name, distinct.size)
        # Pruning and clustering never revive a pruned weight.
        pruned = _kernel(out.pruned_model, name)
        np.testing.assert_array_equal(kernel == 0, pruned == 0)
    # The original model is untouched: dense.
    assert np.count_nonzero(_kernel(model, "fc1")) == _kernel(model, "fc1").size


@pytest.mark.slow
def test_accuracy_survives_each_stage(result, digits):
    _, out = result
    _, (x_test, y_test) = digits
    acc = out.accuracy
    assert acc["float"] > 0.93, acc
    assert acc["pruned"] >= acc["float"] - 0.03, acc
    assert acc["clustered"] >= acc["float"] - 0.03, acc
    measured = float((out.model.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    assert measured == pytest.approx(acc["clustered"])


@pytest.mark.slow
def test_container_round_trip_is_bit_exact_and_small(result, digits, tmp_path):
    _, out = result
    path = str(tmp_path / "lenet.tfcz")
    coding.save_compressed(out.model, path)
    restored = coding.load_compressed(path)
    for a, b in zip(out.model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    x = digits[1][0][:50]
    np.testing.assert_array_equal(out.model.predict(x, verbose=0), restored.predict(x, verbose=0))
    dense_bytes = 4 * out.model.count_params()
    assert dense_bytes / os.path.getsize(path) > 8.0


@pytest.mark.slow
def test_compressed_model_exports_integer_only_with_parity(result, digits):
    _, out = result
    (x_train, _), (x_test, _) = digits
    tflite = export.to_tflite(out.model, x_train[:200])
    ops = export.check_integer_only(tflite, out.model)
    assert "FULLY_CONNECTED" in ops
    report = export.verify(tflite, out.model, x_test)
    # Post-training int8 against the float model: quantization error, so the
    # promise is the same class, not the same value within a step.
    assert report["argmax_agreement"] >= 0.99, report


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="sparsity=1.0"):
        deep_compression.DeepCompressionConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="prune_epochs=-1"):
        deep_compression.DeepCompressionConfig(prune_epochs=-1)
    with pytest.raises(ValueError, match="learning_rate=0"):
        deep_compression.DeepCompressionConfig(learning_rate=0)
    with pytest.raises(ValueError, match="'cosine', 'constant'.*learning_rate_decay='linear'"):
        deep_compression.DeepCompressionConfig(learning_rate_decay="linear")
    with pytest.raises(ValueError, match="augment_shift=-1"):
        deep_compression.DeepCompressionConfig(augment_shift=-1)


@pytest.mark.parametrize("augment_shift", [0, 1])
def test_train_classifier_cosine_decay_and_shifts(digits, monkeypatch, augment_shift):
    (x, y), _ = digits
    calls = []
    real_shift = datasets.random_shift

    def spy(images, max_shift, seed=None):
        calls.append(max_shift)
        return real_shift(images, max_shift, seed)

    monkeypatch.setattr(datasets, "random_shift", spy)
    keras.utils.set_random_seed(0)
    model = models.lenet_300_100(input_shape=(8, 8, 1))
    lr, epochs, batch = 2e-3, 3, 100
    history = deep_compression.train_classifier(
        model, x, y, epochs, lr, batch_size=batch, augment_shift=augment_shift, seed=[0, 1],
    )
    steps = int(np.ceil(len(x) / batch)) * epochs
    assert len(history["loss"]) == epochs and history["loss"][-1] < history["loss"][0]
    assert int(model.optimizer.iterations) == steps
    assert calls == [augment_shift] * (epochs if augment_shift else 0)

    # Cosine decay (Loshchilov & Hutter): lr * (a + (1 - a) * (1 + cos(pi * t / T)) / 2).
    def expected(t):
        return lr * (0.01 + 0.99 * (1 + np.cos(np.pi * t / steps)) / 2)

    schedule = model.optimizer._learning_rate
    for t in (0, steps // 3, steps):
        assert float(schedule(t)) == pytest.approx(expected(t), rel=1e-5)
    assert float(model.optimizer.learning_rate) == pytest.approx(lr * 0.01, rel=1e-5)
    with pytest.raises(ValueError, match="epochs=-1"):
        deep_compression.train_classifier(model, x, y, -1)
    with pytest.raises(ValueError, match="learning_rate_decay='step'"):
        deep_compression.train_classifier(model, x, y, 1, learning_rate_decay="step")


def _tool(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", name), *args],
        capture_output=True, text=True, env=env, timeout=600, check=False, cwd=ROOT,
    )


@pytest.mark.slow
def test_compress_recipe_and_inspect_tool(tmp_path):
    out_dir = tmp_path / "out"
    run = _tool(
        "compress.py", "--recipe=deep_compression", "--model=lenet_300_100", "--epochs=8",
        "--prune_epochs=2", "--retrain_epochs=1", "--finetune_epochs=1", "--clusters=16",
        f"--output_dir={out_dir}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out_dir / "lenet_300_100_report.json").read_text())
    container = out_dir / "lenet_300_100.tfcz"
    assert report["container_bytes"] == container.stat().st_size
    params = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert report["params"] == params
    assert report["compression_ratio"] == pytest.approx(4 * params / container.stat().st_size)
    restored = coding.load_compressed(str(container))
    kernel = np.asarray(restored.get_layer("fc1").kernel)
    expected = deep_compression.DEFAULT_SPARSITY["lenet_300_100"]["fc1"]
    assert np.sum(kernel == 0) == round(expected * kernel.size)
    assert report["nonzero_params"]["after"] == sum(
        int(np.count_nonzero(w)) for w in restored.get_weights()
    )
    for name in ("_weights.png", "_sparsity.png", "_int8.tflite"):
        assert (out_dir / f"lenet_300_100{name}").stat().st_size > 0
    assert "compression ratio" in run.stdout

    shown = _tool("inspect_file.py", str(container), f"--json={tmp_path / 'inspect.json'}")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "fc1" in shown.stdout and f"{params:,} parameters" in shown.stdout
    inspected = json.loads((tmp_path / "inspect.json").read_text())
    assert inspected["bytes"] == container.stat().st_size

    damaged = tmp_path / "damaged.tfcz"
    data = bytearray(container.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    bad = _tool("inspect_file.py", str(damaged))
    assert bad.returncode != 0
    assert "checksum" in (bad.stdout + bad.stderr).lower()


@pytest.mark.slow
def test_auto_sparsity_comes_from_a_weight_sensitivity_analysis(result, digits):
    """DeepCompressionConfig(sparsity="auto"): each layer is pruned to the largest
    sparsity its own sensitivity curve allows within max_accuracy_drop."""
    import tfcompress

    model, _ = result
    (x_train, y_train), test = digits
    config = deep_compression.DeepCompressionConfig(
        sparsity="auto", max_accuracy_drop=0.02, sensitivity_examples=300, clusters=CLUSTERS,
        prune_epochs=1, retrain_epochs=1, finetune_epochs=1, batch_size=64,
    )
    out = deep_compression.run(model, (x_train, y_train), test, config, verbose=0)
    held = (x_train[-300:], y_train[-300:])
    expected = tfcompress.sensitivity_analysis(
        model, held, granularity="weight", sparsities=deep_compression.AUTO_SPARSITIES,
        verbose=0).sparsities_for(0.02)
    assert out.sensitivity.sparsities_for(0.02) == expected
    for row in out.sparsity:
        target = expected[row["layer"]]
        assert row["zeros"] == round(target * row["size"]), row
    with pytest.raises(ValueError, match="sparsity='most'"):
        deep_compression.DeepCompressionConfig(sparsity="most")
    with pytest.raises(ValueError, match="max_accuracy_drop=-1"):
        deep_compression.DeepCompressionConfig(sparsity="auto", max_accuracy_drop=-1)


def test_more_clusters_than_values_left_after_pruning_shares_each_value(digits):
    """small_cnn's conv1 (144 weights) keeps 15 non-zero weights at 90% sparsity: 32
    clusters become one per distinct value there (was a ValueError after training)."""
    keras.utils.set_random_seed(0)
    (x_train, y_train), test = digits
    model = models.small_cnn(input_shape=(8, 8, 1))
    config = deep_compression.DeepCompressionConfig(
        sparsity=0.9, clusters=32, prune_epochs=1, retrain_epochs=0, finetune_epochs=1,
        batch_size=64,
    )
    out = deep_compression.run(model, (x_train[:256], y_train[:256]), test, config, verbose=0)
    before = _kernel(out.pruned_model, "conv1")
    after = _kernel(out.model, "conv1")
    distinct = np.unique(before[before != 0]).size
    assert distinct < 32
    np.testing.assert_array_equal(after == 0, before == 0)
    assert np.unique(after[after != 0]).size <= distinct
    for name in ("conv2", "conv3", "predictions"):
        kernel = _kernel(out.model, name)
        assert np.unique(kernel[kernel != 0]).size <= 32, name
