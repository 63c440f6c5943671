"""tools/compress.py --recipe=channel_pruning and tools/sensitivity.py, end to end on
the shipped digits (subprocesses), against numbers recomputed here."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every test here runs a tool in a subprocess (and most train): the slow tier.
pytestmark = pytest.mark.slow


def _run(tool, *args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", tool), *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("channel_pruning")
    result = _run("compress.py", "--recipe=channel_pruning", "--epochs=4", "--finetune_epochs=2",
                  "--qat_epochs=1", "--criterion=fpgm", "--target_macs=0.5", "--round_to=2",
                  "--sparsity_training=group_lasso", "--sparsity_epochs=1", "--seed=0",
                  f"--output_dir={out}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result, json.loads((out / "small_cnn_report.json").read_text())


@pytest.mark.slow
def test_channel_pruning_recipe_halves_the_macs_and_reports_it(pruned_run):
    import keras

    import tfcompress
    from tfcompress import datasets, export

    out, result, report = pruned_run
    assert report["macs"]["after"] <= 0.5 * report["macs"]["before"]
    assert report["params"]["after"] < report["params"]["before"]
    assert set(report["files"]) == {p.name for p in out.iterdir()}
    model = keras.saving.load_model(out / "small_cnn_pruned.keras")
    total = tfcompress.profile(model)["total"]
    assert (total["macs"], total["params"]) == (report["macs"]["after"], report["params"]["after"])
    for group in report["groups"]:
        if group["prunable"] and group["removed"]:
            assert group["kept"] % 2 == 0
    _, (x_test, y_test) = datasets.load("digits")
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert accuracy == pytest.approx(report["accuracy"]["fine_tuned"], abs=1e-6)
    assert accuracy > 0.5
    with open(out / report["int8"]["file"], "rb") as f:
        int8 = f.read()
    assert report["bytes"]["after"]["int8"] == len(int8) < report["bytes"]["before"]["int8"]
    probs, _ = export.run_tflite(int8, x_test)
    assert float(np.mean(probs.argmax(-1) == y_test)) == pytest.approx(
        report["int8"]["test_accuracy"])
    assert set(report["latency_ms"]["before"]) == {"float", "int8"}
    for name in report["files"]:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LiteRT int8 latency" in result.stdout and "multiply-adds" in result.stdout


@pytest.mark.slow
def test_sensitivity_tool_writes_csv_png_json(pruned_run, tmp_path):
    import keras

    import tfcompress
    from tfcompress import datasets

    out, _, _ = pruned_run
    result = _run("sensitivity.py", f"--model={out / 'small_cnn_pruned.keras'}",
                  "--sparsities=0.0,0.5", "--examples=200", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    stem = tmp_path / "small_cnn_pruned_channel_sensitivity"
    data = json.loads(stem.with_suffix(".json").read_text())
    _, (x_test, y_test) = datasets.load("digits")
    model = keras.saving.load_model(out / "small_cnn_pruned.keras")
    baseline = tfcompress.pruning.sensitivity.accuracy(model, (x_test[:200], y_test[:200]))
    assert data["baseline"] == pytest.approx(baseline)
    with open(stem.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["name"] for r in rows} == {"(baseline)"} | set(data["curves"])
    for name, points in data["curves"].items():
        assert points[0] == [0.0, pytest.approx(baseline)], name
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("tool, args, expected", [
    ("compress.py", ["--recipe=channel_pruning", "--epochs=0", "--finetune_epochs=0",
                     "--quantize=none", "--target_macs=0.0001"], "cannot be reached"),
    ("compress.py", ["--recipe=channel_pruning", "--load=/no/such.keras"], "no such file"),
    ("sensitivity.py", ["--model=/no/such.keras"], "no such file"),
    ("sensitivity.py", ["--model=README.md", "--sparsities=0.5,2"], "in [0, 1)"),
])
def test_channel_tools_name_bad_values(tool, args, expected, tmp_path):
    result = _run(tool, *args, f"--output_dir={tmp_path}", timeout=300)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
