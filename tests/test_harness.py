"""The command-line harness (`tfcompress.cli`): one-line usage errors with exit code 2,
`--help` exit 0, no native log lines, nothing left behind on failure, every file listed.

The tools run as subprocesses (as a user runs them), so these tests are `slow`; the
`Outputs` unit tests at the end are not.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE_LOG_MARKS = ("I0000", "W0000", "E0000", "oneDNN", "cuInit", "cuda", "absl::",
                    "XNNPACK delegate", "fully_quantize")


def _run(tool, *args, timeout=300, verbose=False):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the harness silences TensorFlow itself
    command = [sys.executable, os.path.join(ROOT, "tools", tool), *args]
    if verbose:
        command.append("--verbose")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False, cwd=ROOT)


def _one_line_error(result, *texts, code=2):
    """The tool failed with `code` and exactly one line on stderr naming `texts`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    hint = lines[1:] == [f"{lines[0].split(':')[0]}: run again with --verbose for the traceback"]
    assert len(lines) == 1 or (code == 1 and hint), lines  # a failure may add the hint
    assert ": error: " in lines[0], lines
    for text in texts:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny trained classifier on the digits and its files, written in-process."""
    import keras

    import tfcompress
    from tfcompress import coding, datasets, export

    folder = tmp_path_factory.mktemp("harness")
    keras.utils.set_random_seed(0)
    (x, y), _ = datasets.load("digits")
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(folder / "tiny.keras")
    qat = tfcompress.quantize_model(model)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, verbose=0)
    qat.save(folder / "tiny_qat.keras")
    (folder / "tiny_int8.tflite").write_bytes(export.to_tflite(qat, x[:64]))
    (folder / "tiny_float.tflite").write_bytes(export.to_tflite(model, mode="float32"))
    coding.save_compressed(model, str(folder / "tiny.tfcz"))
    (folder / "tiny_report.json").write_text(json.dumps({"files": {
        "tiny_int8.tflite": "integer-only int8 file, exported from tiny_qat.keras"}}))
    data = (folder / "tiny.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(data[: len(data) // 3])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["compress.py", "evaluate.py", "benchmark.py",
                                  "inspect_file.py", "sensitivity.py", "deploy.py"])
def test_help_exits_zero_and_lists_the_flags(tool):
    result = _run(tool, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--verbose" in result.stdout and "Usage" in result.stdout
    assert not any(mark in result.stderr for mark in NATIVE_LOG_MARKS), result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("args", "texts"), [
    (["--clusters=1000000", "--sparsity=0.5"], ["--sparsity=0.5", "--recipe=default",
                                                 "--recipe=deep_compression"]),
    (["--recipe=channel_pruning", "--clusters=8"], ["--clusters=8", "deep_compression"]),
    (["--quantize=ptq", "--qat_epochs=3"], ["--qat_epochs=3", "--quantize=ptq"]),
    (["--dataset=nonexistent"], ["--dataset=nonexistent", "digits, mnist, fashion_mnist"]),
    (["--dataset=mnist", "--data_dir=/no/such/folder"], ["--data_dir=/no/such/folder"]),
    (["--recipe=deep_compression", "--clusters=1000000"], ["--clusters=1000000", "allowed: 2 to"]),
    (["--conv=adder"], ["--conv=adder", "resnet20"]),
    (["--width=0.5"], ["--width=0.5", "ghostnet"]),
    (["--load=/no/such.keras"], ["--load=/no/such.keras", "no such file"]),
    (["--epochs=-1"], ["--epochs=-1"]),
    (["--model=vgg"], ["vgg", "small_cnn"]),
    (["stray"], ["'stray'"]),
], ids=["flag-of-other-recipe", "clusters-with-channels", "qat-flag-with-ptq",
        "unknown-dataset", "missing-data-dir", "too-many-clusters", "conv-without-resnet",
        "width-without-ghostnet", "missing-load", "negative-epochs", "unknown-model",
        "stray-argument"])
def test_compress_usage_errors_are_one_line_and_leave_nothing(tmp_path, args, texts):
    out = tmp_path / "out"
    result = _run("compress.py", *args, f"--output_dir={out}")
    _one_line_error(result, *texts)
    assert not out.exists()  # checked before any work: no folder, no file
    assert result.stdout.count("[3/7] train") == 0


@pytest.mark.slow
def test_compress_truncated_load_is_named_and_leaves_nothing(files, tmp_path):
    out = tmp_path / "out"
    result = _run("compress.py", "--recipe=channel_pruning",
                  f"--load={files / 'truncated.keras'}", f"--output_dir={out}")
    _one_line_error(result, "truncated.keras", "not a valid .keras archive", code=1)
    assert not out.exists()


@pytest.mark.slow
def test_a_failure_keeps_an_existing_output_folder_as_it_was(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    result = _run("compress.py", "--recipe=channel_pruning",
                  f"--load={files / 'truncated.keras'}", f"--output_dir={out}")
    assert result.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "texts"), [
    ([], ["--model", "--tflite"]),
    (["--model={f}/truncated.keras"], ["truncated.keras", "not a valid .keras archive"]),
    (["--model={f}/tiny.keras", "--json=/no/such/folder/x.json"],
     ["--json=/no/such/folder/x.json", "does not exist"]),
    (["--model={f}/tiny.keras", "--dataset=nonexistent"], ["--dataset=nonexistent", "digits"]),
    (["--model={f}/tiny_report.json"], ["tiny_report.json", ".keras", ".tfcz"]),
], ids=["nothing-to-evaluate", "truncated-keras", "json-missing-folder", "bad-dataset",
        "not-a-model"])
def test_evaluate_usage_errors(files, args, texts):
    result = _run("evaluate.py", *(a.format(f=files) for a in args))
    _one_line_error(result, *texts)


@pytest.mark.slow
def test_evaluate_reads_a_tfcz_container(files):
    import keras

    import tfcompress  # noqa: F401
    from tfcompress import datasets

    out = files / "eval_tfcz.json"
    result = _run("evaluate.py", f"--model={files / 'tiny.tfcz'}", f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    _, (x_test, y_test) = datasets.load("digits")
    model = keras.saving.load_model(files / "tiny.keras")
    expected = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert report["keras"]["accuracy"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_evaluate_names_the_model_an_int8_file_was_exported_from(files):
    wrong = _run("evaluate.py", f"--model={files / 'tiny.keras'}",
                 f"--tflite={files / 'tiny_int8.tflite'}")
    assert wrong.returncode == 0, wrong.stderr[-2000:]
    assert "exported from" in wrong.stdout and "tiny_qat.keras" in wrong.stdout
    right = _run("evaluate.py", f"--model={files / 'tiny_qat.keras'}",
                 f"--tflite={files / 'tiny_int8.tflite'}")
    assert right.returncode == 0
    assert "note:" not in right.stdout  # its parity is good: nothing to point at


@pytest.mark.slow
def test_default_output_has_no_native_log_lines_and_verbose_has_them(files):
    quiet = _run("benchmark.py", f"--tflite={files / 'tiny_float.tflite'}", "--runs=3")
    assert quiet.returncode == 0
    assert not any(mark in quiet.stderr + quiet.stdout for mark in NATIVE_LOG_MARKS), (
        quiet.stderr)
    loud = _run("benchmark.py", f"--tflite={files / 'tiny_float.tflite'}", "--runs=3",
                verbose=True)
    assert loud.returncode == 0
    assert any(mark in loud.stderr for mark in NATIVE_LOG_MARKS), loud.stderr[-2000:]


@pytest.mark.slow
def test_a_damaged_container_is_one_line_naming_the_section(files):
    damaged = files / "damaged.tfcz"
    blob = bytearray((files / "tiny.tfcz").read_bytes())
    blob[-20] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    result = _run("inspect_file.py", str(damaged))
    _one_line_error(result, "damaged.tfcz", "CRC32", "section", code=1)


@pytest.mark.slow
def test_console_script_dispatches_and_rejects_unknown_commands(files):
    env = dict(os.environ, PYTHONPATH=ROOT)
    main = os.path.join(ROOT, "tools", "__main__.py")
    listed = subprocess.run([sys.executable, main, "--help"], capture_output=True, text=True,
                            env=env, check=False)
    assert listed.returncode == 0 and "compress" in listed.stdout
    unknown = subprocess.run([sys.executable, main, "squash"], capture_output=True,
                             text=True, env=env, check=False)
    assert unknown.returncode == 2 and "'squash'" in unknown.stderr
    shown = subprocess.run([sys.executable, main, "inspect", str(files / "tiny.tfcz")],
                           capture_output=True, text=True, env=env, check=False)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "every CRC32 checked" in shown.stdout


# ----------------------------------------------------------------- Outputs (in-process)


def test_outputs_moves_files_into_place_only_on_success(tmp_path):
    from tfcompress.cli import Outputs

    target = tmp_path / "out"
    with Outputs(str(target)) as out:
        with open(out.path("a.txt", "the first file"), "w") as f:
            f.write("a")
        assert not (target / "a.txt").exists()  # staged, not yet in place
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert "a.txt  the first file" in out.listing()


def test_outputs_leave_nothing_on_failure(tmp_path):
    from tfcompress.cli import Outputs

    target = tmp_path / "out"
    with pytest.raises(RuntimeError), Outputs(str(target)) as out:
        with open(out.path("a.txt", "never kept"), "w") as f:
            f.write("a")
        raise RuntimeError("boom")
    assert not target.exists()


def test_outputs_discard_forgets_a_file(tmp_path):
    from tfcompress.cli import Outputs

    with Outputs(str(tmp_path / "out")) as out:
        out.path("plot.png", "not drawn")
        out.discard("plot.png")
    assert out.files == {}


@pytest.mark.slow
def test_deploy_prints_the_arena_writes_c_source_and_compares(files, tmp_path):
    pytest.importorskip("tflite_micro")
    from tfcompress import export

    tflite = (files / "tiny_int8.tflite").read_bytes()
    result = _run("deploy.py", f"--tflite={files / 'tiny_int8.tflite'}",
                  f"--model={files / 'tiny_qat.keras'}", f"--c_out={tmp_path / 'fw'}",
                  "--name=tiny_model", f"--json={tmp_path / 'd.json'}", "--limit=50")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(mark in result.stderr for mark in NATIVE_LOG_MARKS), result.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["arena_bytes"] == export.micro_arena_size(tflite)
    assert f"{report['arena_bytes']} bytes" in result.stdout
    assert report["flash_bytes"] == len(tflite) and report["tflm_lacks"] == []
    assert report["vs_litert_reference"]["max_diff_steps"] <= 1
    assert report["vs_keras"]["within_1_step"] >= 0.99
    assert sorted(os.listdir(tmp_path / "fw")) == ["tiny_model.cc", "tiny_model.h"]
    source = (tmp_path / "fw" / "tiny_model.cc").read_text()
    body = source[source.index("{") + 1: source.rindex("}")]
    assert bytes(int(v, 16) for v in body.replace(",", " ").split()) == tflite


@pytest.mark.slow
@pytest.mark.parametrize(("args", "texts", "code"), [
    ([], ["--tflite=path.tflite"], 2),
    (["--tflite=/no/such.tflite"], ["--tflite=/no/such.tflite", "no such file"], 2),
    (["--tflite={float}", "--name=2model"], ["--name=2model", "C identifier"], 2),
    (["--tflite={float}", "--target=esp32"], ["--target", "micro"], 2),
    (["--tflite={float}", "--c_out={float}"], ["--c_out=", "not a folder"], 2),
    (["--tflite={float}"], ["integer-only", "CONV_2D"], 1),
], ids=["no-tflite", "missing-file", "bad-name", "unknown-target", "c-out-is-a-file",
        "float-file"])
def test_deploy_errors_are_one_line(files, tmp_path, args, texts, code):
    args = [a.format(float=files / "tiny_float.tflite") for a in args]
    result = _run("deploy.py", *args, f"--json={tmp_path / 'd.json'}")
    _one_line_error(result, *texts, code=code)
    assert not (tmp_path / "d.json").exists()

