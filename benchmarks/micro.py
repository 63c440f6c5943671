"""TensorFlow Lite Micro: flash, arena, latency and parity of the reference models' int8 files.

For each reference model of `tfcompress.models` (and one small AdderConv net), trained briefly,
the benchmark exports int8 files and measures them on TensorFlow Lite Micro (TFLM, the
`tflite-micro` package: `pip install tfcompress[micro]`) beside LiteRT:

    small_cnn_digits         small_cnn on the packaged 8x8 digits              PTQ and QAT
    lenet5_mnist             lenet5 on MNIST (28x28x1)                         PTQ
    lenet_300_100_mnist      lenet_300_100 on MNIST                            PTQ
    small_cnn_mnist          small_cnn on MNIST                                PTQ and QAT
    resnet20_fashion_mnist   resnet20(conv="conv", input_shape=(28, 28, 1))    PTQ
                             on Fashion-MNIST
    adder_cnn_digits         Conv-BN-ReLU -> AdderConv-BN-ReLU -> pooling ->   PTQ
                             Dense, on the digits (tfcompress.layers.AdderConv)

PTQ = `export.to_tflite(model, x_train[:256])` (full-integer post-training quantization, int8
input and output); QAT = `tfcompress.quantize_model(model)` fine-tuned `--qat_epochs` (Adam
1e-4, constant rate), then `export.to_tflite(qat)`. Per file:

    flash            the .tflite bytes (what a firmware stores in flash)
    arena            export.micro_arena_size(tflite): the smallest TFLM tensor arena the file
                     allocates and runs in (bytes, 16-byte aligned)
    latency          `runner.run({name: x_int8})` on one example, for the TFLM runner
                     (export.MicroRunner(tflite, arena_size=arena), reference kernels), LiteRT's
                     reference kernels (get_runner("litert_ref")) and LiteRT's optimized CPU
                     setup (get_runner("litert"), XNNPACK): `--latency_runs` different test
                     examples, the three runners timed round-robin on each example after
                     `--warmup` untimed calls each; the median per call (the Python wrapper of
                     each runner is included: it is what `run_tflite` and `verify` pay)
    parity           TFLM's raw int8 outputs on the evaluated test examples against LiteRT's
                     reference kernels (the kernels TFLM's are ported from) and against
                     LiteRT's optimized kernels: the fraction of equal outputs and the largest
                     difference in quantization steps
    top-1            the argmax of TFLM's outputs against the labels, on the first
                     `--test_examples` test images (the digits: all 360); the Keras model's
                     float accuracy on the same images beside it

The inputs are the float test images quantized with the file's input (scale, zero point)
(`export.runners.quantize`). TFLM runs the files with their batch of 1.

Run (from the repository root; mnist.npz and fashion_mnist.npz in the keras.datasets layout in
`--data_dir`, default $TFCOMPRESS_DATA_DIR):

    PYTHONPATH=. python3 benchmarks/micro.py --data_dir DIR                  # ~6-8 min, 2 cores
    PYTHONPATH=. python3 benchmarks/micro.py --quick                         # every model on
                                                                             # the digits, ~2 min
    PYTHONPATH=. python3 benchmarks/micro.py --data_dir DIR --output benchmarks/RESULTS.md

The report is markdown on stdout; `--output` also writes it into a file, replacing this
benchmark's section (between its BEGIN/END markers) or appending it if absent; `--json` writes
every number.
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from tfcompress import datasets, export, models, quantize_model
from tfcompress.export.runners import quantize
from tfcompress.layers import AdderConv
from tfcompress.pipelines.deep_compression import train_classifier

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN_MARK = "<!-- BEGIN benchmarks/micro.py -->"
END_MARK = "<!-- END benchmarks/micro.py -->"
SECTION_TITLE = "## TensorFlow Lite Micro (benchmarks/micro.py)"

REPRESENTATIVE_EXAMPLES = 256
QAT_LR = 1e-4
RUNNERS = (("micro", "TFLM"), ("litert_ref", "LiteRT ref"), ("litert", "LiteRT"))
INSTALL_HINT = ("benchmarks/micro.py needs TensorFlow Lite Micro's Python package: "
                "pip install tfcompress[micro] (or pip install tflite-micro)")


def adder_cnn(input_shape=(8, 8, 1), num_classes=10, width=16):
    """Conv(width, 3, s2)-BN-ReLU -> AdderConv(2*width, 3, s2)-BN-ReLU -> pooling -> Dense."""
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                            name="conv1")(inputs)
    x = keras.layers.BatchNormalization(momentum=models.BN_MOMENTUM, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = AdderConv(2 * width, 3, strides=2, name="adder2")(x)
    x = keras.layers.BatchNormalization(momentum=models.BN_MOMENTUM, name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="adder_cnn")


# key: (label, builder(input_shape), dataset of the default run, learning rate, QAT row)
SPECS = {
    "small_cnn_digits": ("small_cnn", lambda s: models.small_cnn(s, 10), "digits", 1e-3, True),
    "lenet5_mnist": ("lenet5", lambda s: models.lenet5(s, 10), "mnist", 1e-3, False),
    "lenet_300_100_mnist": ("lenet_300_100", lambda s: models.lenet_300_100(s, 10), "mnist",
                            1e-3, False),
    "small_cnn_mnist": ("small_cnn", lambda s: models.small_cnn(s, 10), "mnist", 1e-3, True),
    "resnet20_fashion_mnist": ("resnet20", lambda s: models.resnet20("conv", input_shape=s,
                                                                     num_classes=10),
                               "fashion_mnist", 1e-3, False),
    # AdderConv trains slowly at Adam 1e-3 (about 50% after 10 digits epochs); 1e-2 is used.
    "adder_cnn_digits": ("adder_cnn (AdderConv)", lambda s: adder_cnn(s, 10), "digits", 1e-2,
                         False),
}


# --------------------------------------------------------------------------- arguments


def _load_benchmark(name):
    """A sibling benchmark module (layers.py: machine lines, git state and write_section)."""
    spec = importlib.util.spec_from_file_location(
        f"tfcompress_benchmarks_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get(datasets.ENV_VAR) or None,
        help=f"folder holding mnist.npz and fashion_mnist.npz (default ${datasets.ENV_VAR}; "
        "not needed with --quick, which runs every model on the packaged 8x8 digits)",
    )
    parser.add_argument("--models", default=",".join(SPECS),
                        help=f"comma-separated subset of {', '.join(SPECS)}")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs on MNIST / Fashion-MNIST (2)")
    parser.add_argument("--digits_epochs", type=int, default=None,
                        help="training epochs on the 1437 digits (20; --quick: 5)")
    parser.add_argument("--qat_epochs", type=int, default=1,
                        help="QAT fine-tuning epochs of the QAT rows (1)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--train_examples", type=int, default=20000,
                        help="MNIST / Fashion-MNIST: train on the first N images (20000; 0: all)")
    parser.add_argument("--test_examples", type=int, default=None,
                        help="parity and top-1 on the first N test images (2000; 0: all; the "
                        "digits have 360)")
    parser.add_argument("--latency_runs", type=int, default=None,
                        help="single examples timed per runner and file (50; --quick: 10)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed single-example calls per runner before timing (3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_dir", default=None, help="keep every .tflite file here")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: every model on the packaged 8x8 digits, short "
                        "schedules, 10 latency samples")
    parser.add_argument("--output", default=None,
                        help="markdown file to write this benchmark's section into")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"epochs": 2, "digits_epochs": 5, "test_examples": 0, "latency_runs": 10}
    else:
        defaults = {"epochs": 2, "digits_epochs": 20, "test_examples": 2000, "latency_runs": 50}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epochs", "digits_epochs", "qat_epochs", "train_examples", "test_examples",
                 "warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("latency_runs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(SPECS)}")
    args.models = names
    args.datasets = {k: "digits" if args.quick else SPECS[k][2] for k in names}
    needed = sorted({d for d in args.datasets.values() if d != "digits"})
    if needed:
        if not args.data_dir:
            parser.error(f"{' / '.join(needed)} not found: give --data_dir (a folder holding "
                         f"{', '.join(n + '.npz' for n in needed)}) or set ${datasets.ENV_VAR}; "
                         "or --quick for the packaged digits.")
        for name in needed:
            path = os.path.join(args.data_dir, f"{name}.npz")
            if not os.path.isfile(path):
                parser.error(f"{name} not found: no file {os.path.abspath(path)} (from "
                             f"--data_dir / ${datasets.ENV_VAR}={args.data_dir!r}).")
    return args


def _log(message):
    print(f"[micro] {message}", file=sys.stderr, flush=True)


def _error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()


def _check_tflite_micro():
    """Exits with the install hint when tflite_micro cannot be imported."""
    try:
        from tflite_micro import runtime  # noqa: F401
    except ImportError as exc:
        sys.exit(f"{INSTALL_HINT} ({_error_text(exc)})")


# --------------------------------------------------------------------------- measurement


def load_data(name, args, cache):
    if name not in cache:
        data_dir = None if name == "digits" else args.data_dir
        (x, y), (xt, yt) = datasets.load(name, data_dir=data_dir)
        if name != "digits" and args.train_examples:
            x, y = x[: args.train_examples], y[: args.train_examples]
        if args.test_examples:
            xt, yt = xt[: args.test_examples], yt[: args.test_examples]
        cache[name] = (x, y), (xt, yt)
        _log(f"{name}: {len(x)} training / {len(xt)} test images of {x.shape[1:]}")
    return cache[name]


def _accuracy(model, xt, yt):
    probs = model.predict(xt, batch_size=512, verbose=0)
    return float(np.mean(np.asarray(probs).argmax(-1) == yt))


def _stats(seconds):
    ms = [s * 1e3 for s in seconds]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "samples": len(ms)}


def measure_file(label, blob, xt, yt, args, row):
    """Flash, arena, the three runners' single-example latency, parity and TFLM top-1."""
    seconds = row.setdefault("seconds", {})
    row["flash_bytes"] = len(blob)
    start = time.perf_counter()
    row["arena_bytes"] = export.micro_arena_size(blob)
    seconds["arena_search"] = time.perf_counter() - start
    _log(f"{label}: {row['flash_bytes']:,} bytes, arena {row['arena_bytes']:,} bytes "
         f"(searched in {seconds['arena_search']:.1f} s)")

    runners = {"micro": export.MicroRunner(blob, arena_size=row["arena_bytes"])}
    for name, _ in RUNNERS[1:]:
        runners[name] = export.get_runner(name)(blob)
    micro = runners["micro"]
    if len(micro.input_names) != 1 or len(micro.output_names) != 1:
        raise ValueError(f"expected one input and one output, got {micro.input_names} -> "
                         f"{micro.output_names}")
    (name,) = micro.input_names
    detail = micro.input_details[name]
    row["tflm_input_shape"] = [int(d) for d in detail["shape"]]
    row["input_quantization"] = [float(v) for v in detail["quantization"]]
    xq = quantize(xt, detail)

    # Latency: one example per call, the three runners round-robin on each example. Beside
    # each run() call, the bare invoke() of the same kernels with the input already set:
    # TFLM's interpreter inside the MicroRunner, and a LiteRT Interpreter of the same
    # OpResolverType as the runner (its signature runner does not expose invoke()).
    start = time.perf_counter()
    runs = min(args.latency_runs, len(xq))
    invokers = {"micro": (lambda one: micro.interpreter.set_input(one, 0),
                          micro.interpreter.invoke)}
    for key in ("litert_ref", "litert"):
        invokers[key] = _bare_litert(blob, runners[key].op_resolver)
    samples = {key: [] for key in runners}
    bare = {key: [] for key in runners}
    singles = {key: [] for key in runners}
    for key, runner in runners.items():
        for i in range(args.warmup):
            runner.run({name: xq[i % len(xq)][None]})
            invokers[key][0](xq[i % len(xq)][None])
            invokers[key][1]()
    for i in range(runs):
        one = {name: xq[i][None]}
        for key, runner in runners.items():
            begin = time.perf_counter()
            (out,) = runner.run(one)
            samples[key].append(time.perf_counter() - begin)
            singles[key].append(out)
            set_input, invoke = invokers[key]
            set_input(xq[i][None])
            begin = time.perf_counter()
            invoke()
            bare[key].append(time.perf_counter() - begin)
    for key in runners:
        row[f"{key}_latency_ms"] = _stats(samples[key])
        row[f"{key}_invoke_ms"] = _stats(bare[key])
    seconds["latency"] = time.perf_counter() - start

    # Parity and top-1 on the evaluated test images: TFLM example by example (its file has a
    # batch of 1), LiteRT in batches of 256 (its signature runner resizes the batch).
    start = time.perf_counter()
    (tflm,) = micro.run({name: xq})
    seconds["tflm_outputs"] = time.perf_counter() - start
    start = time.perf_counter()
    others = {}
    for key in ("litert_ref", "litert"):
        others[key] = np.concatenate([runners[key].run({name: xq[i:i + 256]})[0]
                                      for i in range(0, len(xq), 256)])
    seconds["litert_outputs"] = time.perf_counter() - start
    # The timed single-example outputs must be those of the batched runs compared below.
    row["single_matches_batched"] = all(
        np.array_equal(np.concatenate(singles[key]), full[:runs])
        for key, full in (("micro", tflm), *others.items()))
    for key, raw in others.items():
        steps = np.abs(tflm.astype(np.int64) - raw.astype(np.int64))
        row[f"equal_{key}"] = float(np.mean(steps == 0))
        row[f"max_steps_{key}"] = int(steps.max())
        row[f"{key}_top1"] = float(np.mean(raw.argmax(-1) == yt))
    row["tflm_top1"] = float(np.mean(tflm.argmax(-1) == yt))
    row["outputs_compared"] = int(tflm.size)
    row["test_examples"] = len(xt)
    lat = {k: row[f"{k}_latency_ms"]["median"] for k in runners}
    _log(f"{label}: TFLM {lat['micro']:.3f} ms, LiteRT ref {lat['litert_ref']:.3f} ms, "
         f"LiteRT {lat['litert']:.3f} ms per example; TFLM top-1 {row['tflm_top1']:.4f}, "
         f"{100 * row['equal_litert_ref']:.2f}% equal to LiteRT ref (max "
         f"{row['max_steps_litert_ref']} step(s))")


def _bare_litert(blob, op_resolver):
    """(set_input(x), invoke) of a LiteRT Interpreter on `blob` with that OpResolverType."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=blob, experimental_op_resolver_type=getattr(
        OpResolverType, op_resolver))
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    return (lambda one: interpreter.set_tensor(detail["index"], one)), interpreter.invoke


def _save(args, label, blob):
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        safe = "".join(ch if ch.isalnum() else "_" for ch in label)
        with open(os.path.join(args.save_dir, f"{safe}.tflite"), "wb") as f:
            f.write(blob)


def run_model(key, args, cache):
    """Trains one model, exports its file(s) and measures them; a list of table rows."""
    label, build, _, lr, qat = SPECS[key]
    dataset = args.datasets[key]
    (x, y), (xt, yt) = load_data(dataset, args, cache)
    epochs = args.digits_epochs if dataset == "digits" else args.epochs
    keras.utils.set_random_seed(args.seed)
    model = build(x.shape[1:])
    _log(f"{key}: training {epochs} epoch(s) on {len(x)} {dataset} images (Adam {lr:g}, cosine)")
    start = time.perf_counter()
    train_classifier(model, x, y, epochs, lr, batch_size=args.batch_size, seed=[args.seed, 0])
    train_s = time.perf_counter() - start
    keras_top1 = _accuracy(model, xt, yt)
    _log(f"{key}: trained in {train_s:.1f} s, Keras top-1 {keras_top1:.4f}")
    rows = []
    for kind in ("PTQ", "QAT") if qat else ("PTQ",):
        row = {"key": key, "model": label, "dataset": dataset, "input": list(x.shape[1:]),
               "export": kind, "params": int(model.count_params()), "errors": {},
               "seconds": {"train": train_s} if kind == "PTQ" else {},
               "keras_top1": keras_top1 if kind == "PTQ" else None, "epochs": epochs}
        rows.append(row)
        try:
            if kind == "QAT":
                start = time.perf_counter()
                qmodel = quantize_model(model)
                train_classifier(qmodel, x, y, args.qat_epochs, QAT_LR, batch_size=args.batch_size,
                                 learning_rate_decay="constant", seed=[args.seed, 1])
                row["seconds"]["train"] = time.perf_counter() - start
                row["keras_top1"] = _accuracy(qmodel, xt, yt)
                row["epochs"] = args.qat_epochs
                _log(f"{key}: QAT {args.qat_epochs} epoch(s) in {row['seconds']['train']:.1f} s, "
                     f"Keras top-1 (fake-quant) {row['keras_top1']:.4f}")
            start = time.perf_counter()
            if kind == "QAT":
                blob = export.to_tflite(qmodel)
            else:
                blob = export.to_tflite(model, x[:REPRESENTATIVE_EXAMPLES])
            row["seconds"]["export"] = time.perf_counter() - start
            _save(args, f"{key}_{kind}", blob)
            measure_file(f"{key} {kind}", blob, xt, yt, args, row)
        except Exception as exc:  # noqa: BLE001 -- a failing file is a result, reported
            row["errors"][kind] = _error_text(exc)
            _log(f"{key} {kind}: failed: {row['errors'][kind]}")
    return rows


# --------------------------------------------------------------------------- report


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(value):
    return f"{value:.3f}" if value < 1 else (f"{value:.2f}" if value < 100 else f"{value:.1f}")


def _count(value):
    return "-" if value is None else f"{value:,}"


def _lat(row, key):
    stats = row.get(f"{key}_latency_ms")
    return None if stats is None else stats["median"]


def _ratio(a, b):
    return "-" if a is None or b is None or not b else f"{a / b:.2f}x"


def _short(text, limit=120):
    first = text.splitlines()[0] if text else ""
    return (first[:limit] + "...") if len(first) > limit else first


def table_lines(rows):
    lines = [
        ("| Model | Data (input) | Export | Keras top-1 | Flash (bytes) | TFLM arena (bytes) | "
         "TFLM ms | LiteRT ref ms | LiteRT ms | TFLM / LiteRT ref | TFLM top-1 | "
         "= LiteRT ref | max steps vs ref | = LiteRT | max steps vs LiteRT |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = "x".join(str(d) for d in r["input"])
        head = f"| {r['model']} | {r['dataset']} ({shape}) | {r['export']} | "
        if "tflm_top1" not in r:
            why = "; ".join(f"{k}: {_short(v)}" for k, v in r["errors"].items()) or "missing"
            lines.append(head + f"{_pct(r.get('keras_top1'))} | error: {why} |" + " - |" * 10)
            continue
        cells = [_pct(r["keras_top1"]), _count(r["flash_bytes"]), _count(r["arena_bytes"]),
                 _ms(_lat(r, "micro")), _ms(_lat(r, "litert_ref")), _ms(_lat(r, "litert")),
                 _ratio(_lat(r, "micro"), _lat(r, "litert_ref")), _pct(r["tflm_top1"]),
                 _pct(r["equal_litert_ref"]), str(r["max_steps_litert_ref"]),
                 _pct(r["equal_litert"]), str(r["max_steps_litert"])]
        lines.append(head + " | ".join(cells) + " |")
    return lines


def invoke_lines(rows):
    lines = [
        ("| Model | Data | Export | TFLM invoke() ms | LiteRT ref invoke() ms | LiteRT invoke() "
         "ms | TFLM / LiteRT ref (invoke) | TFLM run() - invoke() ms |"),
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "tflm_top1" not in r:
            continue
        inv = {key: r[f"{key}_invoke_ms"]["median"] for key, _ in RUNNERS}
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['export']} | {_ms(inv['micro'])} | "
            f"{_ms(inv['litert_ref'])} | {_ms(inv['litert'])} | "
            f"{_ratio(inv['micro'], inv['litert_ref'])} | "
            f"{_lat(r, 'micro') - inv['micro']:.3f} |")
    return lines if len(lines) > 2 else []


def spread_lines(rows):
    lines = []
    for r in rows:
        if "tflm_top1" not in r:
            continue
        parts = []
        for key, name in RUNNERS:
            s = r[f"{key}_latency_ms"]
            parts.append(f"{name} {_ms(s['min'])}-{_ms(s['max'])}")
        lines.append(f"- {r['model']} {r['dataset']} {r['export']}: " + ", ".join(parts)
                     + f" ms ({r['micro_latency_ms']['samples']} samples each)")
    return lines


def finding_lines(rows):
    """Observations computed from the rows (no number here is typed in)."""
    ok = [r for r in rows if "tflm_top1" in r]
    if not ok:
        return []
    lines = []
    ratios = [(_lat(r, "micro") / _lat(r, "litert_ref"), r) for r in ok]
    lo, hi = min(ratios, key=lambda t: t[0]), max(ratios, key=lambda t: t[0])
    lines.append(f"- TFLM per example vs LiteRT's reference kernels: {lo[0]:.2f}x "
                 f"({lo[1]['model']} {lo[1]['dataset']} {lo[1]['export']}) to {hi[0]:.2f}x "
                 f"({hi[1]['model']} {hi[1]['dataset']} {hi[1]['export']}).")
    opt = [(_lat(r, "micro") / _lat(r, "litert"), r) for r in ok]
    lo, hi = min(opt, key=lambda t: t[0]), max(opt, key=lambda t: t[0])
    lines.append(f"- TFLM per example vs LiteRT optimized (XNNPACK): {lo[0]:.2f}x "
                 f"({lo[1]['model']} {lo[1]['dataset']} {lo[1]['export']}) to {hi[0]:.2f}x "
                 f"({hi[1]['model']} {hi[1]['dataset']} {hi[1]['export']}).")
    exact = [r for r in ok if r["max_steps_litert_ref"] == 0]
    inexact = [r for r in ok if r["max_steps_litert_ref"] > 0]
    text = f"- Bit-exact with LiteRT's reference kernels: {len(exact)} of {len(ok)} files"
    if inexact:
        text += "; not: " + ", ".join(
            f"{r['model']} {r['dataset']} {r['export']} ({_pct(1 - r['equal_litert_ref'])} "
            f"of outputs differ, max {r['max_steps_litert_ref']} step(s))" for r in inexact)
    lines.append(text + ".")
    bigger = [r for r in ok if r["arena_bytes"] > r["flash_bytes"]]
    lines.append(
        "- Arena larger than the file: " + (", ".join(
            f"{r['model']} {r['dataset']} {r['export']} ({r['arena_bytes'] / r['flash_bytes']:.2f}x)"
            for r in bigger) if bigger else "none") + ".")
    mismatched = [r for r in ok if not r.get("single_matches_batched", True)]
    lines.append("- The timed single-example outputs equal the batched ones used for parity: "
                 + ("in every file" if not mismatched else "not in " + ", ".join(
                     f"{r['model']} {r['dataset']} {r['export']}" for r in mismatched)) + ".")
    flips = [r for r in ok if r["tflm_top1"] != r["litert_ref_top1"]]
    lines.append("- TFLM top-1 differs from LiteRT ref top-1: " + (", ".join(
        f"{r['model']} {r['dataset']} {r['export']} ({_pct(r['tflm_top1'])} vs "
        f"{_pct(r['litert_ref_top1'])})" for r in flips) if flips else "in no file") + ".")
    return lines


def build_report(args, machine, rows, seconds, load, started, wall, git):
    from importlib import metadata

    lines = machine.report_header(started, wall)
    add = lines.append
    state = git[0] if git[0] == git[1] else f"{git[0]} at the start, {git[1]} at the end"

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    add(f"- ai-edge-litert {version('ai-edge-litert')}, tflite-micro {version('tflite-micro')}; "
        f"tfcompress {state}")
    if any(d != "digits" for d in args.datasets.values()):
        add(f"- MNIST / Fashion-MNIST read from {os.path.abspath(args.data_dir)} (--data_dir / "
            f"${datasets.ENV_VAR})")
    add(f"- Load average (1, 5, 15 min) at start: {load[0]}; at end: {load[1]}")
    add("")
    add("### Setup")
    add("")
    tests = sorted({(r["dataset"], r.get("test_examples")) for r in rows
                    if r.get("test_examples")})
    test_text = ", ".join(f"{d} {n}" for d, n in tests) or "-"
    add(f"Training: Adam with cosine decay, batch {args.batch_size}, seed {args.seed}; "
        f"{args.digits_epochs} epoch(s) on the 1437 digits, {args.epochs} epoch(s) on the "
        f"first {args.train_examples or 60000} MNIST / Fashion-MNIST images; learning rate "
        "1e-3 (adder_cnn: 1e-2). PTQ: export.to_tflite(model, x_train[:256]); QAT: "
        f"quantize_model(model), {args.qat_epochs} epoch(s) at Adam {QAT_LR:g} (constant), "
        "export.to_tflite(qat). int8 input and output. Arena: export.micro_arena_size. "
        f"Latency: median over {args.latency_runs} single test examples of runner.run({{name: "
        "x_int8}) (batch 1, the runner's Python wrapper included), the three runners "
        f"round-robin on each example after {args.warmup} untimed calls each; TFLM = "
        "export.MicroRunner(tflite, arena_size=arena) (reference kernels), LiteRT ref = "
        "get_runner(\"litert_ref\") (BUILTIN_REF), LiteRT = get_runner(\"litert\") (default "
        "CPU setup, XNNPACK). Parity and top-1 on the first test images "
        f"({test_text}): TFLM's raw int8 outputs compared with LiteRT's on the same "
        "quantized inputs (\"=\": fraction of equal outputs; steps: largest |difference| in "
        "output quantization steps). Keras top-1: the float model (QAT rows: the fake-quant "
        "model) on the same images.")
    add("")
    add("### Results")
    add("")
    lines.extend(table_lines(rows))
    invoke = invoke_lines(rows)
    if invoke:
        add("")
        add("The same single examples, interpreter invoke() alone (input already set; no Python "
            "wrapper, no output copy): TFLM's interpreter inside the MicroRunner, and for LiteRT "
            "a plain ai_edge_litert Interpreter with the runner's OpResolverType (BUILTIN_REF / "
            "AUTO), timed in the same round-robin:")
        add("")
        lines.extend(invoke)
    findings = finding_lines(rows)
    if findings:
        add("")
        lines.extend(findings)
    spread = spread_lines(rows)
    if spread:
        add("")
        add("Latency spread per call (min-max over the samples):")
        add("")
        lines.extend(spread)
    add("")
    add("Wall time per stage:")
    add("")
    for r in rows:
        s = r.get("seconds", {})
        bits = [f"{k.replace('_', ' ')} {v:.2f} s" if v < 1 else f"{k.replace('_', ' ')} "
                f"{v:.1f} s" for k, v in s.items()]
        add(f"- {r['key']} {r['export']}: " + (", ".join(bits) or "-"))
    for key, value in seconds.items():
        add(f"- {key}: {value:.1f} s")
    errors = [(f"{r['key']} {what}", text) for r in rows for what, text in r["errors"].items()]
    if errors:
        add("")
        add("Errors (full text):")
        add("")
        for what, text in errors:
            body = "\n".join("  " + line for line in text.splitlines())
            add(f"- {what}:\n\n  ```text\n{body}\n  ```")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _check_tflite_micro()
    machine = _load_benchmark("layers")
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()
    cache, rows, seconds = {}, [], {}
    for i, key in enumerate(args.models, 1):
        _log(f"model {i}/{len(args.models)}: {key} ({time.perf_counter() - t0:.0f} s so far)")
        start = time.perf_counter()
        try:
            rows.extend(run_model(key, args, cache))
        except Exception as exc:  # noqa: BLE001 -- a failing model is a result, reported
            label = SPECS[key][0]
            rows.append({"key": key, "model": label, "dataset": args.datasets[key],
                         "input": [], "export": "-", "errors": {"run": _error_text(exc)}})
            _log(f"{key}: failed: {_error_text(exc)}")
        seconds[f"{key} total"] = time.perf_counter() - start
        keras.backend.clear_session()
    wall = time.perf_counter() - t0
    report = build_report(args, machine, rows, seconds, (load_before, machine._loadavg()),
                          started, wall, (git_before, machine.git_state()))
    print(report)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("output", "json")}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "started": started.isoformat(), "wall_seconds": wall,
                       "rows": rows, "seconds": seconds}, f, indent=2, default=str)
        _log(f"wrote {args.json}")
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        _log(f"wrote section into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
