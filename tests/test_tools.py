"""End-to-end run of the main job, tools/compress.py, on the shipped digits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every test here runs a tool in a subprocess (and most train): the slow tier.
pytestmark = pytest.mark.slow


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tool silences TensorFlow by itself
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "compress.py"),
         f"--output_dir={tmp_path}", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )


def test_compress_trains_profiles_exports_and_verifies(tmp_path):
    result = _run(["--epochs=3", "--seed=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "small_cnn_report.json").read_text())
    # 3 epochs of small_cnn on 8x8 digits: well above the 10% of chance.
    assert report["keras_test_accuracy"] > 0.5
    # The float .tflite computes what Keras computed.
    assert report["parity"]["argmax_agreement"] >= 0.99
    assert report["parity"]["max_abs_diff"] < 1e-3
    assert abs(report["tflite_test_accuracy"] - report["keras_test_accuracy"]) < 0.01
    # Every file written is listed with what it is for, in the report and on stdout;
    # nothing else is left in the folder (no staging folder, no temporary file).
    files = report["files"]
    assert set(files) == {p.name for p in tmp_path.iterdir()}, files
    assert set(files) == {"small_cnn.keras", "small_cnn_float.tflite", "small_cnn_qat.keras",
                          "small_cnn_int8.tflite", "small_cnn_training.png", "small_cnn_bits.png",
                          "small_cnn_report.json"}
    assert "exported from small_cnn_qat.keras" in files["small_cnn_int8.tflite"]
    for name, purpose in files.items():
        assert f"  {name}  " in result.stdout and purpose in result.stdout
    assert report["tflite_bytes"] == os.path.getsize(tmp_path / "small_cnn_float.tflite")
    assert (tmp_path / "small_cnn_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TFLite test accuracy" in result.stdout
    assert result.stderr == "", result.stderr[-2000:]  # no TF / CUDA / absl log lines
    # Default int8 stage: QAT, integer-only file, equal to the QAT Keras model.
    int8 = report["int8"]
    assert int8["mode"] == "qat"
    # The output is a softmax (steps of 1/256): a legal 1-step difference of a logit
    # (step ~0.05 here) moves a probability by up to 0.05 * p * (1 - p), 3 output
    # steps. Since the QAT model rounds its biases as the file does, seeds 1-3 gave
    # 100% within 1 step, at most 1 step (before: 6 of 3,600 outputs 2-3 steps away).
    assert int8["parity"]["within_1_step"] >= 0.999
    assert int8["parity"]["max_diff_steps"] <= 4.0 + 1e-3
    assert int8["parity"]["argmax_agreement"] >= 0.99
    assert int8["test_accuracy"] > report["keras_test_accuracy"] - 0.05
    assert int8["bytes"] < 0.5 * report["tflite_bytes"]
    assert (tmp_path / "small_cnn_qat.keras").exists()

    # The saved .keras loads with plain Keras and predicts like the .tflite.
    import keras

    from tfcompress import datasets, export

    model = keras.saving.load_model(tmp_path / "small_cnn.keras")
    _, (x_test, _) = datasets.load("digits")
    with open(tmp_path / "small_cnn_float.tflite", "rb") as f:
        lite, _ = export.run_tflite(f.read(), x_test[:50])
    np.testing.assert_allclose(lite, model.predict(x_test[:50], verbose=0), atol=1e-4)


@pytest.mark.parametrize("conv", ["adder", "binary"])  # their int8: test_quantization.py
def test_compress_resnet20_variants(conv, tmp_path):
    result = _run(["--model=resnet20", f"--conv={conv}", "--epochs=1", "--quantize=none"],
                  tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / f"resnet20_{conv}_report.json").read_text())
    assert report["parity"]["argmax_agreement"] >= 0.99
    if conv == "adder":
        assert report["adds"] > 0


def test_compress_ptq_on_ghost_resnet(tmp_path):
    result = _run(["--model=resnet20", "--conv=ghost", "--epochs=1", "--quantize=ptq"],
                  tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "resnet20_ghost_report.json").read_text())
    assert report["int8"]["mode"] == "ptq"
    assert report["int8"]["parity"]["argmax_agreement"] >= 0.9


def test_compress_rejects_unknown_model(tmp_path):
    result = _run(["--model=vgg"], tmp_path)
    assert result.returncode != 0
    assert "vgg" in result.stderr and "small_cnn" in result.stderr


def _damaged_small_cnn(path):
    """small_cnn trained on digits, one feature of its classifier made dead (bn3's
    offset far below zero) and given a huge weight: the float model is unchanged,
    but the classifier's one int8 weight scale (FULLY_CONNECTED) then rounds every
    other weight to 0, so int8 costs that layer most of its accuracy."""
    import keras

    from tfcompress import datasets, models

    (x, y), _ = datasets.load("digits")
    keras.utils.set_random_seed(0)
    model = models.small_cnn(input_shape=(8, 8, 1))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0)
    gamma, beta, mean, var = model.get_layer("bn3").get_weights()
    beta[0] = -1e3
    model.get_layer("bn3").set_weights([gamma, beta, mean, var])
    kernel, bias = model.get_layer("predictions").get_weights()
    kernel[0, :] = 1e3 * np.abs(kernel).max()
    model.get_layer("predictions").set_weights([kernel, bias])
    model.save(path)


def test_compress_mixed_precision(tmp_path):
    """--precision=auto: the layer int8 hurts stays float in the file, which mixes
    int8 and float operators and matches the QAT model."""
    loaded = tmp_path / "damaged.keras"
    _damaged_small_cnn(loaded)
    out = tmp_path / "out"
    result = _run([f"--load={loaded}", "--qat_epochs=1", "--precision=auto",
                   "--max_accuracy_drop=0.02", "--sensitivity_examples=500"], out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "damaged_report.json").read_text())
    int8 = report["int8"]
    assert int8["float_layers"] == ["predictions"], result.stdout[-2000:]
    assert "precision='auto'" in result.stdout and "float: predictions" in result.stdout
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out / "damaged_int8.tflite"))
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    kinds = [(op["op_name"], tensors[op["outputs"][0]]) for op in interpreter._get_ops_details()
             if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert kinds == [("CONV_2D", np.int8)] * 3 + [("FULLY_CONNECTED", np.float32)]
    assert int8["parity"]["within_1_step"] >= 0.99
    assert int8["test_accuracy"] > 0.8  # all-int8, the classifier's rounding would ruin it
    assert "mixed precision" in report["files"]["damaged_int8.tflite"]
    assert "float layers" in result.stdout


def test_compress_precision_flags_are_checked(tmp_path):
    result = _run(["--quantize=ptq", "--precision=auto"], tmp_path)
    assert result.returncode != 0 and "--precision=auto does not apply with --quantize=ptq" \
        in result.stderr
    result = _run(["--max_accuracy_drop=0.02"], tmp_path)
    assert result.returncode != 0 and "applies with --precision=auto" in result.stderr
    result = _run(["--precision=16"], tmp_path)
    assert result.returncode != 0 and "precision" in result.stderr
