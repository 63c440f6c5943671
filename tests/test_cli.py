"""The command-line tools tools/evaluate.py and tools/benchmark.py, run as subprocesses.

A tiny Conv2D-BN-ReLU-MaxPool-Dense model is trained once on the shipped digits and
saved as `.keras`, float, dynamic-range and int8 `.tflite`; the numbers the tools
print are compared with the same numbers computed here in-process.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every test here runs a tool in a subprocess (and most train): the slow tier.
pytestmark = pytest.mark.slow


def _run(tool, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", tool), *args],
        capture_output=True, text=True, env=env, timeout=300, check=False, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Trains the tiny model; writes its files; returns paths, model and data."""
    import keras

    from tfcompress import datasets, export

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = datasets.load("digits")
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)  # usable after 1 epoch
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)

    folder = tmp_path_factory.mktemp("cli")
    paths = {"keras": str(folder / "tiny.keras")}
    model.save(paths["keras"])
    tflite = {
        "float": export.to_tflite(model, mode="float32"),
        "dynamic": export.to_tflite(model, mode="dynamic"),
        "int8": export.to_tflite(model, x_train[:200]),
    }
    for kind, content in tflite.items():
        paths[kind] = str(folder / f"tiny_{kind}.tflite")
        with open(paths[kind], "wb") as f:
            f.write(content)
    return {
        "paths": paths, "tflite": tflite, "model": model, "folder": folder,
        "train": (x_train, y_train), "test": (x_test, y_test),
    }


def _lite_accuracy(content, x, y):
    from tfcompress import export

    probs, _ = export.run_tflite(content, x)
    return float(np.mean(probs.argmax(-1) == y))


def test_evaluate_keras_and_float_tflite(files):
    out = str(files["folder"] / "eval_float.json")
    result = _run("evaluate.py", f"--model={files['paths']['keras']}",
                  f"--tflite={files['paths']['float']}", "--dataset=digits", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)

    x_test, y_test = files["test"]
    _, keras_acc = files["model"].evaluate(x_test, y_test, batch_size=256, verbose=0)
    assert keras_acc > 0.7  # trained: the comparison below is not chance vs chance
    assert report["examples"] == len(x_test) == 360
    assert report["keras"]["accuracy"] == pytest.approx(keras_acc, abs=1e-6)
    lite_acc = _lite_accuracy(files["tflite"]["float"], x_test, y_test)
    assert report["tflite"]["accuracy"] == pytest.approx(lite_acc, abs=1e-9)
    assert report["tflite"]["correct"] == round(lite_acc * len(x_test))
    assert report["tflite"]["input_dtype"] == report["tflite"]["output_dtype"] == "float32"

    parity = report["parity"]
    assert parity["examples"] == 360
    assert parity["argmax_agreement"] >= 0.99
    assert 0 <= parity["max_abs_diff"] < 1e-3
    assert "within_1_step" not in parity  # float output: no quantization steps
    for text in ("Keras accuracy", ".tflite accuracy", "parity argmax agreement",
                 f"{report['keras']['accuracy']:.4f}"):
        assert text in result.stdout


def test_evaluate_int8_parity_in_quantization_steps(files):
    from tfcompress import export

    out = str(files["folder"] / "eval_int8.json")
    result = _run("evaluate.py", f"--model={files['paths']['keras']}",
                  f"--tflite={files['paths']['int8']}", "--limit=200", "--batch_size=64",
                  f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)

    x_test, y_test = files["test"]
    x, y = x_test[:200], y_test[:200]
    _, keras_acc = files["model"].evaluate(x, y, verbose=0)
    assert report["examples"] == 200
    assert report["keras"]["accuracy"] == pytest.approx(keras_acc, abs=1e-6)
    assert report["tflite"]["accuracy"] == pytest.approx(
        _lite_accuracy(files["tflite"]["int8"], x, y), abs=1e-9)
    assert report["tflite"]["input_dtype"] == report["tflite"]["output_dtype"] == "int8"

    expected = export.verify(files["tflite"]["int8"], files["model"], x, batch_size=64)
    parity = report["parity"]
    assert set(parity) == set(expected)
    assert parity["output_scale"] == expected["output_scale"]
    # Same file, same weights: only float round-off between processes may differ.
    assert parity["max_diff_steps"] == pytest.approx(expected["max_diff_steps"], abs=1e-3)
    for key in ("within_1_step", "argmax_agreement"):
        assert parity[key] == pytest.approx(expected[key], abs=0.01), key
    assert 0 <= parity["within_1_step"] <= 1
    assert "parity within 1 step" in result.stdout


def test_evaluate_tflite_only_on_train_split(files):
    out = str(files["folder"] / "eval_dynamic.json")
    result = _run("evaluate.py", f"--tflite={files['paths']['dynamic']}", "--split=train",
                  "--limit=100", "--batch_size=32", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)
    x_train, y_train = files["train"]
    assert report["split"] == "train" and report["examples"] == 100
    assert report["keras"] is None and report["parity"] is None
    assert report["tflite"]["accuracy"] == pytest.approx(
        _lite_accuracy(files["tflite"]["dynamic"], x_train[:100], y_train[:100]), abs=1e-9)
    assert report["tflite"]["bytes"] == os.path.getsize(files["paths"]["dynamic"])


def test_benchmark_reports_latency_size_ops_and_ratios(files):
    from ai_edge_litert.interpreter import Interpreter

    out = str(files["folder"] / "bench.json")
    paths = [files["paths"]["float"], files["paths"]["int8"]]
    result = _run("benchmark.py", *(f"--tflite={p}" for p in paths), "--threads=1",
                  "--runs=5", "--warmup=1", "--batch=2", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)

    assert (report["threads"], report["runs"], report["batch"]) == (1, 5, 2)
    first, second = report["files"]
    for entry, path in zip(report["files"], paths):
        assert entry["path"] == path
        assert entry["bytes"] == os.path.getsize(path)
        assert 0 < entry["p10_ms"] <= entry["median_ms"] <= entry["p90_ms"]
        ops = [op["op_name"] for op in Interpreter(model_path=path)._get_ops_details()]
        assert entry["num_ops"] == len(ops) > 0
        assert sum(entry["ops"].values()) == len(ops)
        assert entry["inputs"][0]["shape"] == [2, 8, 8, 1]
        assert entry["outputs"][0]["shape"] == [2, 10]
    assert first["inputs"][0]["dtype"] == first["outputs"][0]["dtype"] == "float32"
    assert second["inputs"][0]["dtype"] == second["outputs"][0]["dtype"] == "int8"
    assert first["speedup_vs_first"] == 1.0 and first["size_vs_first"] == 1.0
    assert second["speedup_vs_first"] == pytest.approx(first["median_ms"] / second["median_ms"])
    assert second["size_vs_first"] == pytest.approx(second["bytes"] / first["bytes"])
    assert "CONV_2D" in first["op_summary"] and "FULLY_CONNECTED" in first["op_summary"]
    for text in ("median ms", "speed-up", "tiny_float.tflite", "tiny_int8.tflite"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("evaluate.py", ["--dataset=digits"], ["--model", "--tflite"]),
        ("evaluate.py", ["--model={folder}/missing.keras"], ["missing.keras", "no such file"]),
        ("evaluate.py", ["--tflite={folder}/missing.tflite"], ["missing.tflite"]),
        ("evaluate.py", ["--tflite={float}", "--dataset=cifar10"], ["cifar10", "digits"]),
        ("evaluate.py", ["--model={keras}", "--dataset=mnist"],
         ["mnist", "(8, 8, 1)", "(28, 28, 1)"]),
        ("evaluate.py", ["--tflite={float}", "--dataset=fashion_mnist"],
         ["fashion_mnist", "(8, 8, 1)", "(28, 28, 1)"]),
        ("evaluate.py", ["--tflite={float}", "--limit=0"], ["--limit"]),
        ("benchmark.py", [], ["--tflite"]),
        ("benchmark.py", ["--tflite={float}", "--tflite={folder}/gone.tflite"], ["gone.tflite"]),
        ("benchmark.py", ["--tflite={keras}"], ["tiny.keras"]),
        ("benchmark.py", ["--tflite={float}", "--runs=0"], ["--runs"]),
    ],
    ids=["eval-no-file", "eval-missing-keras", "eval-missing-tflite", "eval-bad-dataset",
         "eval-keras-shape", "eval-tflite-shape", "eval-bad-limit", "bench-no-file",
         "bench-missing", "bench-not-tflite", "bench-bad-runs"],
)
def test_errors_exit_nonzero_and_name_the_value(files, tool, args, expected):
    fill = dict(files["paths"], folder=str(files["folder"]))
    result = _run(tool, *(a.format(**fill) for a in args))
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
