"""int8 quantization: accuracy of tfcompress against tfmot on MNIST, and LiteRT latency.

Two parts, in one run:

Accuracy. On MNIST, for `small_cnn` and `lenet5` (tfcompress.models), trains the float model
(Adam 1e-3, batch 128, sparse categorical cross-entropy, `--epochs`), then exports and evaluates
on the 10,000 test images, with the ai_edge_litert interpreter:

    float .tflite      export.to_tflite(model, mode="float32")
    PTQ int8 .tflite   export.to_tflite(model, representative_data=x_train[:200], mode="int8")
                       (full-integer post-training quantization, int8 input and output)
    QAT int8 .tflite   quantization.quantize_model(model), fine-tuned `--qat_epochs` with
                       Adam 1e-4, then export.to_tflite(qat_model, ..., mode="int8")

and runs benchmarks/tfmot_quantization.py in a subprocess (TF_USE_LEGACY_KERAS=1: tf_keras and
tensorflow_model_optimization are imported there only, never here) to do the same with the
TensorFlow Model Optimization Toolkit on the same data, epochs, batch size, learning rates and
seed: TFLiteConverter.from_keras_model for the float and PTQ files, tfmot's quantize_model for
QAT. The two tools start from the same initial weights but train their float models separately,
so tfmot's QAT is also run once more from tfcompress's trained float weights (an extra row), and
the goal lines count the test images that only one tool's QAT file gets right. One QAT run is
noisy (the batch order alone moves LeNet-5 by up to 14 test images), so with `--qat_repeats K`
both tools also run QAT K more times from tfcompress's float weights, with batch orders seeded
`seed + 1000 k` (k = 1..K), and a control: the float model fine-tuned the same way without
quantization, in each framework. tfcompress runs each repeat twice: with quantize_model's
defaults and with TF's / tfmot's range initialization (`ema_decay=0.999, init_range=(-6, 6)`).
The goals are then also judged on the means.

Latency. Batch-1 LiteRT latency (one thread) of the float32 and the PTQ int8 file of
`small_cnn` (28x28x1), `resnet20` with each block convolution (conv, ghost, shift, adder,
binary; 32x32x3) and `ghostnet` (32x32x3, 10 classes), with untrained weights
(BatchNormalization statistics and int8 ranges taken from random inputs): the median over
`--latency_runs` samples, every file timed round-robin, with LiteRT's default CPU setup (XNNPACK
delegate) and with its builtin kernels only. The same for single layers at a resnet20 stage-1
shape (Conv2D, GhostConv, ShiftConv, Shift, AdderConv, BinaryConv, Sign) and for the operators
of one AdderConv kernel tap (SUB, LEAKY_RELU with alpha -1 = |d|, SUM, MUL; and ABS, which
the layer used before and computes the same |d|), to show where int8 time goes (`--no_probes`
skips them). An int8 export that fails, or a file LiteRT cannot run (every file is first loaded
and run once in a child process, since LiteRT aborts the process on some files), is reported
with its error instead of a time.

It prints markdown: the accuracy and latency tables, and goal checks computed from them
(tfcompress QAT int8 accuracy >= tfmot's; int8 faster than float on every model, saying so
when it is not).

Run (from the repository root; MNIST as mnist.npz in the keras.datasets layout):

    PYTHONPATH=. python3 benchmarks/quantization.py --data_dir DIR      # ~10 min on 2 cores
    PYTHONPATH=. python3 benchmarks/quantization.py --data_dir DIR --quick
    PYTHONPATH=. python3 benchmarks/quantization.py --data_dir DIR --output benchmarks/RESULTS.md

`--data_dir` defaults to $TFCOMPRESS_DATA_DIR. The tfmot side needs
`pip install tensorflow-model-optimization==0.8.1 tf-keras==2.21.0`; without it the tfmot
columns report the error.
"""

import argparse
import collections
import datetime
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from tfcompress import datasets, export, models

HERE = os.path.dirname(os.path.abspath(__file__))
TFMOT_SCRIPT = os.path.join(HERE, "tfmot_quantization.py")
BEGIN_MARK = "<!-- BEGIN benchmarks/quantization.py -->"
END_MARK = "<!-- END benchmarks/quantization.py -->"
SECTION_TITLE = "## Quantization (benchmarks/quantization.py)"

ACCURACY_MODELS = ("small_cnn", "lenet5")
REPRESENTATIVE_EXAMPLES = 200
LATENCY_CALIBRATION_EXAMPLES = 32
LATENCY_MODELS = ("small_cnn",) + tuple(f"resnet20_{c}" for c in models.CONVS) + ("ghostnet",)
PROBE_CHANNELS = 16
LAYER_PROBES = (
    "Conv2D(3x3)", "GhostConv(3x3)", "ShiftConv(3x3)", "Shift(3x3)", "AdderConv(3x3)",
    "BinaryConv(3x3)", "Sign", "op SUB x[..., None] - w", "op LEAKY_RELU(-1)", "op ABS",
    "op SUM over C_in", "op MUL by -1",
)
QUICK_LATENCY_MODELS = ("small_cnn", "resnet20_conv", "resnet20_shift")
MARGINAL_SPEEDUP = 1.1  # a speed-up under this is reported as marginal
RUNTIMES = (("xnnpack", "LiteRT default (XNNPACK delegate)"), ("builtin", "builtin kernels only"))


def _load_layers_benchmark():
    """benchmarks/layers.py, for its machine description (CPU, versions, threads, load)."""
    spec = importlib.util.spec_from_file_location(
        "tfcompress_benchmarks_layers", os.path.join(HERE, "layers.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- arguments


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get(datasets.ENV_VAR) or None,
        help=f"folder holding mnist.npz (default ${datasets.ENV_VAR})",
    )
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs (2)")
    parser.add_argument("--qat_epochs", type=int, default=None, help="QAT fine-tuning epochs (1)")
    parser.add_argument(
        "--qat_repeats", type=int, default=None,
        help="extra QAT runs per tool from the same float weights, other batch orders "
        "(default 4; --quick: 0)",
    )
    parser.add_argument(
        "--train_examples", type=int, default=None,
        help="train on the first N training images (default all 60000; --quick: 6000)",
    )
    parser.add_argument(
        "--test_examples", type=int, default=None,
        help="evaluate on the first N test images (default all 10000; --quick: 2000)",
    )
    parser.add_argument(
        "--latency_models", default=None,
        help=f"comma-separated subset of {','.join(LATENCY_MODELS)} (default all; --quick: "
        f"{','.join(QUICK_LATENCY_MODELS)}), or 'none'",
    )
    parser.add_argument(
        "--latency_runs", type=int, default=None,
        help="timed samples per file and runtime (default 50; --quick: 10)",
    )
    parser.add_argument(
        "--min_sample_ms", type=float, default=2.0,
        help="a sample repeats a fast invocation until it lasts this long (default 2 ms)",
    )
    parser.add_argument("--ghostnet_width", type=float, default=1.0)
    parser.add_argument(
        "--no_probes", dest="latency_probes", action="store_false",
        help="skip the single-layer / single-operator latency table",
    )
    parser.add_argument("--skip_accuracy", action="store_true", help="latency part only")
    parser.add_argument("--skip_tfmot", action="store_true", help="no tfmot subprocess")
    parser.add_argument("--tflite_dir", default=None, help="save every .tflite file here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: subset, 1 epoch")
    parser.add_argument(
        "--output", default=None, help="markdown file to write this benchmark's section into"
    )
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"epochs": 1, "qat_epochs": 1, "qat_repeats": 0,
                    "train_examples": 6000, "test_examples": 2000,
                    "latency_runs": 10, "latency_models": ",".join(QUICK_LATENCY_MODELS)}
    else:
        defaults = {"epochs": 2, "qat_epochs": 1, "qat_repeats": 4,
                    "train_examples": 0, "test_examples": 0,
                    "latency_runs": 50, "latency_models": ",".join(LATENCY_MODELS)}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epochs", "qat_epochs", "qat_repeats", "train_examples", "test_examples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.latency_runs < 1:
        parser.error("--latency_runs must be at least 1")
    names = [] if args.latency_models.strip() == "none" else [
        m.strip() for m in args.latency_models.split(",") if m.strip()
    ]
    unknown = [m for m in names if m not in LATENCY_MODELS]
    if unknown:
        parser.error(f"--latency_models: unknown {unknown}; choose from {', '.join(LATENCY_MODELS)}")
    args.latency_models = names
    args.mnist_path = None
    args.work_dir = None
    if not args.skip_accuracy:
        if not args.data_dir:
            parser.error(
                f"MNIST not found: give --data_dir (a folder holding mnist.npz, the arrays of "
                f"keras.datasets.mnist.load_data() saved with numpy.savez) or set "
                f"${datasets.ENV_VAR}; or --skip_accuracy for the latency part only."
            )
        args.mnist_path = os.path.abspath(os.path.join(args.data_dir, "mnist.npz"))
        if not os.path.isfile(args.mnist_path):
            parser.error(f"MNIST not found: no file {args.mnist_path} (from --data_dir / "
                         f"${datasets.ENV_VAR}={args.data_dir!r}).")
    return args


def _log(message):
    print(f"[quantization] {message}", file=sys.stderr, flush=True)


def _error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()


_PROBE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
for runtime in ("builtin", "xnnpack"):
    kwargs = {}
    if runtime == "builtin":
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    print(runtime, "Interpreter()", flush=True)
    interpreter = Interpreter(model_path=sys.argv[1], num_threads=1, **kwargs)
    print(runtime, "allocate_tensors()", flush=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    print(runtime, "invoke()", flush=True)
    interpreter.invoke()
print("ok", flush=True)
"""


def probe_tflite(blob):
    """Loads, allocates and runs the file in a child process; None if fine, else the error.

    LiteRT aborts the whole process on some files (a CHECK failure in a kernel's Prepare),
    which would end the benchmark: the child takes that risk instead.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(blob)
        proc = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True,
                              text=True, check=False, timeout=600)
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return None
    stage = (proc.stdout.strip().splitlines() or ["before loading"])[-1]
    if proc.returncode < 0:
        import signal

        how = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        how = f"exit status {proc.returncode}"
    detail = [line for line in proc.stderr.strip().splitlines()
              if line.strip() and not line.startswith("INFO:")][-2:]
    return (f"LiteRT failed on this file in a child process ({how}) during {stage} "
            f"(runtime: {stage.split()[0]})" + (": " + " | ".join(detail) if detail else ""))


def _save(args, name, blob):
    if args.tflite_dir and blob is not None:
        os.makedirs(args.tflite_dir, exist_ok=True)
        with open(os.path.join(args.tflite_dir, name), "wb") as f:
            f.write(blob)


# --------------------------------------------------------------------------- accuracy


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _tflite_predictions(blob, xt):
    return export.run_tflite(blob, xt)[0].argmax(-1)


def weights_abs_sum(model):
    """sum |w| over every weight (BN statistics included), in float64: a fingerprint."""
    return float(sum(np.abs(w.astype(np.float64)).sum() for w in model.get_weights()))


def run_tfcompress(name, args, data):
    """Float / PTQ / QAT for one model with the tfcompress API; errors are recorded, not raised."""
    (x, y), (xt, yt) = data
    result = {"seconds": {}, "tflite": {}, "errors": {}, "predictions": {}}
    keras.utils.set_random_seed(args.seed)
    model = {"small_cnn": models.small_cnn, "lenet5": models.lenet5}[name](input_shape=(28, 28, 1))
    result["weights_abs_sum"] = {"init": weights_abs_sum(model)}
    _compile(model, 1e-3)
    _log(f"tfcompress {name}: float training, {args.epochs} epoch(s)")
    start = time.perf_counter()
    if args.epochs:
        model.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0)
    result["seconds"]["train_float"] = time.perf_counter() - start
    result["weights_abs_sum"]["trained"] = weights_abs_sum(model)
    result["keras_float_acc"] = float(model.evaluate(xt, yt, batch_size=512, verbose=0)[1])
    float_weights = model.get_weights()
    if args.work_dir:  # for tfmot's QAT from these same float weights
        np.savez(os.path.join(args.work_dir, f"{name}.npz"), *float_weights)

    files = {}

    def convert(kind, fn):
        start = time.perf_counter()
        try:
            files[kind] = fn()
        except Exception as exc:  # noqa: BLE001 -- a failing export is a result, reported as such
            result["errors"][kind] = _error_text(exc)
            _log(f"tfcompress {name}: {kind} export failed: {result['errors'][kind]}")
        result["seconds"][f"convert_{kind}"] = time.perf_counter() - start

    representative = x[:REPRESENTATIVE_EXAMPLES]
    convert("float", lambda: export.to_tflite(model, mode="float32"))
    convert("ptq", lambda: export.to_tflite(model, representative_data=representative, mode="int8"))

    _log(f"tfcompress {name}: QAT (tfcompress.quantization.quantize_model), "
         f"{args.qat_epochs} epoch(s)")
    start = time.perf_counter()
    qat_model = None
    try:
        from tfcompress.quantization import quantize_model

        qat_model = quantize_model(model)
        _compile(qat_model, 1e-4)
        if args.qat_epochs:
            qat_model.fit(x, y, batch_size=128, epochs=args.qat_epochs, verbose=0)
        result["keras_qat_acc"] = float(qat_model.evaluate(xt, yt, batch_size=512, verbose=0)[1])
    except Exception as exc:  # noqa: BLE001
        result["errors"]["qat"] = _error_text(exc)
        _log(f"tfcompress {name}: QAT failed: {result['errors']['qat']}")
        qat_model = None
    result["seconds"]["train_qat"] = time.perf_counter() - start
    if qat_model is not None:
        convert(
            "qat", lambda: export.to_tflite(qat_model, representative_data=representative, mode="int8")
        )

    for kind, blob in files.items():
        start = time.perf_counter()
        _save(args, f"tfcompress_{name}_{kind}.tflite", blob)
        problem = probe_tflite(blob)
        if problem:
            result["errors"][kind] = problem
            _log(f"tfcompress {name}: {kind}: {problem}")
            continue
        try:
            pred = _tflite_predictions(blob, xt)
        except Exception as exc:  # noqa: BLE001
            result["errors"][kind] = "evaluation failed: " + _error_text(exc)
            continue
        acc = float(np.mean(pred == yt))
        result["predictions"][kind] = pred
        result["tflite"][kind] = {
            "acc": acc, "bytes": len(blob), "eval_seconds": time.perf_counter() - start,
        }
        _log(f"tfcompress {name}: {kind} .tflite accuracy {acc:.4f}, {len(blob):,} bytes")
    if args.qat_repeats:
        try:
            result["repeats"] = repeat_qat(name, model, float_weights, args, data, representative)
        except Exception as exc:  # noqa: BLE001
            result["errors"]["repeats"] = _error_text(exc)
            _log(f"tfcompress {name}: repeated QAT failed: {result['errors']['repeats']}")
    return result


# The repeated QAT runs of tfcompress: result key -> (label, quantize_model options): the
# defaults (TF's / tfmot's range start), and activation ranges that start at the first batch.
REPEAT_CONFIGS = {
    "qat": ("defaults", {}),
    "qat_first_batch": ("first-batch ranges", {"ema_decay": 0.99, "init_range": None}),
}


def repeat_qat(name, model, float_weights, args, data, representative):
    """QAT (int8 .tflite accuracy) and a float fine-tuning control (Keras accuracy), each from
    the trained float weights, once per batch order seeded `seed + 1000 k`, k = 1..repeats."""
    from tfcompress.quantization import quantize_model

    (x, y), (xt, yt) = data
    out = {"seeds": [], "float_finetune": [], **{key: [] for key in REPEAT_CONFIGS}}
    for k in range(1, args.qat_repeats + 1):
        seed = args.seed + 1000 * k
        for key, (_, options) in REPEAT_CONFIGS.items():
            model.set_weights(float_weights)
            keras.utils.set_random_seed(seed)
            qat_model = quantize_model(model, **options)
            _compile(qat_model, 1e-4)
            qat_model.fit(x, y, batch_size=128, epochs=args.qat_epochs, verbose=0)
            blob = export.to_tflite(qat_model, representative_data=representative, mode="int8")
            out[key].append(float(np.mean(_tflite_predictions(blob, xt) == yt)))
        model.set_weights(float_weights)
        keras.utils.set_random_seed(seed)
        _compile(model, 1e-4)
        model.fit(x, y, batch_size=128, epochs=args.qat_epochs, verbose=0)
        out["float_finetune"].append(float(model.evaluate(xt, yt, batch_size=512, verbose=0)[1]))
        out["seeds"].append(seed)
        accuracies = ", ".join(
            f"{label} {out[key][-1]:.4f}" for key, (label, _) in REPEAT_CONFIGS.items()
        )
        _log(f"tfcompress {name}: repeat {k} (seed {seed}): QAT int8 {accuracies}, "
             f"float fine-tune {out['float_finetune'][-1]:.4f}")
    model.set_weights(float_weights)
    return out


def run_tfmot(args):
    """benchmarks/tfmot_quantization.py in a legacy-Keras subprocess; returns (report, error)."""
    command = [
        sys.executable, TFMOT_SCRIPT, "--data", args.mnist_path,
        "--models", ",".join(ACCURACY_MODELS), "--epochs", str(args.epochs),
        "--qat_epochs", str(args.qat_epochs), "--seed", str(args.seed),
        "--qat_repeats", str(args.qat_repeats),
        "--train_examples", str(args.train_examples), "--test_examples", str(args.test_examples),
    ]
    if args.tflite_dir:
        command += ["--output_dir", args.tflite_dir]
    if args.work_dir:
        command += ["--float_weights", args.work_dir, "--predictions", args.work_dir]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    _log("tfmot: " + " ".join(shlex.quote(c) for c in command[1:]) + " (TF_USE_LEGACY_KERAS=1)")
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        return None, _error_text(exc)
    for line in proc.stderr.splitlines():
        if line.startswith("[tfmot]"):
            print(line, file=sys.stderr, flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-3:]
        return None, f"tfmot subprocess exited with {proc.returncode}: " + " | ".join(tail)
    try:
        report = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return None, f"tfmot subprocess printed unreadable JSON: {exc}"
    for name, result in report.get("models", {}).items():
        path = os.path.join(args.work_dir or "", f"tfmot_{name}.npz")
        if args.work_dir and os.path.isfile(path):
            with np.load(path) as arrays:
                result["predictions"] = {k: arrays[k] for k in arrays.files}
    return report, None


# --------------------------------------------------------------------------- latency


def build_latency_model(name, args):
    keras.utils.set_random_seed(args.seed)
    if name == "small_cnn":
        return models.small_cnn(input_shape=(28, 28, 1))
    if name == "ghostnet":
        return models.ghostnet(
            width=args.ghostnet_width, input_shape=(32, 32, 3), num_classes=10
        )
    return models.resnet20(conv=name.split("_", 1)[1], input_shape=(32, 32, 3))


class Timed:
    """One .tflite file in one LiteRT setup, batch 1, one thread, timed sample by sample."""

    def __init__(self, blob, runtime, image):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kwargs = {}
        if runtime == "builtin":
            kwargs["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        self.interpreter = Interpreter(model_content=blob, num_threads=1, **kwargs)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(detail["index"], export.runners.quantize(image[None], detail))
        ops = self.interpreter._get_ops_details()
        self.partitions = sum(op["op_name"] == "DELEGATE" for op in ops)
        self.samples = []
        self.inner = 1

    def warm_up(self, min_sample_s):
        for _ in range(3):
            self.interpreter.invoke()
        start = time.perf_counter()
        self.interpreter.invoke()
        single = time.perf_counter() - start
        self.inner = max(1, math.ceil(min_sample_s / max(single, 1e-7)))

    def sample(self):
        invoke = self.interpreter.invoke
        start = time.perf_counter()
        for _ in range(self.inner):
            invoke()
        self.samples.append((time.perf_counter() - start) / self.inner)

    def median_ms(self):
        return statistics.median(self.samples) * 1e3


def set_batchnorm_statistics(model, data):
    """Sets every BatchNormalization's moving statistics to those of `data` (one pass).

    Untrained networks otherwise keep mean 0 / variance 1, and a layer whose output is
    always <= 0 before a ReLU (AdderConv's -sum|x - w| is) gets a degenerate int8 range.
    """
    layers = [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(data, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def op_histogram(blob):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=blob,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return collections.Counter(op["op_name"] for op in interpreter._get_ops_details())


def build_layer_probe(name, args):
    """One tfcompress layer, or one operator an AdderConv / BinaryConv lowers to, as a model.

    Shapes are those of a resnet20 stage-1 block: (32, 32, 16) -> 16 channels; the operator
    probes are one AdderConv kernel tap, whose |x - w| tensor is (32, 32, 16, 16).
    """
    from tfcompress.layers import (
        AdderConv,
        BinaryConv,
        GhostConv,
        Shift,
        ShiftConv,
        Sign,
    )
    from tfcompress.layers.adder import magnitude

    keras.utils.set_random_seed(args.seed)
    c = PROBE_CHANNELS
    layer_builders = {
        "Conv2D(3x3)": lambda: keras.layers.Conv2D(c, 3, padding="same"),
        "GhostConv(3x3)": lambda: GhostConv(c, kernel_size=3, ratio=2),
        "ShiftConv(3x3)": lambda: ShiftConv(c, 3),
        "AdderConv(3x3)": lambda: AdderConv(c, 3),
        "BinaryConv(3x3)": lambda: BinaryConv(c, 3),
        "Shift(3x3)": lambda: Shift(3),
        "Sign": lambda: Sign(),
    }
    w = np.random.default_rng(args.seed).standard_normal((c, c)).astype(np.float32)
    # (input shape, function); AdderConv computes sum(|x[..., None] - w|) * -1, with |d| as
    # leaky_relu(d, -1) (tfcompress.layers.adder.magnitude); ABS is the alternative it replaced.
    op_builders = {
        "op SUB x[..., None] - w": ((32, 32, c), lambda t: keras.ops.expand_dims(t, -1) - w),
        "op LEAKY_RELU(-1)": ((32, 32, c, c), magnitude),
        "op ABS": ((32, 32, c, c), keras.ops.abs),
        "op SUM over C_in": ((32, 32, c, c), lambda t: keras.ops.sum(t, axis=-2)),
        "op MUL by -1": ((32, 32, c), lambda t: t * -1.0),
    }
    if name in layer_builders:
        inputs = keras.Input((32, 32, c), name="input")
        outputs = layer_builders[name]()(inputs)
    else:
        shape, fn = op_builders[name]
        inputs = keras.Input(shape, name="input")
        outputs = keras.layers.Lambda(fn, name="op")(inputs)
    return keras.Model(inputs, outputs, name="probe")


def run_latency(args):
    rng = np.random.default_rng(args.seed)
    entries = []
    cases = [("model", name) for name in args.latency_models]
    cases += [("probe", name) for name in (LAYER_PROBES if args.latency_probes else ())]
    for group, name in cases:
        if group == "model":
            model = build_latency_model(name, args)
        else:
            model = build_layer_probe(name, args)
        shape = tuple(model.inputs[0].shape[1:])
        entry = {"name": name, "group": group, "input": "x".join(str(d) for d in shape),
                 "files": {}, "errors": {}, "seconds": {}, "timed": {}, "ops": {}}
        if group == "model":
            calibration = rng.uniform(0.0, 1.0, (LATENCY_CALIBRATION_EXAMPLES,) + shape)
        else:  # signed inputs, as inside a network
            calibration = rng.standard_normal((LATENCY_CALIBRATION_EXAMPLES,) + shape)
        calibration = calibration.astype(np.float32)
        set_batchnorm_statistics(model, calibration)
        for kind, kwargs in (
            ("float", {"mode": "float32"}),
            ("int8", {"mode": "int8", "representative_data": calibration}),
        ):
            _log(f"latency {name}: {kind} export")
            start = time.perf_counter()
            try:
                blob = export.to_tflite(model, **kwargs)
            except Exception as exc:  # noqa: BLE001 -- recorded in the table
                entry["errors"][kind] = _error_text(exc)
                _log(f"latency {name}: {kind} export failed: {entry['errors'][kind][:200]}")
                continue
            finally:
                entry["seconds"][kind] = time.perf_counter() - start
            safe = "".join(ch if ch.isalnum() else "_" for ch in name)
            _save(args, f"latency_{safe}_{kind}.tflite", blob)
            entry["ops"][kind] = op_histogram(blob)
            problem = probe_tflite(blob)
            if problem:
                entry["errors"][kind] = problem
                _log(f"latency {name}: {kind}: {problem}")
            else:
                entry["files"][kind] = blob
        image = calibration[0]
        for kind, blob in entry["files"].items():
            for runtime, _ in RUNTIMES:
                try:
                    entry["timed"][(kind, runtime)] = Timed(blob, runtime, image)
                except Exception as exc:  # noqa: BLE001
                    entry["errors"][f"{kind}/{runtime}"] = _error_text(exc)
        entries.append(entry)
        keras.backend.clear_session()
    timed = [t for entry in entries for t in entry["timed"].values()]
    _log(f"latency: warming up {len(timed)} interpreters")
    for t in timed:
        t.warm_up(args.min_sample_ms / 1e3)
    for r in range(args.latency_runs):
        if r % 10 == 0:
            _log(f"latency: run {r + 1}/{args.latency_runs}")
        for t in timed:  # round-robin: load from other processes falls on every file alike
            t.sample()
    return entries


# --------------------------------------------------------------------------- report


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def _kb(nbytes):
    return "-" if nbytes is None else f"{nbytes / 1024:.0f}"


def _spread(values):
    """'mean% (min% - max%)' of accuracies, or '-'."""
    if not values:
        return "-"
    return f"{100 * statistics.mean(values):.2f}% ({100 * min(values):.2f} - {100 * max(values):.2f})"


def _ms(value):
    return f"{value:.3f}" if value < 1 else (f"{value:.2f}" if value < 100 else f"{value:.1f}")


def _short(error, limit=110):
    first = error.splitlines()[0] if error else ""
    return (first[:limit] + "...") if len(first) > limit else first


def _error_item(what, text):
    """A markdown list item quoting an error exactly (a code block when it spans lines)."""
    if "\n" not in text and "`" not in text:
        return f"- {what}: `{text}`"
    body = "\n".join("  " + line for line in text.splitlines())
    return f"- {what}:\n\n  ```text\n{body}\n  ```"


def _side_rows(tool, result, error):
    """(float keras, float tfl, ptq, qat, qat keras, sizes, train s) cells for one tool/model."""
    if result is None:
        cell = f"error: {_short(error)}"
        return [cell] + ["-"] * 6
    files, errors = result["tflite"], result.get("errors", {})

    def acc(kind):
        if kind in files:
            return _pct(files[kind]["acc"])
        return f"error: {_short(errors.get(kind, 'missing'))}"

    sizes = " / ".join(_kb(files[k]["bytes"]) if k in files else "-" for k in ("float", "ptq", "qat"))
    seconds = result["seconds"]
    return [
        _pct(result.get("keras_float_acc")),
        acc("float"),
        acc("ptq"),
        acc("qat"),
        _pct(result.get("keras_qat_acc")),
        sizes,
        f"{seconds.get('train_float', 0):.0f} / {seconds.get('train_qat', 0):.0f}",
    ]


def accuracy_lines(args, ours, theirs, tfmot_error):
    lines = []
    add = lines.append
    config = theirs["config"] if theirs else None
    (n_train, n_test) = (ours["_n_train"], ours["_n_test"])
    add(
        f"MNIST, {n_train} training / {n_test} test images (pixels / 255); float training "
        f"{args.epochs} epoch(s) Adam 1e-3, QAT fine-tuning {args.qat_epochs} epoch(s) Adam 1e-4 "
        f"from the trained float weights, batch 128, seed {args.seed}, for both tools. PTQ and "
        f"the int8 export of QAT calibrate on the first {REPRESENTATIVE_EXAMPLES} training "
        "images; int8 files are integer-only with int8 input and output. Accuracies are of the "
        ".tflite files run by ai_edge_litert on the test images (\"Keras\" columns: the Keras "
        "model itself). Sizes in KiB (float / PTQ / QAT); train seconds: float / QAT."
    )
    if theirs:
        v = theirs["versions"]
        add("")
        add(
            f"tfmot side (subprocess, TF_USE_LEGACY_KERAS=1): tensorflow-model-optimization "
            f"{v['tensorflow_model_optimization']}, tf_keras {v['tf_keras']}, "
            f"TFLiteConverter.from_keras_model; same data ({config['train_examples']} / "
            f"{config['test_examples']}), epochs ({config['epochs']} + {config['qat_epochs']}), "
            f"seed {config['seed']}."
        )
    add("")
    add("| Model | Tool | Float Keras | Float .tflite | PTQ int8 | QAT int8 | QAT Keras "
        "| Size KiB float / PTQ / QAT | Train s float / QAT |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ACCURACY_MODELS:
        for tool, result, error in (
            ("tfcompress", ours.get(name), ours.get("_error")),
            ("tfmot", (theirs or {}).get("models", {}).get(name), tfmot_error),
        ):
            add(f"| {name} | {tool} | " + " | ".join(_side_rows(tool, result, error)) + " |")
        theirs_model = (theirs or {}).get("models", {}).get(name) or {}
        given = theirs_model.get("tflite", {}).get("qat_given")
        if given:
            add(
                f"| {name} | tfmot, QAT from tfcompress's float weights "
                f"| {_pct(theirs_model.get('given_float_keras_acc'))} | - | - "
                f"| {_pct(given['acc'])} | {_pct(theirs_model.get('keras_qat_given_acc'))} "
                f"| - / - / {_kb(given['bytes'])} "
                f"| - / {theirs_model['seconds'].get('train_qat_given', 0):.0f} |"
            )
    repeat_rows = []
    for name in ACCURACY_MODELS:
        mine = (ours.get(name) or {}).get("repeats")
        other = (((theirs or {}).get("models", {}).get(name)) or {}).get("repeats")
        if mine or other:
            cells = [_spread((mine or {}).get(key)) for key in REPEAT_CONFIGS]
            cells.append(_spread((other or {}).get("qat")))
            for key in REPEAT_CONFIGS:
                if mine and other and mine.get(key) and other["qat"]:
                    diff = statistics.mean(mine[key]) - statistics.mean(other["qat"])
                    cells.append(f"{diff * n_test:+.1f}")
                else:
                    cells.append("-")
            cells += [_spread((mine or {}).get("float_finetune")),
                      _spread((other or {}).get("float_finetune"))]
            repeat_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if repeat_rows:
        seeds = ", ".join(str(args.seed + 1000 * k) for k in range(1, args.qat_repeats + 1))
        add("")
        add(
            f"Repeated QAT: {args.qat_repeats} more QAT runs per tool, each from tfcompress's "
            f"trained float weights above, with batch orders seeded {seeds}, the same for "
            "both tools. Control: the float "
            "model fine-tuned from the same weights the same way (Adam 1e-4, "
            f"{args.qat_epochs} epoch(s)) without quantization, Keras test accuracy, in Keras 3 "
            "(tfcompress column) and tf_keras (tfmot column). Mean (min - max); difference in "
            "test images. tfcompress's defaults start the activation ranges at (-6, 6) with "
            "decay 0.999, as TF's and tfmot's QAT (the input's at its first batch, as tfmot's "
            "follows the data); \"first batch\": quantize_model(model, init_range=None, "
            "ema_decay=0.99), every range starting at its first batch (the default before "
            "2026-11-25)."
        )
        add("")
        add("| Model | QAT int8, tfcompress | QAT int8, tfcompress first batch | QAT int8, tfmot "
            "| tfcompress - tfmot (images) | first batch - tfmot (images) "
            "| Float fine-tune, Keras 3 | Float fine-tune, tf_keras |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        lines.extend(repeat_rows)
    for i, name in enumerate(ACCURACY_MODELS):
        mine = (ours.get(name) or {}).get("weights_abs_sum")
        other = (((theirs or {}).get("models", {}).get(name)) or {}).get("weights_abs_sum")
        if not mine or not other:
            continue
        if i == 0 or lines[-1].startswith("|"):
            add("")
        parts = []
        for stage in ("init", "trained"):
            a, b = mine[stage], other[stage]
            parts.append(f"{stage} {a:.6g} vs {b:.6g} (relative difference {abs(a - b) / b:.1e})")
        add(f"- {name} float weights, sum of |w| tfcompress vs tfmot: " + "; ".join(parts))
    errors = []
    for name in ACCURACY_MODELS:
        for kind, text in (ours.get(name) or {}).get("errors", {}).items():
            errors.append(_error_item(f"tfcompress {name} {kind}", text))
    if tfmot_error:
        errors.append(_error_item("tfmot", tfmot_error))
    if errors:
        add("")
        add("Errors (full text):")
        add("")
        lines.extend(errors)
    return lines


def latency_lines(args, entries):
    lines = []
    add = lines.append
    add(
        "Latency: batch 1, 1 thread, ai_edge_litert Interpreter; median of "
        f"{args.latency_runs} samples per file and runtime (a sample repeats invoke() until it "
        f"lasts >= {args.min_sample_ms:g} ms and is divided by the count), all files timed "
        "round-robin after 4 warm-up calls. Untrained weights (seed "
        f"{args.seed}) with BatchNormalization statistics set by one training-mode pass over the "
        "calibration inputs; int8 = full-integer PTQ with tfcompress.export.to_tflite(mode=\"int8\") "
        f"calibrated on {LATENCY_CALIBRATION_EXAMPLES} uniform-random inputs, int8 I/O. "
        f"resnet20: width 16, 10 classes; ghostnet: width {args.ghostnet_width:g}, 10 classes. "
        "\"XNNPACK\" is LiteRT's default CPU setup (the XNNPACK delegate applied); \"builtin\" "
        "uses the builtin kernels only (BUILTIN_WITHOUT_DEFAULT_DELEGATES). Speed-up = float ms "
        "/ int8 ms. Partitions = DELEGATE nodes XNNPACK made (float / int8)."
    )
    add("")
    header = ("| {} | Input | Size KiB float / int8 | Float ms | Int8 ms | Speed-up "
              "| Partitions | Float ms builtin | Int8 ms builtin | Speed-up builtin |")
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for i, entry in enumerate(entries):
        if i == 0 or entry["group"] != entries[i - 1]["group"]:
            if entry["group"] == "probe":
                add("")
                add(
                    "Single layers and operators, same setup (inputs standard-normal, untrained "
                    f"weights): one layer at 32x32x{PROBE_CHANNELS} -> {PROBE_CHANNELS} channels "
                    "(a resnet20 stage-1 block; Shift is ShiftConv's shift without its 1x1 "
                    "convolution, Sign is BinaryConv's input binarization), and the operators "
                    "one AdderConv kernel tap lowers to (AdderConv computes "
                    "sum(|x[..., None] - w|, over C_in) * -1 per tap, 9 taps per 3x3 layer, "
                    "with |d| as LEAKY_RELU(d, alpha=-1); ABS, which computes the same |d|, "
                    "for comparison):"
                )
                add("")
            if entry["group"] == "model":
                add(header.format("Model"))
                add(rule)
            else:
                add(header.format("Layer / operator") + " Operators (int8 file) |")
                add(rule + "---|")
        files, timed = entry["files"], entry["timed"]
        sizes = " / ".join(_kb(len(files[k])) if k in files else "-" for k in ("float", "int8"))
        cells = []
        for runtime, _ in RUNTIMES:
            f, q = timed.get(("float", runtime)), timed.get(("int8", runtime))
            f_ms = _ms(f.median_ms()) if f else "-"
            if q:
                q_ms, speed = _ms(q.median_ms()), f"{f.median_ms() / q.median_ms():.2f}x" if f else "-"
            else:
                q_ms = "no int8 file (see errors)" if "int8" in entry["errors"] else "-"
                speed = "-"
            cells.append((f_ms, q_ms, speed))
            if runtime == "xnnpack":
                parts = " / ".join(
                    str(timed[(k, runtime)].partitions) if (k, runtime) in timed else "-"
                    for k in ("float", "int8")
                )
        (a, b, c), (d, e, g) = cells
        row = (f"| {entry['name']} | {entry['input']} | {sizes} | {a} | {b} | {c} | {parts} "
               f"| {d} | {e} | {g} |")
        if entry["group"] == "probe":
            ops = entry["ops"].get("int8") or entry["ops"].get("float") or {}
            row += " " + ", ".join(
                f"{op} {count}" if count > 1 else op for op, count in sorted(ops.items())
            ) + " |"
        add(row)
    add("")
    add("Operators in each model's files (counts; float / int8 where they differ):")
    add("")
    for entry in entries:
        if entry["group"] != "model":
            continue
        f_ops, q_ops = entry["ops"].get("float"), entry["ops"].get("int8")
        if f_ops and q_ops and f_ops != q_ops:
            add(f"- {entry['name']}: float {_ops_summary(f_ops, 12)}; int8 {_ops_summary(q_ops, 12)}")
        elif f_ops or q_ops:
            add(f"- {entry['name']}: {_ops_summary(f_ops or q_ops, 12)}")
    add("")
    add("Spread (min / median / max ms over the samples), XNNPACK runtime:")
    add("")
    add("| Model | Float | Int8 |")
    add("|---|---|---|")
    for entry in entries:
        if entry["group"] != "model":
            continue
        cells = []
        for kind in ("float", "int8"):
            t = entry["timed"].get((kind, "xnnpack"))
            cells.append(
                " / ".join(_ms(v * 1e3) for v in (min(t.samples), statistics.median(t.samples),
                                                   max(t.samples))) if t else "-"
            )
        add(f"| {entry['name']} | {cells[0]} | {cells[1]} |")
    errors = [
        _error_item(f"{entry['name']} {kind}", text)
        for entry in entries for kind, text in entry["errors"].items()
    ]
    if errors:
        add("")
        add("Export and LiteRT errors (full text):")
        add("")
        lines.extend(errors)
    return lines


def _ops_summary(counter, top=6):
    total = sum(counter.values())
    parts = ", ".join(f"{name} {count}" for name, count in counter.most_common(top))
    return f"{total} ops ({parts}{', ...' if len(counter) > top else ''})"


def _paired(mine, other, labels):
    """(test images only `mine` gets right, only `other` gets right), or None."""
    if mine is None or other is None or labels is None or len(mine) != len(other):
        return None
    mine_ok, other_ok = mine == labels, other == labels
    return int(np.sum(mine_ok & ~other_ok)), int(np.sum(other_ok & ~mine_ok))


def goal_lines(ours, theirs, tfmot_error, entries, n_test):
    lines = []
    add = lines.append
    if ours is not None:
        for name in ACCURACY_MODELS:
            mine = (ours.get(name) or {}).get("tflite", {}).get("qat")
            other = ((theirs or {}).get("models", {}).get(name) or {}).get("tflite", {}).get("qat")
            if mine is None or other is None:
                why = []
                if mine is None:
                    why.append("tfcompress QAT: " + _short(
                        (ours.get(name) or {}).get("errors", {}).get(
                            "qat", ours.get("_error") or "no result"), 200))
                if other is None:
                    why.append("tfmot QAT: " + _short(tfmot_error or "no result", 200))
                add(f"- {name}: QAT int8 accuracy, tfcompress >= tfmot -> NOT CHECKED "
                    f"({'; '.join(why)})")
                continue
            diff = mine["acc"] - other["acc"]
            ok = mine["acc"] >= other["acc"]
            add(
                f"- {name}: QAT int8 .tflite accuracy, tfcompress {_pct(mine['acc'])} vs tfmot "
                f"{_pct(other['acc'])} ({100 * diff:+.2f} points, {round(diff * n_test):+d} of "
                f"{n_test} test images) (goal: tfcompress >= tfmot) -> "
                + ("MET" if ok else "NOT MET")
            )
            ours_model = ours.get(name) or {}
            theirs_model = (theirs or {}).get("models", {}).get(name) or {}
            labels = ours.get("_labels")
            paired = _paired(ours_model.get("predictions", {}).get("qat"),
                             theirs_model.get("predictions", {}).get("qat"), labels)
            if paired:
                add(f"  Test images only tfcompress's QAT file gets right: {paired[0]}; only "
                    f"tfmot's: {paired[1]}.")
            gains = []
            for tool, model_result in (("tfcompress", ours_model), ("tfmot", theirs_model)):
                files = model_result.get("tflite", {})
                if "float" in files and "qat" in files:
                    gains.append(f"{tool} {100 * (files['qat']['acc'] - files['float']['acc']):+.2f}")
            if gains:
                add("  QAT int8 minus the same tool's float .tflite, in points: " + ", ".join(gains)
                    + " (each tool trains its own float model first).")
            given = theirs_model.get("tflite", {}).get("qat_given")
            if given:
                diff = mine["acc"] - given["acc"]
                add(
                    f"  Same float starting point (tfmot's QAT run on tfcompress's trained float "
                    f"weights): tfcompress {_pct(mine['acc'])} vs tfmot {_pct(given['acc'])} "
                    f"({100 * diff:+.2f} points) -> "
                    + ("tfcompress >= tfmot" if diff >= 0 else "tfcompress < tfmot")
                )
                paired = _paired(ours_model.get("predictions", {}).get("qat"),
                                 theirs_model.get("predictions", {}).get("qat_given"), labels)
                if paired:
                    add(f"  (only tfcompress right: {paired[0]}; only tfmot right: {paired[1]})")
            other_r = (theirs_model.get("repeats") or {}).get("qat")
            for key, (label, _) in REPEAT_CONFIGS.items():
                mine_r = (ours_model.get("repeats") or {}).get(key)
                if not mine_r or not other_r:
                    continue
                diff = statistics.mean(mine_r) - statistics.mean(other_r)
                add(
                    f"- {name}: mean QAT int8 accuracy over {len(mine_r)} / {len(other_r)} more "
                    f"batch orders from the same float weights, tfcompress ({label}) "
                    f"{_pct(statistics.mean(mine_r))} vs tfmot {_pct(statistics.mean(other_r))} "
                    f"({100 * diff:+.3f} points, {diff * n_test:+.1f} test images) "
                    "(goal: tfcompress >= tfmot) -> " + ("MET" if diff >= 0 else "NOT MET")
                )
    slower = []
    entries = [entry for entry in entries if entry["group"] == "model"]
    for entry in entries:
        f, q = entry["timed"].get(("float", "xnnpack")), entry["timed"].get(("int8", "xnnpack"))
        if q is None or f is None:
            add(
                f"- {entry['name']}: int8 faster than float -> NOT MET: no int8 timing "
                f"({_short(entry['errors'].get('int8', 'missing'), 200)})"
            )
            slower.append(entry)
            continue
        speed = f.median_ms() / q.median_ms()
        ok = speed > 1.0
        if not ok:
            verdict = "NOT MET: int8 is not faster than float here"
        elif speed < MARGINAL_SPEEDUP:
            verdict = (f"MET, but only marginally (under {MARGINAL_SPEEDUP:g}x; int8 samples "
                       f"{_ms(min(q.samples) * 1e3)}-{_ms(max(q.samples) * 1e3)} ms, float "
                       f"{_ms(min(f.samples) * 1e3)}-{_ms(max(f.samples) * 1e3)} ms)")
        else:
            verdict = "MET"
        add(
            f"- {entry['name']}: int8 {_ms(q.median_ms())} ms vs float {_ms(f.median_ms())} ms "
            f"(XNNPACK, speed-up {speed:.2f}x) (goal: int8 faster) -> {verdict}"
        )
        bf, bq = entry["timed"].get(("float", "builtin")), entry["timed"].get(("int8", "builtin"))
        if not ok:
            slower.append(entry)
        if bf and bq and (bf.median_ms() <= bq.median_ms()):
            add(f"  (builtin kernels: int8 {_ms(bq.median_ms())} ms vs float "
                f"{_ms(bf.median_ms())} ms, int8 not faster there either)")
    if entries:
        missing = [e["name"] for e in slower]
        add(
            "- int8 faster than float on every model measured -> "
            + ("MET" if not missing else f"NOT MET (not for: {', '.join(missing)})")
        )
    return lines


def build_report(args, machine, ours, theirs, tfmot_error, entries, load_before, load_after,
                 started, wall, git_state):
    lines = machine.report_header(started, wall)
    add = lines.append
    from importlib import metadata

    state = git_state[0] if git_state[0] == git_state[1] else (
        f"{git_state[0]} at the start, {git_state[1]} at the end of the run"
    )
    add(f"- ai-edge-litert {metadata.version('ai-edge-litert')}; tfcompress {state}")
    add(f"- Load average (1, 5, 15 min) at start: {load_before}; at end: {load_after}"
        + (" (quick mode)" if args.quick else ""))
    n_test = None
    if ours is not None:
        add("")
        add("### Accuracy (MNIST)")
        add("")
        lines.extend(accuracy_lines(args, ours, theirs, tfmot_error))
        n_test = ours["_n_test"]
    if entries:
        add("")
        add("### LiteRT latency, float32 vs int8")
        add("")
        lines.extend(latency_lines(args, entries))
    add("")
    add("### Goals (computed from the numbers above)")
    add("")
    lines.extend(goal_lines(ours, theirs, tfmot_error, entries, n_test))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    machine = _load_layers_benchmark()
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()

    ours = theirs = tfmot_error = None
    if not args.skip_accuracy:
        (x, y), (xt, yt) = datasets.load("mnist", data_dir=args.data_dir)
        if args.train_examples:
            x, y = x[: args.train_examples], y[: args.train_examples]
        if args.test_examples:
            xt, yt = xt[: args.test_examples], yt[: args.test_examples]
        ours = {"_n_train": len(x), "_n_test": len(xt), "_labels": yt}
        with tempfile.TemporaryDirectory() as work_dir:
            args.work_dir = work_dir
            for name in ACCURACY_MODELS:
                try:
                    ours[name] = run_tfcompress(name, args, ((x, y), (xt, yt)))
                except Exception as exc:  # noqa: BLE001 -- e.g. float training itself failing
                    ours[name] = None
                    ours["_error"] = _error_text(exc)
                    _log(f"tfcompress {name} failed: {ours['_error']}")
                keras.backend.clear_session()
            if args.skip_tfmot:
                tfmot_error = "skipped (--skip_tfmot)"
            else:
                theirs, tfmot_error = run_tfmot(args)
    entries = run_latency(args) if args.latency_models or args.latency_probes else []

    report = build_report(
        args, machine, ours, theirs, tfmot_error, entries, load_before, machine._loadavg(),
        started, time.perf_counter() - t0, (git_before, machine.git_state()),
    )
    print(report)
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        print(f"[wrote section into {args.output}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
