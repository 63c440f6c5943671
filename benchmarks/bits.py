"""Accuracy against bits: 16x8, int8, 4-bit weights, ternary, binary and HORQ; LSQ / PACT ranges.

Three parts, in one run (issue 18, item 6):

1. Accuracy vs bits, on LeNet-5 / MNIST and resnet20 / Fashion-MNIST (28x28x1). The float
   model is trained (Adam 1e-3, batch 128, `--epochs`), then, from its weights:

       float          export.to_tflite(model, mode="float32")
       16x8 PTQ       export.to_tflite(model, x_train[:200], mode="int16x8")
       16x8 QAT       quantize_model(model, activation_bits=16), `--qat_epochs` at Adam 1e-4,
                      export.to_tflite(qat, mode="int16x8")
       int8 QAT       quantize_model(model) (EMA ranges), same fine-tuning, to_tflite(qat)
       4-bit QAT      quantize_model(model, weight_bits=4), same fine-tuning, to_tflite(qat)

   and three variants trained from scratch like the float model (same epochs, seed, data),
   exported with int8 post-training quantization, `to_tflite(model, x_train[:200])`:

       ternary        LeNet-5: conv2 -> TernaryConv, fc1 -> TernaryDense (conv1 and the
                      classifier stay float); resnet20: the 18 block convolutions ->
                      TernaryConv (stem, 1x1 projections and classifier stay ordinary)
       binary         LeNet-5: BN -> BinaryConv(conv2) -> BN, BN -> BinaryDense(fc1) -> BN
                      -> ReLU; resnet20: models.resnet20(conv="binary")
       HORQ order 2   the binary model with input_order=2 in every BinaryConv / BinaryDense

   Each file: its bytes, LiteRT latency per example (export.measure_latency, batch 1, one
   thread, XNNPACK), and export.verify(file, keras_model, x_test, labels=y_test): the Keras
   and the TFLite top-1 accuracy on the test images.

2. Range learning: int8 QAT with EMA, LSQ and PACT ranges (quantize_model(range_learning=...))
   and with tfmot's quantize_model, each from the same trained float weights, over `--seeds`
   seeds (seed + 1000 k, k = 0..seeds-1; the seed sets the QAT batch order and initial
   state; k = 0 EMA is part 1's int8 QAT row). tfmot runs in a subprocess of this file
   (`--tfmot_worker`, with TF_USE_LEGACY_KERAS=1, as benchmarks/quantization.py runs
   benchmarks/tfmot_quantization.py, whose `convert`, `run_tflite` and `_compile` it reuses):
   the float model is rebuilt in tf_keras layer for layer with the same layer names, its
   weights copied by name, and converted to int8 the way tfmot_quantization.py does.

3. Training-step cost: seconds per epoch of `models.small_cnn` (Conv-BN-ReLU x 3) on the MNIST
   subset, the plain model against its QAT model (quantize_model defaults), in Keras 3 with
   tfcompress and in tf_keras with tfmot (the subprocess, after this process has finished
   training, so the two never share the CPUs), and quantize_model(batch_statistics="float")
   (the extra float pass per step). Each fit runs `--cost_epochs` epochs (4); the ratio
   compares the fastest epoch after the first (which also pays for tracing) of each.

Default budget: LeNet-5 on the first 20,000 MNIST training images, all 10,000 test images;
resnet20 on the first 6,000 Fashion-MNIST training images and the first 3,000 test images;
2 float epochs, 1 QAT epoch, 4 seeds; epoch cost on 20,000 MNIST images (2046 s on 2 cores
in the recorded run, most of it resnet20's 14 QAT runs, ~60-90 s each with its int8
conversion). A shorter run:

    --lenet_train 10000 --lenet_test 5000 --resnet_train 4000 --resnet_test 2000 \
    --cost_train 10000

`--quick` runs everything on the packaged 8x8 digits with 1 seed: a smoke test of every path
(~7 min on 2 cores, mostly resnet20's fixed tracing and conversion cost).

Run (from the repository root; mnist.npz and fashion_mnist.npz in `--data_dir`, default
$TFCOMPRESS_DATA_DIR):

    PYTHONPATH=. python3 benchmarks/bits.py --output /tmp/bits.md --json /tmp/bits.json
    PYTHONPATH=. python3 benchmarks/bits.py --quick

A failing library call (an exception from tfcompress) is recorded in its table row with its
one-line message, and listed with its traceback's last lines at the end of the report.
"""

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN_MARK = "<!-- BEGIN benchmarks/bits.py -->"
END_MARK = "<!-- END benchmarks/bits.py -->"
SECTION_TITLE = "## Accuracy vs bits (benchmarks/bits.py)"
LR, QAT_LR, BATCH = 1e-3, 1e-4, 128
REPRESENTATIVE_EXAMPLES = 200
SEED_STRIDE = 1000
BN_MOMENTUM = 0.9  # tfcompress.models.BN_MOMENTUM
MODELS = {
    # key: (label, dataset, default train examples, default test examples)
    "lenet5": ("LeNet-5", "mnist", 20000, 10000),
    "resnet20": ("resnet20", "fashion_mnist", 6000, 3000),
}
RANGES = ("ema", "lsq", "pact")
# Goals (issue 18, item 6)
GOAL_16X8_PT = 0.1
GOAL_4BIT_PT = 0.5
GOAL_HORQ_PT = 1.0
GOAL_COST_RATIO = 1.1


def _load_sibling(name):
    spec = importlib.util.spec_from_file_location(f"tfcompress_benchmarks_{name}",
                                                  os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(message):
    print(f"[bits] {message}", file=sys.stderr, flush=True)


def _error_text(exc):
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _tb_tail(n=4):
    lines = [line for line in traceback.format_exc().strip().splitlines() if line.strip()]
    return "\n".join(lines[-n:])


# =========================================================================== tfmot worker
# Runs in the subprocess, with TF_USE_LEGACY_KERAS=1: tf_keras and tfmot only (never Keras 3
# or tfcompress).


def _tfk_builders(k):
    """tf_keras rebuilds of tfcompress.models' lenet5, resnet20 (conv) and small_cnn, with the
    same layer names (weights are copied by name)."""
    L = k.layers

    def lenet5(input_shape, num_classes=10):
        padding = "valid" if min(input_shape[:2]) >= 16 else "same"
        inputs = k.Input(input_shape, name="input")
        x = L.Conv2D(20, 5, padding=padding, name="conv1")(inputs)
        x = L.MaxPooling2D(2, padding=padding, name="pool1")(x)
        x = L.Conv2D(50, 5, padding=padding, name="conv2")(x)
        x = L.MaxPooling2D(2, padding=padding, name="pool2")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(500, activation="relu", name="fc1")(x)
        outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
        return k.Model(inputs, outputs, name="lenet5")

    def resnet20(input_shape, num_classes=10, width=16):
        inputs = k.Input(input_shape, name="input")
        x = L.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
        x = L.ReLU(name="stem_relu")(x)
        in_channels = width
        for stage in range(3):
            filters = width * 2**stage
            for block in range(3):
                strides = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                y = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                             name=f"{name}_conv1")(x)
                y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
                y = L.ReLU(name=f"{name}_relu1")(y)
                y = L.Conv2D(filters, 3, padding="same", use_bias=False,
                             name=f"{name}_conv2")(y)
                y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
                if strides != 1 or in_channels != filters:
                    shortcut = L.Conv2D(filters, 1, strides=strides, use_bias=False,
                                        name=f"{name}_proj")(x)
                    shortcut = L.BatchNormalization(momentum=BN_MOMENTUM,
                                                    name=f"{name}_proj_bn")(shortcut)
                else:
                    shortcut = x
                x = L.Add(name=f"{name}_add")([y, shortcut])
                x = L.ReLU(name=f"{name}_relu2")(x)
                in_channels = filters
        x = L.GlobalAveragePooling2D(name="pool")(x)
        outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
        return k.Model(inputs, outputs, name="resnet20_conv")

    def small_cnn(input_shape, num_classes=10, width=32):
        inputs = k.Input(input_shape, name="input")
        x = inputs
        for i, filters in enumerate((width, 2 * width, 4 * width), 1):
            x = L.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                         name=f"conv{i}")(x)
            x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
            x = L.ReLU(name=f"relu{i}")(x)
        x = L.GlobalAveragePooling2D(name="pool")(x)
        outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
        return k.Model(inputs, outputs, name="small_cnn")

    return {"lenet5": lenet5, "resnet20": resnet20, "small_cnn": small_cnn}


def _set_weights_by_name(model, path):
    with np.load(path) as arrays:
        stored = {key: arrays[key] for key in arrays.files}
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        keys = [f"{layer.name}::{i}" for i in range(len(layer.weights))]
        missing = [key for key in keys if key not in stored]
        if missing:
            raise ValueError(f"no stored weights {missing} for tf_keras layer {layer.name}")
        layer.set_weights([stored[key] for key in keys])
        used.update(keys)
    unused = sorted(set(stored) - used)
    if unused:
        raise ValueError(f"stored weights not used by the tf_keras rebuild: {unused[:5]}")


def _epoch_timer(k):
    class EpochTimer(k.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer


def worker_main(config_path, out_path):
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.exit("--tfmot_worker needs TF_USE_LEGACY_KERAS=1 (benchmarks/bits.py sets it)")
    tq = _load_sibling("tfmot_quantization")  # tf_keras + tfmot; its helpers are reused
    k, tfmot = tq.keras, tq.tfmot
    builders = _tfk_builders(k)
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    report = {"versions": tq.tool_versions(), "models": {}, "cost": None, "errors": {}}

    def log(message):
        print(f"[tfmot] {message}", file=sys.stderr, flush=True)

    for key, spec in config["models"].items():
        out = report["models"][key] = {"seeds": [], "acc": [], "keras_acc": [], "bytes": [],
                                       "train_seconds": [], "errors": []}
        try:
            with np.load(spec["data"]) as d:
                x, y, xt, yt = (d[n] for n in ("x", "y", "xt", "yt"))
            for seed in spec["seeds"]:
                k.utils.set_random_seed(seed)
                model = builders[key](tuple(x.shape[1:]))
                _set_weights_by_name(model, spec["weights"])
                k.utils.set_random_seed(seed)
                qat = tfmot.quantization.keras.quantize_model(model)
                tq._compile(qat, QAT_LR)
                start = time.perf_counter()
                qat.fit(x, y, batch_size=BATCH, epochs=spec["qat_epochs"], verbose=0)
                out["train_seconds"].append(time.perf_counter() - start)
                out["keras_acc"].append(float(qat.evaluate(xt, yt, batch_size=512, verbose=0)[1]))
                blob = tq.convert(qat, x[:REPRESENTATIVE_EXAMPLES])
                acc = float(np.mean(tq.run_tflite(blob, xt).argmax(-1) == yt))
                out["seeds"].append(seed)
                out["acc"].append(acc)
                out["bytes"].append(len(blob))
                log(f"{key}: seed {seed}: tfmot QAT int8 .tflite accuracy {acc:.4f}")
                k.backend.clear_session()
        except Exception as exc:  # noqa: BLE001 -- reported, the other parts go on
            out["errors"].append(_error_text(exc) + "\n" + _tb_tail())
            log(f"{key}: failed: {_error_text(exc)}")
    cost = config.get("cost")
    if cost:
        try:
            with np.load(cost["data"]) as d:
                x, y = d["x"], d["y"]
            timer = _epoch_timer(k)
            k.utils.set_random_seed(cost["seed"])
            model = builders["small_cnn"](tuple(x.shape[1:]))
            tq._compile(model, LR)
            t_plain = timer()
            model.fit(x, y, batch_size=BATCH, epochs=cost["epochs"], verbose=0, callbacks=[t_plain])
            k.utils.set_random_seed(cost["seed"])
            qat = tfmot.quantization.keras.quantize_model(model)
            tq._compile(qat, QAT_LR)
            t_qat = timer()
            qat.fit(x, y, batch_size=BATCH, epochs=cost["epochs"], verbose=0, callbacks=[t_qat])
            report["cost"] = {"plain": t_plain.seconds, "qat": t_qat.seconds}
            log(f"epoch cost: plain {t_plain.seconds}, QAT {t_qat.seconds}")
        except Exception as exc:  # noqa: BLE001
            report["errors"]["cost"] = _error_text(exc) + "\n" + _tb_tail()
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f)
    return 0


# =========================================================================== Keras 3 side

keras = tfcompress = models = export = datasets = None


def _import_keras3():
    global keras, tfcompress, models, export, datasets
    import keras as _keras

    import tfcompress as _tfcompress
    from tfcompress import datasets as _datasets
    from tfcompress import export as _export
    from tfcompress import models as _models

    keras, tfcompress, models, export, datasets = (_keras, _tfcompress, _models, _export,
                                                   _datasets)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFCOMPRESS_DATA_DIR") or None,
                        help="folder holding mnist.npz and fashion_mnist.npz "
                        "(default $TFCOMPRESS_DATA_DIR)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs (2)")
    parser.add_argument("--qat_epochs", type=int, default=1, help="QAT fine-tuning epochs")
    parser.add_argument("--seeds", type=int, default=None, help="QAT seeds, part 2 (4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lenet_train", type=int, default=None)
    parser.add_argument("--lenet_test", type=int, default=None)
    parser.add_argument("--resnet_train", type=int, default=None)
    parser.add_argument("--resnet_test", type=int, default=None)
    parser.add_argument("--cost_train", type=int, default=None,
                        help="MNIST images per epoch in part 3 (20000)")
    parser.add_argument("--cost_epochs", type=int, default=4)
    parser.add_argument("--latency_runs", type=int, default=None, help="(200)")
    parser.add_argument("--skip_tfmot", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: the 8x8 digits, 1 seed, 1 float epoch (~7 min)")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    parser.add_argument("--output", default=None,
                        help="markdown file to write this benchmark's section into")
    parser.add_argument("--tfmot_worker", nargs=2, metavar=("CONFIG", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"epochs": 1, "seeds": 1, "latency_runs": 30, "lenet_train": 0, "lenet_test": 0,
             "resnet_train": 0, "resnet_test": 0, "cost_train": 0}
    full = {"epochs": 2, "seeds": 4, "latency_runs": 200,
            "lenet_train": MODELS["lenet5"][2], "lenet_test": MODELS["lenet5"][3],
            "resnet_train": MODELS["resnet20"][2], "resnet_test": MODELS["resnet20"][3],
            "cost_train": 20000}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if not args.quick and not args.tfmot_worker and not args.data_dir:
        parser.error("give --data_dir or set $TFCOMPRESS_DATA_DIR (mnist.npz, fashion_mnist.npz)")
    return args


def load(name, args, train, test):
    dataset = "digits" if args.quick else name
    (x, y), (xt, yt) = datasets.load(dataset, data_dir=None if args.quick else args.data_dir)
    if train:
        x, y = x[:train], y[:train]
    if test:
        xt, yt = xt[:test], yt[:test]
    return dataset, (x, y), (xt, yt)


def _compile(model, lr):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


class Failures:
    """Every exception a library call raised: (where, one-line message, traceback tail)."""

    def __init__(self):
        self.items = []

    def add(self, where, exc):
        text = _error_text(exc)
        self.items.append({"where": where, "message": text, "traceback": _tb_tail()})
        _log(f"FAILED {where}: {text}")
        return text


# --------------------------------------------------------------------------- variants


def lenet_variant(kind, input_shape, num_classes=10):
    """LeNet-5 with conv2 / fc1 ternary or binary; conv1 and the classifier stay float."""
    from tfcompress.layers import BinaryConv, BinaryDense, TernaryConv, TernaryDense

    L = keras.layers
    padding = "valid" if min(input_shape[:2]) >= 16 else "same"
    inputs = keras.Input(input_shape, name="input")
    x = L.Conv2D(20, 5, padding=padding, name="conv1")(inputs)
    x = L.MaxPooling2D(2, padding=padding, name="pool1")(x)
    if kind == "ternary":
        x = TernaryConv(50, 5, padding=padding, use_bias=True, name="conv2")(x)
        x = L.MaxPooling2D(2, padding=padding, name="pool2")(x)
        x = L.Flatten(name="flatten")(x)
        x = TernaryDense(500, use_bias=True, name="fc1")(x)
        x = L.ReLU(name="fc1_relu")(x)
    else:
        order = 2 if kind == "horq2" else 1
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name="bn1")(x)
        x = BinaryConv(50, 5, padding=padding, input_order=order, name="conv2")(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name="bn2")(x)
        x = L.MaxPooling2D(2, padding=padding, name="pool2")(x)
        x = L.Flatten(name="flatten")(x)
        x = BinaryDense(500, input_order=order, name="fc1")(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name="bn3")(x)
        x = L.ReLU(name="fc1_relu")(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"lenet5_{kind}")


def resnet_variant(kind, input_shape):
    """resnet20 with ternary block convolutions, binary ones (models.resnet20("binary")), or
    binary ones with HORQ order 2 inputs."""
    from tfcompress.layers import BinaryConv, TernaryConv

    if kind == "ternary":
        base = models.resnet20("conv", input_shape=input_shape)

        def swap(layer):
            cfg = layer.get_config()
            if (isinstance(layer, keras.layers.Conv2D) and layer.name.startswith("stage")
                    and layer.name.endswith(("_conv1", "_conv2"))):
                return TernaryConv(cfg["filters"], cfg["kernel_size"], strides=cfg["strides"],
                                   padding=cfg["padding"], use_bias=cfg["use_bias"],
                                   name=layer.name)
            return layer.__class__.from_config(cfg)

        model = keras.models.clone_model(base, clone_function=swap)
        n = sum(isinstance(layer, TernaryConv) for layer in model.layers)
        if n != 18:
            raise AssertionError(f"ternary resnet20: {n} TernaryConv layers, expected 18")
        return model
    base = models.resnet20("binary", input_shape=input_shape)
    if kind == "binary":
        return base

    def order2(layer):
        cfg = layer.get_config()
        if isinstance(layer, BinaryConv):
            cfg["input_order"] = 2
        return layer.__class__.from_config(cfg)

    return keras.models.clone_model(base, clone_function=order2)


def build_float(key, input_shape):
    if key == "lenet5":
        return models.lenet5(input_shape=input_shape)
    return models.resnet20("conv", input_shape=input_shape)


def build_variant(key, kind, input_shape):
    return (lenet_variant if key == "lenet5" else resnet_variant)(kind, input_shape)


# --------------------------------------------------------------------------- measuring


def measure(row, blob, keras_model, data, args, failures, probe, latency=True):
    """Bytes, LiteRT latency, Keras and TFLite top-1 of one file, into `row`."""
    (xt, yt) = data
    row["bytes"] = len(blob)
    problem = probe(blob) if probe else None
    if problem:
        row["error"] = problem
        failures.items.append({"where": row["where"], "message": problem, "traceback": ""})
        _log(f"FAILED {row['where']}: {problem}")
        return
    try:
        report = export.verify(blob, keras_model, xt, labels=yt)
        row["keras_acc"] = float(report["keras_accuracy"])
        row["tflite_acc"] = float(report["tflite_accuracy"])
        row["agreement"] = float(report.get("argmax_agreement", float("nan")))
    except Exception as exc:  # noqa: BLE001
        row["error"] = "verify: " + failures.add(row["where"] + " verify", exc)
        return
    if latency:
        try:
            lat = export.measure_latency(blob, runs=args.latency_runs, warmup=10, threads=1,
                                         batch=1)
            row["latency_ms"] = {k: lat[k] for k in ("median_ms", "p10_ms", "p90_ms")}
        except Exception as exc:  # noqa: BLE001
            row["error"] = "measure_latency: " + failures.add(row["where"] + " latency", exc)
    _log(f"{row['where']}: TFLite top-1 {row.get('tflite_acc', float('nan')):.4f}, "
         f"Keras {row.get('keras_acc', float('nan')):.4f}, {len(blob):,} bytes"
         + (f", {row['latency_ms']['median_ms']:.3f} ms" if row.get("latency_ms") else ""))


def qat_run(model, options, mode, seed, train, args):
    """quantize_model(model, **options) fine-tuned `qat_epochs`; returns (qat, blob, seconds)."""
    (x, y) = train
    keras.utils.set_random_seed(seed)
    qat = tfcompress.quantize_model(model, **options)
    _compile(qat, QAT_LR)
    start = time.perf_counter()
    if args.qat_epochs:
        qat.fit(x, y, batch_size=BATCH, epochs=args.qat_epochs, verbose=0)
    seconds = time.perf_counter() - start
    blob = export.to_tflite(qat) if mode == "int8" else export.to_tflite(qat, mode=mode)
    return qat, blob, seconds


def _save_weights_by_name(model, path):
    arrays = {}
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{layer.name}::{i}"] = w
    np.savez(path, **arrays)


QAT_ROWS = (
    # label, how, quantize_model options, export mode
    ("16x8 QAT", "quantize_model(activation_bits=16) -> to_tflite(qat, mode=\"int16x8\")",
     {"activation_bits": 16}, "int16x8"),
    ("int8 QAT", "quantize_model() (EMA ranges) -> to_tflite(qat)", {}, "int8"),
    ("4-bit weights QAT", "quantize_model(weight_bits=4) -> to_tflite(qat)",
     {"weight_bits": 4}, "int8"),
)
SCRATCH_ROWS = (
    ("ternary", "ternary"), ("binary", "binary (HORQ order 1)"), ("horq2", "HORQ order 2"),
)


def run_model(key, args, failures, probe, work_dir):
    label, name = MODELS[key][:2]
    train_n, test_n = ((args.lenet_train, args.lenet_test) if key == "lenet5"
                       else (args.resnet_train, args.resnet_test))
    dataset, (x, y), (xt, yt) = load(name, args, train_n, test_n)
    input_shape = tuple(x.shape[1:])
    res = {"key": key, "label": label, "dataset": dataset, "n_train": len(x), "n_test": len(xt),
           "input_shape": list(input_shape), "rows": [], "seeds": {}, "seconds": {}}
    rows = res["rows"]

    def new_row(variant, how):
        row = {"variant": variant, "how": how, "where": f"{key} {variant}"}
        rows.append(row)
        return row

    # ---- float
    keras.utils.set_random_seed(args.seed)
    model = build_float(key, input_shape)
    _compile(model, LR)
    _log(f"{key}: float training on {len(x)} {dataset} images, {args.epochs} epoch(s)")
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=args.epochs, verbose=0)
    res["seconds"]["train_float"] = time.perf_counter() - start
    weights_path = os.path.join(work_dir, f"{key}_weights.npz")
    _save_weights_by_name(model, weights_path)
    np.savez(os.path.join(work_dir, f"{key}_data.npz"), x=x, y=y, xt=xt, yt=yt)
    representative = x[:REPRESENTATIVE_EXAMPLES]

    row = new_row("float", "to_tflite(model, mode=\"float32\")")
    row["train_seconds"] = res["seconds"]["train_float"]
    try:
        measure(row, export.to_tflite(model, mode="float32"), model, (xt, yt), args, failures,
                probe)
    except Exception as exc:  # noqa: BLE001
        row["error"] = failures.add(row["where"], exc)

    row = new_row("16x8 PTQ", "to_tflite(model, x_train[:200], mode=\"int16x8\")")
    try:
        blob = export.to_tflite(model, representative, mode="int16x8")
        measure(row, blob, model, (xt, yt), args, failures, probe)
    except Exception as exc:  # noqa: BLE001
        row["error"] = failures.add(row["where"], exc)

    # ---- QAT rows (seed = args.seed)
    for variant, how, options, mode in QAT_ROWS:
        row = new_row(variant, how)
        _log(f"{key}: {variant}")
        try:
            qat, blob, seconds = qat_run(model, options, mode, args.seed, (x, y), args)
            row["train_seconds"] = seconds
            measure(row, blob, qat, (xt, yt), args, failures, probe)
        except Exception as exc:  # noqa: BLE001
            row["error"] = failures.add(row["where"], exc)
        keras.backend.clear_session()

    # ---- ternary / binary / HORQ, from scratch
    for kind, variant in SCRATCH_ROWS:
        row = new_row(variant, "trained from scratch, to_tflite(model, x_train[:200]) (int8 PTQ)")
        _log(f"{key}: {variant}: training from scratch, {args.epochs} epoch(s)")
        try:
            keras.utils.set_random_seed(args.seed)
            vmodel = build_variant(key, kind, input_shape)
            _compile(vmodel, LR)
            start = time.perf_counter()
            vmodel.fit(x, y, batch_size=BATCH, epochs=args.epochs, verbose=0)
            row["train_seconds"] = time.perf_counter() - start
            row["params"] = int(vmodel.count_params())
            blob = export.to_tflite(vmodel, representative)
            measure(row, blob, vmodel, (xt, yt), args, failures, probe)
        except Exception as exc:  # noqa: BLE001
            row["error"] = failures.add(row["where"], exc)
        keras.backend.clear_session()

    # ---- part 2: EMA / LSQ / PACT over seeds
    int8_row = next(r for r in rows if r["variant"] == "int8 QAT")
    seeds = [args.seed + SEED_STRIDE * k for k in range(args.seeds)]
    res["seed_list"] = seeds
    for ranges in RANGES:
        out = res["seeds"][ranges] = {"seeds": [], "acc": [], "keras_acc": [], "errors": []}
        for seed in seeds:
            if ranges == "ema" and seed == args.seed and "tflite_acc" in int8_row:
                out["seeds"].append(seed)
                out["acc"].append(int8_row["tflite_acc"])
                out["keras_acc"].append(int8_row["keras_acc"])
                continue
            where = f"{key} int8 QAT range_learning={ranges!r} seed {seed}"
            try:
                qat, blob, _ = qat_run(model, {"range_learning": ranges}, "int8", seed, (x, y),
                                       args)
                row = {"where": where}
                measure(row, blob, qat, (xt, yt), args, failures, None, latency=False)
                if "tflite_acc" in row:
                    out["seeds"].append(seed)
                    out["acc"].append(row["tflite_acc"])
                    out["keras_acc"].append(row["keras_acc"])
                else:
                    out["errors"].append(row.get("error", "no result"))
            except Exception as exc:  # noqa: BLE001
                out["errors"].append(failures.add(where, exc))
            keras.backend.clear_session()
    res["tfmot_spec"] = {"data": os.path.join(work_dir, f"{key}_data.npz"),
                         "weights": weights_path, "seeds": seeds, "qat_epochs": args.qat_epochs}
    return res


class _Timer:
    def __init__(self):
        self.seconds = []

    def make(self):
        timer = self

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.seconds.append(time.perf_counter() - timer._start)

        return EpochTimer()


def run_cost(args, failures, work_dir):
    """Part 3, Keras 3 side: small_cnn plain vs QAT epochs on the MNIST subset."""
    dataset, (x, y), _ = load("mnist", args, args.cost_train, 1)
    np.savez(os.path.join(work_dir, "cost_data.npz"), x=x, y=y)
    out = {"dataset": dataset, "n_train": len(x), "epochs": args.cost_epochs}
    _log(f"epoch cost: small_cnn on {len(x)} {dataset} images, {args.cost_epochs} epochs each")
    try:
        keras.utils.set_random_seed(args.seed)
        model = models.small_cnn(input_shape=tuple(x.shape[1:]))
        _compile(model, LR)
        plain = _Timer()
        model.fit(x, y, batch_size=BATCH, epochs=args.cost_epochs, verbose=0,
                  callbacks=[plain.make()])
        keras.utils.set_random_seed(args.seed)
        qat = tfcompress.quantize_model(model)
        _compile(qat, QAT_LR)
        timed = _Timer()
        qat.fit(x, y, batch_size=BATCH, epochs=args.cost_epochs, verbose=0,
                callbacks=[timed.make()])
        keras.utils.set_random_seed(args.seed)
        exact = tfcompress.quantize_model(model, batch_statistics="float")
        _compile(exact, QAT_LR)
        timed_exact = _Timer()
        exact.fit(x, y, batch_size=BATCH, epochs=args.cost_epochs, verbose=0,
                  callbacks=[timed_exact.make()])
        out["plain"], out["qat"] = plain.seconds, timed.seconds
        out["qat_float_statistics"] = timed_exact.seconds
        _log(f"epoch cost: plain {plain.seconds}, QAT {timed.seconds}, "
             f"QAT (float statistics) {timed_exact.seconds}")
    except Exception as exc:  # noqa: BLE001
        out["error"] = failures.add("epoch cost (tfcompress QAT)", exc)
    out["tfmot_spec"] = {"data": os.path.join(work_dir, "cost_data.npz"),
                         "epochs": args.cost_epochs, "seed": args.seed}
    return out


def run_tfmot(config, work_dir):
    config_path = os.path.join(work_dir, "tfmot_config.json")
    out_path = os.path.join(work_dir, "tfmot_out.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    command = [sys.executable, os.path.abspath(__file__), "--tfmot_worker", config_path, out_path]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    _log("tfmot: " + " ".join(shlex.quote(c) for c in command[1:]) + " (TF_USE_LEGACY_KERAS=1)")
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in proc.stderr.splitlines():
        if line.startswith("[tfmot]"):
            print(line, file=sys.stderr, flush=True)
    if proc.returncode != 0 or not os.path.isfile(out_path):
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-3:]
        return None, f"tfmot subprocess exited with {proc.returncode}: " + " | ".join(tail)
    with open(out_path, encoding="utf-8") as f:
        report = json.load(f)
    report["seconds"] = time.perf_counter() - start
    return report, None


# --------------------------------------------------------------------------- report


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _stats(values):
    if not values:
        return None
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _short(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(res, variant):
    return next((r for r in res["rows"] if r["variant"] == variant), {})


def bits_lines(res):
    lines = [(f"**{res['label']} / {res['dataset']}** (input {tuple(res['input_shape'])}, "
             f"{res['n_train']} training images, {res['n_test']} test images)"), "",
             ("| Variant | How | Keras top-1 % | TFLite top-1 % | Keras/TFLite argmax agree | "
             ".tflite bytes | LiteRT ms / example (median, p10-p90) | Train s |"),
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lat = r.get("latency_ms")
        lat_text = (f"{lat['median_ms']:.3f} ({lat['p10_ms']:.3f}-{lat['p90_ms']:.3f})"
                    if lat else "-")
        if r.get("error"):
            lat_text = f"FAILED: {_short(r['error'])}"
        agree = r.get("agreement")
        agree_text = "-" if agree is None else f"{100 * agree:.2f}%"
        size = f"{r['bytes']:,}" if "bytes" in r else "-"
        train = f"{r['train_seconds']:.1f}" if "train_seconds" in r else "-"
        lines.append(f"| {r['variant']} | {r['how']} | {_pct(r.get('keras_acc'))} | "
                     f"{_pct(r.get('tflite_acc'))} | {agree_text} | {size} | {lat_text} | "
                     f"{train} |")
    return lines


def seeds_lines(results, tfmot, tfmot_error):
    lines = [("| Model | Ranges | Seeds | int8 TFLite top-1 % per seed | Mean % | Min-max % "
             "(spread, pt) | Std pt |"), "|---|---|---:|---|---:|---:|---:|"]
    for res in results:
        configs = [(f"tfcompress {r.upper()}", res["seeds"].get(r, {})) for r in RANGES]
        t = ((tfmot or {}).get("models") or {}).get(res["key"]) or {
            "acc": [], "errors": [tfmot_error or "no result"]}
        configs.append(("tfmot quantize_model", t))
        for name, out in configs:
            s = _stats(out.get("acc", []))
            per = ", ".join(_pct(a) for a in out.get("acc", [])) or "-"
            if out.get("errors"):
                per += f" (FAILED {len(out['errors'])}: {_short(out['errors'][0], 120)})"
            if s:
                lines.append(
                    f"| {res['label']} | {name} | {s['n']} | {per} | {_pct(s['mean'])} | "
                    f"{_pct(s['min'])}-{_pct(s['max'])} ({100 * (s['max'] - s['min']):.2f}) | "
                    f"{100 * s['std']:.2f} |")
            else:
                lines.append(f"| {res['label']} | {name} | 0 | {per} | - | - | - |")
    return lines


def epoch_ratio(qat_seconds, plain_seconds):
    """QAT / plain epoch time: the fastest epoch after the first (which also traces)
    of each, or the only one."""
    def best(seconds):
        return min(seconds[1:]) if len(seconds) > 1 else seconds[-1]

    return best(qat_seconds) / best(plain_seconds)


def cost_lines(cost, tfmot, tfmot_error):
    lines = [(f"small_cnn on {cost['n_train']} {cost['dataset']} images, batch {BATCH}, "
             f"{cost['epochs']} epochs per fit; seconds of each epoch (the first includes "
             "tracing); ratio = fastest QAT epoch / fastest plain epoch after the first."), "",
             "| Framework | Plain epochs s | QAT epochs s | QAT / plain |",
             "|---|---|---|---:|"]
    default = "Keras 3 + tfcompress quantize_model() (default: quantized-pass statistics)"
    sides = [(default, cost)]
    if cost.get("qat_float_statistics"):
        sides.append(("Keras 3 + tfcompress quantize_model(batch_statistics='float')",
                      dict(cost, qat=cost["qat_float_statistics"])))
    tc = (tfmot or {}).get("cost")
    err = ((tfmot or {}).get("errors") or {}).get("cost") or tfmot_error
    sides.append(("tf_keras + tfmot quantize_model", tc or {"error": err or "no result"}))
    for name, c in sides:
        if c.get("plain") and c.get("qat"):
            lines.append(f"| {name} | {', '.join(f'{s:.2f}' for s in c['plain'])} | "
                         f"{', '.join(f'{s:.2f}' for s in c['qat'])} | "
                         f"{epoch_ratio(c['qat'], c['plain']):.2f}x |")
        else:
            lines.append(f"| {name} | - | - | FAILED: {_short(c.get('error'))} |")
    return lines


def goal_lines(results, tfmot, tfmot_error, cost):
    lines = []
    add = lines.append

    def verdict(ok):
        return "MET" if ok else "NOT MET"

    for res in results:
        f, p16, q16, q8, q4 = (_row(res, v) for v in ("float", "16x8 PTQ", "16x8 QAT",
                                                        "int8 QAT", "4-bit weights QAT"))
        # Same weights: 16x8 PTQ against the float file; QAT had one more epoch of training.
        if "tflite_acc" in p16 and "tflite_acc" in f:
            diff = 100 * (p16["tflite_acc"] - f["tflite_acc"])
            add(f"- {res['label']}: 16x8 PTQ .tflite {_pct(p16['tflite_acc'])} % vs float "
                f".tflite {_pct(f['tflite_acc'])} % (same weights): {diff:+.2f} pt (goal: "
                f"|diff| <= {GOAL_16X8_PT} pt) -> {verdict(abs(diff) <= GOAL_16X8_PT + 1e-9)}")
        else:
            add(f"- {res['label']}: 16x8 within {GOAL_16X8_PT} pt of float -> NOT CHECKED "
                f"({_short(p16.get('error') or f.get('error') or 'no result')})")
        if "tflite_acc" in q16 and "tflite_acc" in q8:
            add(f"  (16x8 QAT {_pct(q16['tflite_acc'])} % vs int8 QAT {_pct(q8['tflite_acc'])} % "
                f"after the same fine-tuning: {100 * (q16['tflite_acc'] - q8['tflite_acc']):+.2f}"
                " pt; both above float because QAT adds an epoch of training)")
        if "tflite_acc" in q4 and "tflite_acc" in q8:
            drop = 100 * (q8["tflite_acc"] - q4["tflite_acc"])
            add(f"- {res['label']}: 4-bit weights QAT .tflite {_pct(q4['tflite_acc'])} % vs int8 "
                f"QAT .tflite {_pct(q8['tflite_acc'])} % (same seed): 4-bit - int8 = "
                f"{-drop:+.2f} pt (goal: at most {GOAL_4BIT_PT} pt below int8) -> "
                f"{verdict(drop <= GOAL_4BIT_PT)}")
        else:
            add(f"- {res['label']}: 4-bit within {GOAL_4BIT_PT} pt of int8 -> NOT CHECKED "
                f"({_short(q4.get('error') or q8.get('error') or 'no result')})")
        b1, b2 = _row(res, "binary (HORQ order 1)"), _row(res, "HORQ order 2")
        if "tflite_acc" in b1 and "tflite_acc" in b2:
            gain = 100 * (b2["tflite_acc"] - b1["tflite_acc"])
            add(f"- {res['label']}: HORQ order 2 .tflite {_pct(b2['tflite_acc'])} % vs order 1 "
                f"{_pct(b1['tflite_acc'])} %: {gain:+.2f} pt (goal: >= {GOAL_HORQ_PT} pt"
                f"{'' if res['key'] == 'resnet20' else '; the goal names resnet20, shown here too'}"
                f") -> {verdict(gain >= GOAL_HORQ_PT)}")
        else:
            add(f"- {res['label']}: HORQ order 2 vs 1 -> NOT CHECKED "
                f"({_short(b2.get('error') or b1.get('error') or 'no result')})")
    for res in results:
        t = ((tfmot or {}).get("models") or {}).get(res["key"]) or {}
        ts = _stats(t.get("acc", []))
        if not ts:
            add(f"- {res['label']}: LSQ or PACT above tfmot's QAT -> NOT CHECKED (tfmot: "
                f"{_short((t.get('errors') or [tfmot_error or 'no result'])[0])})")
            continue
        best = None
        for r in ("lsq", "pact"):
            s = _stats(res["seeds"].get(r, {}).get("acc", []))
            if s and (best is None or s["mean"] > best[1]["mean"]):
                best = (r, s)
        if best is None:
            add(f"- {res['label']}: LSQ or PACT above tfmot -> NOT CHECKED (no LSQ / PACT result)")
            continue
        r, s = best
        diff = 100 * (s["mean"] - ts["mean"])
        spread = 100 * max(s["max"] - s["min"], ts["max"] - ts["min"])
        add(f"- {res['label']}: best of LSQ / PACT = {r.upper()} mean {_pct(s['mean'])} % over "
            f"{s['n']} seeds vs tfmot {_pct(ts['mean'])} % over {ts['n']}: {diff:+.2f} pt; "
            f"spread (the larger min-max range of the two) {spread:.2f} pt (goal: above tfmot by "
            f"more than the spread) -> {verdict(diff > spread)}")
    if cost.get("plain") and cost.get("qat"):
        ratio = epoch_ratio(cost["qat"], cost["plain"])
        tc = (tfmot or {}).get("cost")
        other = (f"; tfmot {epoch_ratio(tc['qat'], tc['plain']):.2f}x" if tc else "")
        add(f"- QAT epoch / plain epoch (small_cnn, default QAT): tfcompress {ratio:.2f}x{other} "
            f"(goal: <= {GOAL_COST_RATIO}x for tfcompress) -> {verdict(ratio <= GOAL_COST_RATIO)}")
    else:
        add(f"- QAT epoch cost -> NOT CHECKED ({_short(cost.get('error', 'no result'))})")
    return lines


def build_report(args, machine, results, cost, tfmot, tfmot_error, failures, load, started,
                 wall, git, seconds):
    from importlib import metadata

    lines = machine.report_header(started, wall)
    add = lines.append
    state = git[0] if git[0] == git[1] else f"{git[0]} at the start, {git[1]} at the end"
    add(f"- ai-edge-litert {metadata.version('ai-edge-litert')}; tfcompress {state}")
    if tfmot:
        v = tfmot.get("versions", {})
        add(f"- tfmot side (subprocess, TF_USE_LEGACY_KERAS=1): tf_keras {v.get('tf_keras')}, "
            f"tensorflow-model-optimization {v.get('tensorflow_model_optimization')}")
    add(f"- Load average (1, 5, 15 min) at start: {load[0]}; at end: {load[1]}"
        + (" (quick mode: the 8x8 digits, not MNIST / Fashion-MNIST)" if args.quick else ""))
    add("")
    add("### Setup and budget")
    add("")
    add(f"Float training: Adam {LR:g}, batch {BATCH}, {args.epochs} epoch(s), seed {args.seed}; "
        f"QAT: {args.qat_epochs} epoch(s) at Adam {QAT_LR:g} from the trained float weights. "
        "Data: " + "; ".join(f"{r['label']} on the first {r['n_train']} {r['dataset']} "
                             f"training images, the first {r['n_test']} test images"
                             for r in results)
        + f". Part 2: {args.seeds} seed(s) (seed + 1000 k). Part 3: small_cnn, "
        f"{cost.get('n_train')} {cost.get('dataset')} images. Latency: "
        f"export.measure_latency(runs={args.latency_runs}, warmup=10, threads=1, batch=1), "
        "LiteRT with XNNPACK. Accuracy: export.verify(file, keras_model, x_test, labels=y_test) "
        "(Keras top-1 of the model the file came from: the float / QAT / variant model). "
        "The budget (training subsets, 1 QAT epoch) keeps the run to tens of minutes on 2 cores; "
        "the numbers compare configurations, they are not converged accuracies.")
    add("")
    add("### 1. Accuracy vs bits")
    add("")
    add("Ternary / binary / HORQ rows are separate models trained from scratch (LeNet-5: conv2 "
        "and fc1 replaced, conv1 and the classifier float, BatchNormalization around the binary "
        "layers; resnet20: the 18 block convolutions replaced), exported with int8 PTQ: the "
        "file stores their weights as int8 tensors (ternary / binary values), so their bytes "
        "are those of an int8 file.")
    for res in results:
        add("")
        lines.extend(bits_lines(res))
    add("")
    add("### 2. Range learning: EMA / LSQ / PACT vs tfmot QAT (int8 .tflite top-1)")
    add("")
    add("Every run starts from the same trained float weights (tfmot: copied by layer name into "
        "a tf_keras rebuild); the seed sets the QAT batch order.")
    add("")
    lines.extend(seeds_lines(results, tfmot, tfmot_error))
    add("")
    add("### 3. Training-step cost: QAT epoch vs plain epoch")
    add("")
    lines.extend(cost_lines(cost, tfmot, tfmot_error))
    add("")
    add("### Goals (computed from the numbers above)")
    add("")
    lines.extend(goal_lines(results, tfmot, tfmot_error, cost))
    add("")
    add("Wall time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if failures.items or tfmot_error:
        add("")
        add("### Failures (full text)")
        add("")
        if tfmot_error:
            add(f"- tfmot subprocess: {tfmot_error}")
        for item in failures.items:
            add(f"- {item['where']}: {item['message']}")
            if item["traceback"]:
                add("")
                add("  ```text")
                lines.extend("  " + line for line in item["traceback"].splitlines())
                add("  ```")
        for key, model in ((tfmot or {}).get("models") or {}).items():
            for text in model.get("errors", []):
                add(f"- tfmot {key}: {text.splitlines()[0]}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.tfmot_worker:
        return worker_main(*args.tfmot_worker)
    _import_keras3()
    machine = _load_sibling("layers")
    quantization = _load_sibling("quantization")  # probe_tflite: LiteRT aborts in a child
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()
    failures, results, seconds = Failures(), [], {}
    with tempfile.TemporaryDirectory() as work_dir:
        for key in args.models:
            start = time.perf_counter()
            try:
                results.append(run_model(key, args, failures, quantization.probe_tflite,
                                         work_dir))
            except Exception as exc:  # noqa: BLE001 -- e.g. float training failing
                failures.add(f"{key} (whole model)", exc)
            seconds[key] = time.perf_counter() - start
            keras.backend.clear_session()
        start = time.perf_counter()
        cost = run_cost(args, failures, work_dir)
        seconds["epoch cost (tfcompress)"] = time.perf_counter() - start
        tfmot, tfmot_error = None, None
        if args.skip_tfmot:
            tfmot_error = "skipped (--skip_tfmot)"
        else:
            config = {"models": {r["key"]: r["tfmot_spec"] for r in results},
                      "cost": cost["tfmot_spec"]}
            tfmot, tfmot_error = run_tfmot(config, work_dir)
            if tfmot:
                seconds["tfmot subprocess"] = tfmot["seconds"]
    wall = time.perf_counter() - t0
    report = build_report(args, machine, results, cost, tfmot, tfmot_error, failures,
                          (load_before, machine._loadavg()), started, wall,
                          (git_before, machine.git_state()), seconds)
    print(report)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("output", "json")}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "started": started.isoformat(), "wall_seconds": wall,
                       "results": results, "cost": cost, "tfmot": tfmot,
                       "tfmot_error": tfmot_error, "failures": failures.items,
                       "seconds": seconds}, f, indent=2, default=str)
        _log(f"wrote {args.json}")
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        _log(f"wrote section into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
