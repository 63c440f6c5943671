"""tools/compress.py --recipe=low_rank end to end on the shipped digits (a subprocess),
against numbers recomputed here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compress.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False,
                          cwd=ROOT)


def test_low_rank_recipe_decomposes_fine_tunes_and_reports(tmp_path):
    import keras

    import tfcompress
    from tfcompress import datasets, export

    result = _run("--recipe=low_rank", "--energy=0.8", "--epochs=4", "--finetune_epochs=2",
                  "--qat_epochs=1", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-2000:]
    report = json.loads((tmp_path / "small_cnn_report.json").read_text())
    assert set(report["files"]) == {p.name for p in tmp_path.iterdir()}
    assert report["macs"]["after"] < report["macs"]["before"]
    assert any(row["replaced"] for row in report["layers"])
    model = keras.saving.load_model(tmp_path / "small_cnn_low_rank.keras")
    total = tfcompress.profile(model)["total"]
    assert (total["macs"], total["params"]) == (report["macs"]["after"], report["params"]["after"])
    _, (x_test, y_test) = datasets.load("digits")
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert accuracy == pytest.approx(report["accuracy"]["fine_tuned"], abs=1e-6)
    with open(tmp_path / "small_cnn_low_rank_int8.tflite", "rb") as f:
        probs, _ = export.run_tflite(f.read(), x_test)
    assert float(np.mean(probs.argmax(-1) == y_test)) == pytest.approx(
        report["int8"]["test_accuracy"])
    assert (tmp_path / "small_cnn_spectra.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LiteRT float latency" in result.stdout


@pytest.mark.parametrize("args, text", [
    (["--energy=0.9"], "--recipe=low_rank"),
    (["--recipe=low_rank", "--energy=0.9", "--rank_selection=vbmf"], "not both"),
    (["--recipe=low_rank", "--energy=0"], "--energy=0"),
    (["--recipe=low_rank", "--decomposition=qr"], "qr"),
])
def test_low_rank_flags_are_checked_first(tmp_path, args, text):
    result = _run(*args, f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
