"""tools/compress.py --teacher: distillation in the recipes, on the shipped digits (a
subprocess), against numbers recomputed here."""

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
                          capture_output=True, text=True, env=env, timeout=900, check=False,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    result = _run("--epochs=4", "--quantize=none", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    return out / "small_cnn.keras"


def _accuracy(path, x, y):
    import keras

    import tfcompress  # noqa: F401

    model = keras.saving.load_model(path)
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


@pytest.mark.parametrize("recipe, args, student", [
    ("default", ["--epochs=2", "--qat_epochs=1"], "small_cnn.keras"),
    ("channel_pruning", ["--epochs=2", "--finetune_epochs=1", "--quantize=none"],
     "small_cnn_pruned.keras"),
    # low_rank fine-tunes through the same fit_with_and_without_teacher as
    # channel_pruning (tools/compress.py); left out to keep CI under 30 minutes.
])
def test_teacher_in_every_recipe_reports_teacher_and_student_with_and_without(
        tmp_path, teacher, recipe, args, student):
    from tfcompress import datasets

    result = _run(f"--recipe={recipe}", f"--teacher={teacher}", "--temperature=3",
                  "--alpha=0.2", *args, f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-2000:]
    report = json.loads((tmp_path / "small_cnn_report.json").read_text())
    kd = report["distillation"]
    assert (kd["distill"], kd["temperature"], kd["alpha"]) == ("logits", 3.0, 0.2)
    _, (x_test, y_test) = datasets.load("digits")
    assert kd["teacher_accuracy"] == pytest.approx(_accuracy(teacher, x_test, y_test))
    assert kd["student_with_kd"] == pytest.approx(_accuracy(tmp_path / student, x_test, y_test))
    assert 0 < kd["student_without_kd"] <= 1
    for line in ("teacher test accuracy", "student test accuracy without KD",
                 "student test accuracy with KD (logits, T=3)"):
        assert line in result.stdout


def test_hints_and_deep_compression_with_a_teacher(tmp_path, teacher):
    result = _run(f"--teacher={teacher}", "--distill=hints", "--hint_layers=relu2:relu2",
                  "--epochs=2", "--quantize=none", f"--output_dir={tmp_path / 'hints'}")
    assert result.returncode == 0, result.stderr[-3000:]
    kd = json.loads((tmp_path / "hints" / "small_cnn_report.json").read_text())["distillation"]
    assert kd["distill"] == "hints" and kd["hint_layers"] == "relu2:relu2"
    result = _run("--recipe=deep_compression", f"--teacher={teacher}", "--epochs=2",
                  "--prune_epochs=1", "--retrain_epochs=0", "--finetune_epochs=1",
                  "--quantize=none", f"--output_dir={tmp_path / 'dc'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "dc" / "small_cnn_report.json").read_text())
    assert report["distillation"]["student_with_kd"] == pytest.approx(
        report["accuracy"]["clustered"])


@pytest.mark.parametrize("args, text", [
    (["--distill=hints"], "--teacher"),
    (["--alpha=0.5"], "--teacher"),
    (["--teacher=/no/such.keras"], "no such file"),
    (["--teacher={teacher}", "--temperature=0"], "--temperature=0.0: must be > 0"),
    (["--teacher={teacher}", "--hint_layers=a:b"], "--distill=hints only"),
    (["--teacher={teacher}", "--distill=hints", "--hint_layers=ab"], "TEACHER_LAYER:"),
    (["--teacher={teacher}", "--distill=hints", "--hint_layers=a:b",
      "--recipe=deep_compression"], "use --distill=logits"),
])
def test_distillation_flags_are_checked_first(tmp_path, teacher, args, text):
    args = [a.format(teacher=teacher) for a in args]
    result = _run(*args, f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_teacher_for_other_data_or_a_missing_hint_layer_is_a_clear_error(tmp_path, teacher):
    import keras

    other = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    other.save(tmp_path / "mnist_teacher.keras")
    result = _run(f"--teacher={tmp_path / 'mnist_teacher.keras'}", "--epochs=1",
                  f"--output_dir={tmp_path / 'a'}")
    assert result.returncode == 1
    assert "takes inputs of shape (28, 28, 1)" in result.stderr
    result = _run(f"--teacher={teacher}", "--distill=hints", "--hint_layers=nope:relu2",
                  "--epochs=1", f"--output_dir={tmp_path / 'b'}")
    assert result.returncode == 1
    assert "No layer named 'nope' in the teacher" in result.stderr
