"""Accuracy of a saved `.keras` model and/or a `.tflite` file on a dataset.

The `.keras` file is loaded with plain `keras.saving.load_model` (importing
tfcompress registers its layers) and run with Keras; the `.tflite` file is run
with LiteRT through `tfcompress.export.run_tflite`, which converts int8 inputs
and outputs with the file's own scale and zero point. When both are given, the
LiteRT-vs-Keras parity of `tfcompress.export.verify` is reported too.

`--model` also takes a `.tfcz` container (`coding.save_compressed`). When the
pair's parity is poor and the tools' report beside the `.tflite` names another
model as its source, the output says which model to compare it with.

Usage:
    python tools/evaluate.py --model=out/small_cnn.keras --dataset=digits
    python tools/evaluate.py --model=out/small_cnn_qat.keras --tflite=out/small_cnn_int8.tflite
    python tools/evaluate.py --model=out/lenet_300_100.tfcz
    python tools/evaluate.py --tflite=out/small_cnn_int8.tflite --dataset=digits
    python tools/evaluate.py --model=m.keras --tflite=m.tflite --json=eval.json
    python tools/evaluate.py --tflite=m.tflite --dataset=mnist --data_dir=data --limit=1000
"""

import os

if __package__:  # tfcompress <command>: the tools are the package tfcompress_tools
    from . import _quiet
    from ._files import check_file, check_fits, load_keras, tflite_io
else:  # python tools/<command>.py
    import _quiet
    from _files import check_file, check_fits, load_keras, tflite_io
_quiet.silence()

import json
import time

from absl import app, flags

from tfcompress.fileio import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Path of a .keras model to evaluate.")
flags.DEFINE_string("tflite", None, "Path of a .tflite file to evaluate with LiteRT.")
flags.DEFINE_string("dataset", "digits", "digits (shipped, offline), mnist or fashion_mnist.")
flags.DEFINE_string("data_dir", None, "Folder with <dataset>.npz; default $TFCOMPRESS_DATA_DIR.")
flags.DEFINE_enum("split", "test", ("test", "train"), "Which split to evaluate on.")
flags.DEFINE_integer("limit", None, "Evaluate on the first N examples only.", lower_bound=1)
flags.DEFINE_integer("batch_size", 256, "Examples per Keras / LiteRT batch.", lower_bound=1)
flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


def check_flags(argv):
    """Every flag checked before any work (`tfcompress.cli.run` calls it)."""
    from tfcompress import cli

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model and not FLAGS.tflite:
        raise app.UsageError("give --model=path (.keras or .tfcz) and/or --tflite=path.tflite.")
    if FLAGS.model:
        check_file(FLAGS.model, "model")
        if not FLAGS.model.endswith((".keras", ".tfcz")):
            raise app.UsageError(f"--model={FLAGS.model}: expected a .keras model or a .tfcz "
                                 "container.")
    if FLAGS.tflite:
        check_file(FLAGS.tflite, "tflite")
    cli.check_dataset(FLAGS.dataset, FLAGS.data_dir)
    cli.check_json_path(FLAGS.json)


def exported_from(tflite_path):
    """The model a `.tflite` file was exported from, as the tools' JSON reports record
    it (`<stem>_report.json` beside the file), or None."""
    import glob
    import re

    folder, name = os.path.split(os.path.abspath(tflite_path))
    for report_path in sorted(glob.glob(os.path.join(folder, "*_report.json"))):
        try:
            with open(report_path, encoding="utf-8") as f:
                files = json.load(f).get("files") or {}
        except (OSError, ValueError, AttributeError):
            continue
        purpose = files.get(name) if isinstance(files, dict) else None
        match = re.search(r"(?:exported|post-training) from (\S+\.keras)", purpose or "")
        if match:
            return os.path.join(os.path.dirname(tflite_path), match.group(1))
    return None


def main(argv):
    del argv
    import numpy as np

    from tfcompress import cli, datasets, export

    info = datasets.info(FLAGS.dataset)
    example_shape, num_classes = tuple(info["input_shape"]), info["num_classes"]

    # Check that everything fits the dataset before loading (or downloading) data.
    model = tflite_bytes = lite_in = lite_out = None
    if FLAGS.model:
        model = load_keras(FLAGS.model)
        check_fits("Keras model", FLAGS.model, model.inputs[0].shape[1:],
                   model.outputs[0].shape[-1], FLAGS.dataset, example_shape, num_classes)
    if FLAGS.tflite:
        with open(FLAGS.tflite, "rb") as f:
            tflite_bytes = f.read()
        lite_in, lite_out = tflite_io(FLAGS.tflite, tflite_bytes)
        signature = lite_in.get("shape_signature", lite_in["shape"])
        # LiteRT reports a dynamic batch as -1 (or, in `shape`, as 1): any batch size.
        check_fits(".tflite", FLAGS.tflite, [int(d) for d in signature[1:]],
                   int(lite_out["shape"][-1]), FLAGS.dataset, example_shape, num_classes)

    try:
        train, test = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise app.UsageError(f"--dataset={FLAGS.dataset}: {err}") from err
    x, y = train if FLAGS.split == "train" else test
    if FLAGS.limit is not None:
        x, y = x[: FLAGS.limit], y[: FLAGS.limit]
    print(f"{FLAGS.dataset} {FLAGS.split}: {len(x)} examples of shape {x.shape[1:]}",
          flush=True)

    report = {
        "dataset": FLAGS.dataset,
        "split": FLAGS.split,
        "examples": len(x),
        "keras": None,
        "tflite": None,
        "parity": None,
    }
    rows = [("dataset", f"{FLAGS.dataset} ({FLAGS.split}, {len(x)} examples)")]
    if model is not None:
        start = time.perf_counter()
        probs = np.asarray(model.predict(x, batch_size=FLAGS.batch_size, verbose=0))
        seconds = time.perf_counter() - start
        correct = int(np.sum(probs.argmax(-1) == y))
        report["keras"] = {
            "path": FLAGS.model,
            "accuracy": correct / len(x),
            "correct": correct,
            "seconds": round(seconds, 3),
            "bytes": os.path.getsize(FLAGS.model),
        }
        rows += [
            ("Keras model", FLAGS.model),
            ("Keras accuracy", f"{correct / len(x):.4f} ({correct}/{len(x)})"),
        ]
    if tflite_bytes is not None:
        start = time.perf_counter()
        probs, _ = export.run_tflite(tflite_bytes, x, batch_size=FLAGS.batch_size)
        seconds = time.perf_counter() - start
        correct = int(np.sum(probs.argmax(-1) == y))
        in_dtype, out_dtype = np.dtype(lite_in["dtype"]).name, np.dtype(lite_out["dtype"]).name
        report["tflite"] = {
            "path": FLAGS.tflite,
            "accuracy": correct / len(x),
            "correct": correct,
            "seconds": round(seconds, 3),
            "bytes": len(tflite_bytes),
            "input_dtype": in_dtype,
            "output_dtype": out_dtype,
        }
        rows += [
            (".tflite file", f"{FLAGS.tflite} ({in_dtype} in, {out_dtype} out)"),
            (".tflite accuracy", f"{correct / len(x):.4f} ({correct}/{len(x)})"),
        ]
    hint = None
    if model is not None and tflite_bytes is not None:
        check = export.verify(tflite_bytes, model, x, batch_size=FLAGS.batch_size)
        report["parity"] = check
        source = exported_from(FLAGS.tflite)
        poor = (check.get("within_1_step", 1.0) < 0.99
                or (check.get("argmax_agreement") or 1.0) < 0.99)
        if source is not None:
            report["tflite"]["exported_from"] = source
            if poor and os.path.abspath(source) != os.path.abspath(FLAGS.model):
                hint = (f"parity is poor: {FLAGS.tflite} was exported from {source}, not "
                        f"from {FLAGS.model}; compare it with --model={source}")
        rows += [
            ("accuracy difference (.tflite - Keras)",
             f"{report['tflite']['accuracy'] - report['keras']['accuracy']:+.4f}"),
            ("parity max |diff|", f"{check['max_abs_diff']:.2e}"),
            ("parity mean |diff|", f"{check['mean_abs_diff']:.2e}"),
        ]
        if check.get("argmax_agreement") is not None:
            rows.append(("parity argmax agreement", f"{check['argmax_agreement']:.4f}"))
        if "max_diff_steps" in check:
            rows += [
                ("parity max diff (output steps)", f"{check['max_diff_steps']:.2f}"),
                ("parity within 1 step", f"{check['within_1_step']:.4f}"),
            ]

    cli.print_rows(rows)
    if hint:
        print(f"\nnote: {hint}")
    if FLAGS.json:
        write_atomic(FLAGS.json, json.dumps(report, indent=2))
        print(f"\nwrote {FLAGS.json}")


def run_tool(argv=None):
    """Runs this tool through the shared harness (`tfcompress.cli.run`)."""
    from tfcompress.cli import run

    run(main, check=check_flags, argv=argv)


if __name__ == "__main__":
    run_tool()
