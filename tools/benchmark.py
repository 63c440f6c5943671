"""LiteRT latency, size and operators of one or more `.tflite` files.

Each file runs in `ai_edge_litert.interpreter.Interpreter` with `--threads`
threads on random inputs of its own input dtype and shape (integer inputs are
drawn over their whole range, float inputs uniformly in [0, 1), the range of
`tfcompress.datasets`). After `--warmup` untimed calls, `--runs` calls of
`invoke()` are timed; the median, 10th and 90th percentiles are reported in
milliseconds. With several files, speed and size are also given relative to the
first (e.g. an int8 file against its float original).

Usage:
    python tools/benchmark.py --tflite=out/small_cnn_float.tflite
    python tools/benchmark.py --tflite=float.tflite --tflite=int8.tflite --json=bench.json
    python tools/benchmark.py --tflite=int8.tflite --threads=4 --runs=200 --warmup=20 --batch=8
"""

import os
import sys

if __package__:  # tfcompress <command>: the tools are the package tfcompress_tools
    from . import _quiet
else:  # python tools/<command>.py
    import _quiet
_quiet.silence()

import collections
import json
import time

from absl import app, flags

from tfcompress.fileio import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("tflite", None, "A .tflite file to benchmark; repeat for several.")
flags.DEFINE_integer("threads", 1, "Interpreter threads (num_threads).", lower_bound=1)
flags.DEFINE_integer("runs", 50, "Timed invocations per file.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untimed invocations before timing.", lower_bound=0)
flags.DEFINE_integer("batch", 1, "Batch size of the input tensors.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the random inputs.")
flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


def random_input(detail, shape, rng):
    """Random values of the tensor's dtype: integers over their range, floats in [0, 1)."""
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.bits <= 16:
            return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        # Wide integer inputs are usually indices or lengths: keep them small.
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.random(size=shape).astype(dtype)


def op_summary(op_names):
    """'CONV_2D x2, MEAN, ...' in order of first appearance."""
    counts = collections.Counter(op_names)
    seen = list(dict.fromkeys(op_names))
    return ", ".join(name if counts[name] == 1 else f"{name} x{counts[name]}" for name in seen)


def benchmark_file(path, threads, runs, warmup, batch, rng):
    """Times one `.tflite` file; returns a dict of its numbers."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    with open(path, "rb") as f:
        content = f.read()
    try:
        interpreter = Interpreter(model_content=content, num_threads=threads)
        # The file's own operators; after allocate_tensors() the default (XNNPACK)
        # delegate adds DELEGATE nodes for the parts it takes over.
        ops = [op["op_name"] for op in interpreter._get_ops_details()]
        for detail in interpreter.get_input_details():
            shape = [int(d) for d in detail["shape"]]
            if shape and shape[0] != batch:
                interpreter.resize_tensor_input(detail["index"], [batch] + shape[1:])
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise app.UsageError(
            f"--tflite={path}: could not load it with LiteRT at batch {batch} "
            f"({type(err).__name__}: {err})."
        ) from err
    inputs = interpreter.get_input_details()
    for detail in inputs:
        shape = tuple(int(d) for d in detail["shape"])
        interpreter.set_tensor(detail["index"], random_input(detail, shape, rng))

    for _ in range(warmup):
        interpreter.invoke()
    times_ms = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        times_ms.append((time.perf_counter_ns() - start) / 1e6)
    # Read after invoke(): a dynamic-shape output gets its shape at run time.
    outputs = interpreter.get_output_details()
    for detail in outputs:
        interpreter.get_tensor(detail["index"])

    after = [op["op_name"] for op in interpreter._get_ops_details()]
    delegate_nodes = sum(name == "DELEGATE" for name in after)
    # What is left beside the DELEGATE nodes runs on LiteRT's builtin kernels.
    undelegated = [name for name in after if name != "DELEGATE"]
    times = np.asarray(times_ms)
    return {
        "path": path,
        "bytes": os.path.getsize(path),
        "median_ms": float(np.median(times)),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "num_ops": len(ops),
        "ops": dict(collections.Counter(ops)),
        "op_summary": op_summary(ops),
        "delegate_nodes": delegate_nodes,
        "undelegated_ops": dict(collections.Counter(undelegated)),
        "undelegated_summary": op_summary(undelegated),
        "inputs": [
            {"dtype": np.dtype(d["dtype"]).name, "shape": [int(s) for s in d["shape"]],
             "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]}
            for d in inputs
        ],
        "outputs": [
            {"dtype": np.dtype(d["dtype"]).name, "shape": [int(s) for s in d["shape"]],
             "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]}
            for d in outputs
        ],
    }


def print_table(header, rows):
    """Prints rows of strings in left-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(f"{cell!s:<{w}}" for cell, w in zip(row, widths)).rstrip())


def check_flags(argv):
    """Every flag checked before any work (`tfcompress.cli.run` calls it)."""
    from tfcompress import cli

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    paths = FLAGS.tflite or []
    if not paths:
        raise app.UsageError("give at least one --tflite=path.tflite.")
    for path in paths:
        if not os.path.isfile(path):
            raise app.UsageError(
                f"--tflite={path}: " + ("not a file." if os.path.exists(path) else "no such file.")
            )
    cli.check_json_path(FLAGS.json)


def main(argv):
    del argv
    paths = FLAGS.tflite

    import numpy as np

    results = []
    for i, path in enumerate(paths):
        print(f"[{i + 1}/{len(paths)}] {path}: {FLAGS.warmup} warm-up + {FLAGS.runs} runs, "
              f"{FLAGS.threads} thread(s), batch {FLAGS.batch}", file=sys.stderr, flush=True)
        results.append(benchmark_file(path, FLAGS.threads, FLAGS.runs, FLAGS.warmup,
                                      FLAGS.batch, np.random.default_rng(FLAGS.seed)))
    first = results[0]
    for result in results:
        result["speedup_vs_first"] = first["median_ms"] / result["median_ms"]
        result["size_vs_first"] = result["bytes"] / first["bytes"]

    def io_types(result):
        return (",".join(t["dtype"] for t in result["inputs"]) + " -> "
                + ",".join(t["dtype"] for t in result["outputs"]))

    names = [os.path.basename(r["path"]) for r in results]
    if len(set(names)) < len(names):
        names = [r["path"] for r in results]
    header = ["file", "bytes", "ops", "in -> out", "median ms", "p10 ms", "p90 ms"]
    if len(results) > 1:
        header += ["speed-up", "size ratio"]
    rows = []
    for name, r in zip(names, results):
        row = [name, f"{r['bytes']:,}", str(r["num_ops"]), io_types(r),
               f"{r['median_ms']:.4f}", f"{r['p10_ms']:.4f}", f"{r['p90_ms']:.4f}"]
        if len(results) > 1:
            row += [f"{r['speedup_vs_first']:.2f}x", f"{r['size_vs_first']:.3f}"]
        rows.append(row)
    print(f"LiteRT, {FLAGS.threads} thread(s), batch {FLAGS.batch}, "
          f"{FLAGS.runs} runs after {FLAGS.warmup} warm-up")
    print_table(header, rows)
    if len(results) > 1:
        print(f"(speed-up = median of {names[0]} / median of the file; "
              f"size ratio = bytes of the file / bytes of {names[0]})")
    print()
    for name, r in zip(names, results):
        print(f"{name}: {r['num_ops']} operators: {r['op_summary']} "
              f"({r['delegate_nodes']} delegate node(s) at run time)")
    for name, r in zip(names[1:], results[1:]):
        if r["speedup_vs_first"] >= 1.0:
            continue
        why = (f"XNNPACK did not take {r['undelegated_summary']}, which ran on LiteRT's "
               "builtin kernels" if r["undelegated_ops"] else
               "XNNPACK took every operator, so the difference is in its own kernels "
               "(for small layers int8 saves less than its requantization costs)")
        print(f"note: {name} is slower than {names[0]} ({r['speedup_vs_first']:.2f}x): {why}.")

    if FLAGS.json:
        from importlib import metadata

        try:
            litert_version = metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:
            litert_version = None
        report = {
            "threads": FLAGS.threads,
            "runs": FLAGS.runs,
            "warmup": FLAGS.warmup,
            "batch": FLAGS.batch,
            "seed": FLAGS.seed,
            "ai_edge_litert": litert_version,
            "files": results,
        }
        write_atomic(FLAGS.json, json.dumps(report, indent=2))
        print(f"\nwrote {FLAGS.json}")


def run_tool(argv=None):
    """Runs this tool through the shared harness (`tfcompress.cli.run`)."""
    from tfcompress.cli import run

    run(main, check=check_flags, argv=argv)


if __name__ == "__main__":
    run_tool()
