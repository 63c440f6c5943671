"""Checks an int8 `.tflite` file for a microcontroller and writes it as C source.

For `--target=micro` (TensorFlow Lite Micro, `pip install tfcompress[micro]`) it
prints the file's operators, which of them TFLM lacks (by name, before anything
runs), the smallest tensor arena the file allocates and runs in (bytes, what the
firmware declares as `alignas(16) uint8_t arena[N]`), the flash it takes (the
file's bytes), and the parity of TFLM's outputs against LiteRT's reference
kernels (BUILTIN_REF, the kernels TFLM's are ported from) and its optimized ones
on the dataset's test examples; with `--model`, against the Keras model too.
With `--c_out`, it writes `<c_out>/<name>.h` and `<c_out>/<name>.cc`
(`alignas(16) const unsigned char <name>[] = {...}; const unsigned int
<name>_len = ...;`), as TFLM's examples embed models.

Usage:
    python tools/deploy.py --tflite=compress_out/small_cnn_int8.tflite --target=micro
    python tools/deploy.py --tflite=m.tflite --target=micro --c_out=firmware --name=g_model
    python tools/deploy.py --tflite=m.tflite --model=m_qat.keras --dataset=digits --json=d.json

Exits with status 1 and a one-line message for a float file or an operator TFLM
lacks (named), status 2 for bad flags.
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
import re
import time

from absl import app, flags

from tfcompress.fileio import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite", None, "Path of the int8 .tflite file to deploy.")
flags.DEFINE_enum("target", "micro", ("micro",), "Where it runs: micro (TensorFlow Lite "
                  "Micro).")
flags.DEFINE_string("c_out", None, "Folder to write <name>.h and <name>.cc into (made if "
                    "missing); nothing is written without it.")
flags.DEFINE_string("name", "g_model", "C identifier of the model array in the C source.")
flags.DEFINE_string("model", None, "A .keras model (or .tfcz) the file was exported from, "
                    "to compare TFLM's outputs with.")
flags.DEFINE_string("dataset", "digits", "Test examples for the parity checks: digits "
                    "(shipped, offline), mnist or fashion_mnist.")
flags.DEFINE_string("data_dir", None, "Folder with <dataset>.npz; default $TFCOMPRESS_DATA_DIR.")
flags.DEFINE_integer("limit", 200, "Test examples for the parity checks.", lower_bound=1)
flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


def check_flags(argv):
    """Every flag checked before any work (`tfcompress.cli.run` calls it)."""
    from tfcompress import cli

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.tflite:
        raise app.UsageError("give --tflite=path.tflite (an int8 file, e.g. from "
                             "tools/compress.py).")
    check_file(FLAGS.tflite, "tflite")
    if FLAGS.model:
        check_file(FLAGS.model, "model")
        if not FLAGS.model.endswith((".keras", ".tfcz")):
            raise app.UsageError(f"--model={FLAGS.model}: expected a .keras model or a .tfcz "
                                 "container.")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", FLAGS.name):
        raise app.UsageError(f"--name={FLAGS.name}: not a C identifier (a letter or _, then "
                             "letters, digits or _).")
    if FLAGS.c_out and os.path.exists(FLAGS.c_out) and not os.path.isdir(FLAGS.c_out):
        raise app.UsageError(f"--c_out={FLAGS.c_out}: exists and is not a folder.")
    cli.check_dataset(FLAGS.dataset, FLAGS.data_dir)
    cli.check_json_path(FLAGS.json)


def _steps(a, b):
    """(largest difference in output steps, fraction of elements equal) of raw outputs."""
    import numpy as np

    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return int(diff.max()), float(np.mean(diff == 0))


def main(argv):
    del argv
    import numpy as np

    from tfcompress import cli, datasets, export

    with open(FLAGS.tflite, "rb") as f:
        tflite_bytes = f.read()
    lite_in, lite_out = tflite_io(FLAGS.tflite, tflite_bytes)
    info = datasets.info(FLAGS.dataset)
    signature = lite_in.get("shape_signature", lite_in["shape"])
    check_fits(".tflite", FLAGS.tflite, [int(d) for d in signature[1:]],
               int(lite_out["shape"][-1]), FLAGS.dataset, tuple(info["input_shape"]),
               info["num_classes"])
    model = None
    if FLAGS.model:
        model = load_keras(FLAGS.model)

    from ai_edge_litert.interpreter import Interpreter

    names = [op["op_name"] for op in Interpreter(model_content=tflite_bytes)._get_ops_details()]
    counts = {n: names.count(n) for n in sorted(set(names))}
    missing = export.check_micro(tflite_bytes)
    print(f"{FLAGS.tflite}: {len(tflite_bytes)} bytes, {len(names)} operators", flush=True)
    print("  operators:  " + ", ".join(f"{n} x{c}" for n, c in counts.items()))
    print("  TFLM lacks: " + (", ".join(missing) if missing else "nothing (every operator "
                                                                   "has a TFLM kernel)"))
    if missing:
        raise ValueError(f"{FLAGS.tflite} cannot run on TFLM: no kernel for "
                         f"{', '.join(missing)}.")
    export.check_integer_only(tflite_bytes, model)  # names a float op and its layer

    arena = export.micro_arena_size(tflite_bytes)
    runner = export.MicroRunner(tflite_bytes, arena_size=arena)
    _, test = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
    x, y = test[0][: FLAGS.limit], test[1][: FLAGS.limit]
    start = time.perf_counter()
    probs, micro = export.run_tflite(tflite_bytes, x, runner=runner)
    micro_ms = 1000 * (time.perf_counter() - start) / len(x)
    _, reference = export.run_tflite(tflite_bytes, x, runner="litert_ref")
    _, optimized = export.run_tflite(tflite_bytes, x, runner="litert")
    ref_steps, ref_equal = _steps(micro, reference)
    opt_steps, opt_equal = _steps(micro, optimized)
    accuracy = float(np.mean(probs.argmax(-1) == y))
    report = {
        "tflite": FLAGS.tflite,
        "target": FLAGS.target,
        "flash_bytes": len(tflite_bytes),
        "arena_bytes": arena,
        "operators": counts,
        "tflm_lacks": missing,
        "examples": len(x),
        "tflm_accuracy": accuracy,
        "tflm_ms_per_example": round(micro_ms, 3),
        "vs_litert_reference": {"max_diff_steps": ref_steps, "equal": ref_equal},
        "vs_litert": {"max_diff_steps": opt_steps, "equal": opt_equal},
        "vs_keras": None,
        "c_source": None,
    }
    rows = [
        ("flash (file bytes)", f"{len(tflite_bytes)}"),
        ("tensor arena", (f"{arena} bytes (smallest that allocates and runs, 16-byte "
                         "aligned)")),
        (f"TFLM on {FLAGS.dataset}", (f"{accuracy:.4f} accuracy on {len(x)} test examples, "
                                    f"{micro_ms:.2f} ms/example (reference kernels, this CPU)")),
        ("TFLM vs LiteRT reference", f"{ref_equal:.2%} equal, at most {ref_steps} step(s)"),
        ("TFLM vs LiteRT", f"{opt_equal:.2%} equal, at most {opt_steps} step(s)"),
    ]
    if model is not None:
        check = export.verify(tflite_bytes, model, x, runner=runner)
        report["vs_keras"] = check
        if "within_1_step" in check:
            rows.append(("TFLM vs Keras", (f"{check['within_1_step']:.2%} within 1 step, at "
                                          f"most {check['max_diff_steps']:.2f} steps")))
        else:
            rows.append(("TFLM vs Keras", f"max |diff| {check['max_abs_diff']:.2e}"))
    if FLAGS.c_out:
        with cli.Outputs(FLAGS.c_out) as out:
            header = out.path(f"{FLAGS.name}.h", "the header: extern declarations")
            out.path(f"{FLAGS.name}.cc", "the model as an alignas(16) byte array")
            export.to_c_source(tflite_bytes, header[: -len(".h")], name=FLAGS.name)
        report["c_source"] = [out.final(f"{FLAGS.name}.h"), out.final(f"{FLAGS.name}.cc")]
        rows.append(("C source", " and ".join(report["c_source"])))
    cli.print_rows(rows)
    if FLAGS.json:
        write_atomic(FLAGS.json, json.dumps(report, indent=2))
        print(f"\nwrote {FLAGS.json}")


def run_tool(argv=None):
    """Runs this tool through the shared harness (`tfcompress.cli.run`)."""
    from tfcompress.cli import run

    run(main, check=check_flags, argv=argv)


if __name__ == "__main__":
    run_tool()
