"""Channel pruning: seven importance criteria at 50% MACs, against a from-scratch control.

Structured pruning with `tfcompress.pruning.prune_channels`: channels are removed for real
(a new, smaller model of plain layers), so the parameters, the multiply-adds, the .tflite files
and the LiteRT latency all shrink. Per model, in one run:

    1. unpruned   `resnet20` (tfcompress.models, conv="conv") and `vgg_small` (defined here:
                  conv-BN-ReLU 16, 16, maxpool, 32, 32, maxpool, 64, 64, maxpool, global
                  average pooling, Dense(10)), trained `--epochs` on Fashion-MNIST with
                  `deep_compression.train_classifier` (Adam `--lr`, cosine decay to 1%, batch
                  `--batch_size`, sparse categorical cross-entropy).
    2. criteria   for each of `--criteria` (default all seven: l1, l2, fpgm, bn_scale, taylor,
                  dcp, random): `prune_channels(trained, target={"macs": --target_macs},
                  criterion=c, data=(x_sub, y_sub) for taylor and dcp, round_to=--round_to
                  (16: the channel blocks XNNPACK's int8 kernels work on), seed=--seed)`, then
                  fine-tuned `--finetune_epochs` with the same recipe (Adam `--finetune_lr`,
                  cosine decay), the same batch order for every criterion. x_sub: a seeded
                  random subset of `--criterion_examples` training images.
    3. scratch    the control of Liu et al., "Rethinking the Value of Network Pruning", ICLR
                  2019: the pruned architecture of `--scratch_from` (default l1; the first
                  criterion that succeeded if that one failed), rebuilt from its config with
                  fresh random weights (`keras.Model.from_config(pruned.get_config())`) and
                  trained from scratch for `--epochs + --finetune_epochs` epochs (Adam `--lr`).

    4. probe      the trained model pruned by l1 to the target at each `--probe_round_to`
                  (1, 4, 8, 16), int8 files timed without fine-tuning: how much of the
                  int8 speed-up the channel counts alone decide.

For the unpruned model, every pruned + fine-tuned model and the scratch control it measures:
test accuracy (Keras; plus the pruned model's accuracy before fine-tuning), parameters and
MACs (`tfcompress.profile(model)["total"]`), the float32 .tflite (`export.to_tflite(m,
mode="float32")`) and the int8 .tflite (full-integer post-training quantization calibrated on
the first 256 training images, int8 I/O) sizes, the int8 file's test accuracy (ai_edge_litert,
`export.run_tflite`), and batch-1 LiteRT latency of both files (ai_edge_litert Interpreter,
num_threads=1, the default CPU setup with the XNNPACK delegate): the median over
`--latency_runs` samples, every file of a model timed round-robin in one process, so that the
ratios to the unpruned model come from the same conditions. It also lists the channels each
criterion kept per channel group.

It prints markdown: the setup, the published anchors, the table, the channels kept per group,
the latency spread, the wall time of every stage, and goal lines computed from the numbers
(MET / NOT MET): at 50% MACs every pruned model's int8 latency <= 0.59x the unpruned model's
(>= 1.7x faster); the best criterion's accuracy within 0.5 point of the unpruned model's; the
best criterion's accuracy above the from-scratch control's.

Run (from the repository root; Fashion-MNIST as fashion_mnist.npz in the keras.datasets
layout, in `--data_dir`, default $TFCOMPRESS_DATA_DIR):

    PYTHONPATH=. python3 benchmarks/channel_pruning.py --data_dir DIR    # ~40-45 min, 2 cores
    PYTHONPATH=. python3 benchmarks/channel_pruning.py --quick           # ~4 min, 8x8 digits
    PYTHONPATH=. python3 benchmarks/channel_pruning.py --data_dir DIR --output benchmarks/RESULTS.md

Expected time of the default run (2 CPU cores, measured on parts of it, 2026-12-01): the
unpruned resnet20 trained 8 epochs x 20,000 images in 335 s (~480 images/s) and vgg_small in
79 s; pruned to half its MACs resnet20 trains no faster (430 vs 432 images/s side by side,
batch 128 on CPU), vgg_small ~1.7x faster. So resnet20 is 8 + 7 x 3 + 11 = 40 epochs (~28 min)
plus DCP's channel selection (~1.5 min), 9 x (two exports + two evaluations, ~15 s) and the
latency timing (~1 min): ~33 min; vgg_small ~7 min. About 40-45 minutes in all on an idle
machine. `--train_examples 0` (all 60,000 images) triples the training time.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from tfcompress import datasets, export, models, profile, prune_channels
from tfcompress.pipelines.deep_compression import train_classifier
from tfcompress.pruning.channels.importance import CRITERIA, DATA_CRITERIA

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN_MARK = "<!-- BEGIN benchmarks/channel_pruning.py -->"
END_MARK = "<!-- END benchmarks/channel_pruning.py -->"
SECTION_TITLE = "## Channel pruning (benchmarks/channel_pruning.py)"

MODELS = ("resnet20", "vgg_small")
VGG_BLOCKS = (16, 16, "pool", 32, 32, "pool", 64, 64, "pool")
BN_MOMENTUM = 0.9
REPRESENTATIVE_EXAMPLES = 256
LOSS = "sparse_categorical_crossentropy"
# Goals: int8 latency of every pruned model at most this fraction of the unpruned model's
# (>= 1.7x faster), and the best criterion within this much accuracy of the unpruned model.
GOAL_LATENCY_RATIO = 0.59
GOAL_ACCURACY_DROP = 0.005
GOAL_MACS = 0.5
ANCHORS = (
    ("DepGraph (Fang et al., CVPR 2023), ResNet-56 on CIFAR-10: 2.57x speed-up at +0.11 pt "
     "accuracy"),
    "FPGM (He et al., CVPR 2019), ResNet-56 on CIFAR-10: 1.70x speed-up at -0.33 pt",
    ("Network Slimming (Liu et al., ICCV 2017), VGG-19 on CIFAR-10: -89% parameters at "
     "+0.01 pt"),
    ("Li et al., \"Pruning Filters for Efficient ConvNets\" (ICLR 2017), ResNet-56 on CIFAR-10 "
     "as reproduced by Distiller: 92.97% -> 92.83% at -37% MACs"),
)


def _load_layers_benchmark():
    """benchmarks/layers.py, for its machine description and write_section."""
    spec = importlib.util.spec_from_file_location(
        "tfcompress_benchmarks_layers", os.path.join(HERE, "layers.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- arguments


def _names(text, choices, what, parser):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        parser.error(f"--{what}: unknown {unknown}; choose from {', '.join(choices)}")
    return names


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get(datasets.ENV_VAR) or None,
        help=f"folder holding fashion_mnist.npz (default ${datasets.ENV_VAR}; not needed with "
        "--quick, which uses the packaged 8x8 digits)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--criteria", default=",".join(CRITERIA),
                        help="comma-separated subset of the criteria (default all seven)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of the unpruned model (8)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="fine-tuning epochs after pruning, every criterion (3)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate of the unpruned and the from-scratch training")
    parser.add_argument("--finetune_lr", type=float, default=1e-3,
                        help="Adam learning rate of the fine-tuning after pruning (1e-3)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--augment_shift", type=int, default=0,
        help="move each training image by a random offset of up to this many pixels per axis, "
        "new offsets every epoch, in every training stage (default 0: no augmentation)",
    )
    parser.add_argument(
        "--train_examples", type=int, default=None,
        help="train on the first N training images (default 20000; 0: all 60000; --quick: "
        "all 1437 digits)",
    )
    parser.add_argument("--test_examples", type=int, default=0,
                        help="evaluate on the first N test images (default 0: all)")
    parser.add_argument("--target_macs", type=float, default=GOAL_MACS,
                        help="fraction of the MACs every pruned model keeps (0.5)")
    parser.add_argument(
        "--round_to", type=int, default=16,
        help="prune_channels(round_to=...): every pruned group keeps a multiple of this many "
        "channels (16: the channel blocks XNNPACK's int8 kernels work on; 1: any count)",
    )
    parser.add_argument(
        "--probe_round_to", default="1,4,8,16",
        help="comma-separated round_to values of the latency probe: the trained model pruned "
        "by l1 to the target at each, int8 files timed without fine-tuning ('' to skip)",
    )
    parser.add_argument(
        "--criterion_examples", type=int, default=512,
        help="training images (seeded random subset) given to taylor and dcp (512: "
        "prune_channels' default batch_size 64 x max_batches 8)",
    )
    parser.add_argument("--scratch_from", default="l1", choices=CRITERIA,
                        help="criterion whose pruned architecture the scratch control uses (l1)")
    parser.add_argument("--latency_runs", type=int, default=None,
                        help="timed samples per .tflite file (100; --quick: 10)")
    parser.add_argument(
        "--min_sample_ms", type=float, default=None,
        help="a sample repeats invoke() until it lasts this long (10 ms; --quick: 2 ms)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_dir", default=None, help="keep every .tflite file here")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: the packaged 8x8 digits (1437 / 360 images), 10 latency samples")
    parser.add_argument(
        "--output", default=None, help="markdown file to write this benchmark's section into"
    )
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"epochs": 8, "finetune_epochs": 3, "train_examples": 0,
                    "latency_runs": 10, "min_sample_ms": 2.0}
    else:
        defaults = {"epochs": 8, "finetune_epochs": 3, "train_examples": 20000,
                    "latency_runs": 100, "min_sample_ms": 10.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epochs", "finetune_epochs", "train_examples", "test_examples",
                 "augment_shift"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    for name in ("latency_runs", "criterion_examples", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0.0 < args.target_macs <= 1.0:
        parser.error("--target_macs must be in (0, 1]")
    if args.round_to < 1:
        parser.error("--round_to must be at least 1")
    try:
        args.probe_round_to = [int(v) for v in args.probe_round_to.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--probe_round_to={args.probe_round_to!r}: give integers like 1,8,16")
    if any(v < 1 for v in args.probe_round_to):
        parser.error("--probe_round_to values must be at least 1")
    args.models = _names(args.models, MODELS, "models", parser)
    args.criteria = _names(args.criteria, CRITERIA, "criteria", parser)
    args.dataset = "digits" if args.quick else "fashion_mnist"
    if not args.quick:
        if not args.data_dir:
            parser.error(
                f"Fashion-MNIST not found: give --data_dir (a folder holding fashion_mnist.npz, "
                "the arrays of keras.datasets.fashion_mnist.load_data() saved with numpy.savez) "
                f"or set ${datasets.ENV_VAR}; or --quick for the packaged digits."
            )
        path = os.path.join(args.data_dir, "fashion_mnist.npz")
        if not os.path.isfile(path):
            parser.error(f"Fashion-MNIST not found: no file {os.path.abspath(path)} (from "
                         f"--data_dir / ${datasets.ENV_VAR}={args.data_dir!r}).")
    return args


def _log(message):
    print(f"[channel_pruning] {message}", file=sys.stderr, flush=True)


def _error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()


# --------------------------------------------------------------------------- models


def vgg_small(input_shape=(28, 28, 1), num_classes=10):
    """conv3x3-BN-ReLU 16, 16, maxpool, 32, 32, maxpool, 64, 64, maxpool, GAP, Dense(softmax)."""
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    conv = pool = 0
    for block in VGG_BLOCKS:
        if block == "pool":
            pool += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool}")(x)
            continue
        conv += 1
        x = keras.layers.Conv2D(block, 3, padding="same", use_bias=False, name=f"conv{conv}")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{conv}")(x)
        x = keras.layers.ReLU(name=f"relu{conv}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg_small")


def build_model(name, input_shape):
    if name == "resnet20":
        return models.resnet20(conv="conv", input_shape=input_shape, num_classes=10)
    return vgg_small(input_shape=input_shape, num_classes=10)


# --------------------------------------------------------------------------- measurement


class Timed:
    """One .tflite file, LiteRT default CPU setup (XNNPACK), batch 1, one thread."""

    def __init__(self, blob, image):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=blob, num_threads=1)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(detail["index"], export.runners.quantize(image[None], detail))
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

    def stats_ms(self):
        ms = [s * 1e3 for s in self.samples]
        return {"median": statistics.median(ms), "min": min(ms), "max": max(ms),
                "samples": len(ms), "invokes_per_sample": self.inner}


def _accuracy(model, xt, yt):
    probs = model.predict(xt, batch_size=512, verbose=0)
    return float(np.mean(np.asarray(probs).argmax(-1) == yt))


def _kept_channels(report):
    """{group name: [kept, channels]} of the prunable groups of a ChannelPruningReport."""
    return {g["name"]: [int(g["kept"]), int(g["channels"])] for g in report.groups
            if g["prunable"]}


def measure(label, model, args, data, entry, blobs):
    """Accuracy, cost, the two .tflite files and the int8 file's accuracy of one variant.

    Fills `entry` (errors in entry["errors"]) and blobs[(label, kind)] for the latency part.
    """
    (x, _), (xt, yt) = data
    seconds = entry.setdefault("seconds", {})
    errors = entry.setdefault("errors", {})
    start = time.perf_counter()
    entry["accuracy"] = _accuracy(model, xt, yt)
    total = profile(model)["total"]
    entry["params"], entry["macs"] = int(total["params"]), int(total["macs"])
    seconds["evaluate"] = time.perf_counter() - start
    for kind, kwargs in (("float", {"mode": "float32"}),
                         ("int8", {"representative_data": x[:REPRESENTATIVE_EXAMPLES]})):
        start = time.perf_counter()
        try:
            blob = export.to_tflite(model, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- a failing export is a result, reported
            errors[f"{kind} export"] = _error_text(exc)
            _log(f"{label}: {kind} export failed: {errors[f'{kind} export']}")
            continue
        finally:
            seconds[f"export_{kind}"] = time.perf_counter() - start
        entry[f"{kind}_bytes"] = len(blob)
        blobs[kind] = blob
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            safe = "".join(ch if ch.isalnum() else "_" for ch in label)
            with open(os.path.join(args.save_dir, f"{safe}_{kind}.tflite"), "wb") as f:
                f.write(blob)
    if "int8" in blobs:
        start = time.perf_counter()
        try:
            pred = export.run_tflite(blobs["int8"], xt)[0].argmax(-1)
            entry["int8_accuracy"] = float(np.mean(pred == yt))
        except Exception as exc:  # noqa: BLE001
            errors["int8 evaluation"] = _error_text(exc)
        seconds["evaluate_int8"] = time.perf_counter() - start
    int8 = entry.get("int8_accuracy")
    _log(f"{label}: accuracy {entry['accuracy']:.4f}, int8 {'-' if int8 is None else f'{int8:.4f}'}, "
         f"{entry['params']:,} params, {entry['macs']:,} MACs, float {entry.get('float_bytes', '-')} B, "
         f"int8 {entry.get('int8_bytes', '-')} B")


def _train(model, x, y, epochs, lr, args, stream):
    train_classifier(model, x, y, epochs, lr, batch_size=args.batch_size,
                     augment_shift=args.augment_shift, seed=[args.seed, stream])


def run_model(name, args, data):
    """Unpruned, every criterion and the scratch control of one model; errors are recorded."""
    (x, y), (xt, yt) = data
    result = {"variants": {}, "order": [], "seconds": {}, "errors": {}}
    blobs = {}
    seconds = result["seconds"]

    def variant(label):
        result["order"].append(label)
        return result["variants"].setdefault(label, {"seconds": {}, "errors": {}})

    keras.utils.set_random_seed(args.seed)
    model = build_model(name, x.shape[1:])
    _log(f"{name}: training the unpruned model, {args.epochs} epoch(s) on {len(x)} images")
    start = time.perf_counter()
    _train(model, x, y, args.epochs, args.lr, args, 0)
    seconds["train"] = time.perf_counter() - start
    _log(f"{name}: trained in {seconds['train']:.0f} s "
         f"({args.epochs * len(x) / max(seconds['train'], 1e-9):.0f} images/s)")
    entry = variant("unpruned")
    entry["seconds"]["train"] = seconds["train"]
    blobs["unpruned"] = {}
    measure(f"{name} unpruned", model, args, data, entry, blobs["unpruned"])

    rng = np.random.default_rng([args.seed, 7])
    pick = np.sort(rng.choice(len(x), min(args.criterion_examples, len(x)), replace=False))
    subset = (x[pick], y[pick])
    architectures = {}
    for criterion in args.criteria:
        entry = variant(criterion)
        _log(f"{name}: prune_channels(target={{'macs': {args.target_macs}}}, "
             f"criterion={criterion!r})")
        start = time.perf_counter()
        try:
            pruned = prune_channels(
                model, target={"macs": args.target_macs}, criterion=criterion,
                data=subset if criterion in DATA_CRITERIA else None, loss=LOSS, seed=args.seed,
                round_to=args.round_to,
            )
        except Exception as exc:  # noqa: BLE001 -- a failing criterion is a result, reported
            entry["errors"]["prune_channels"] = _error_text(exc)
            entry["seconds"]["prune"] = time.perf_counter() - start
            _log(f"{name} {criterion}: prune_channels failed: {entry['errors']['prune_channels']}")
            continue
        entry["seconds"]["prune"] = time.perf_counter() - start
        report = pruned.channel_pruning_report
        entry["report_macs"] = [int(v) for v in report.macs]
        entry["report_params"] = [int(v) for v in report.params]
        entry["target_reached"] = (report.target or {}).get("reached")
        entry["kept"] = _kept_channels(report)
        architectures[criterion] = pruned.get_config()
        entry["accuracy_pruned"] = _accuracy(pruned, xt, yt)
        _log(f"{name} {criterion}: pruned in {entry['seconds']['prune']:.1f} s to "
             f"{report.macs[1] / report.macs[0]:.3f} of the MACs; accuracy before fine-tuning "
             f"{entry['accuracy_pruned']:.4f}; fine-tuning {args.finetune_epochs} epoch(s)")
        keras.utils.set_random_seed(args.seed + 1)  # the same batch order for every criterion
        start = time.perf_counter()
        try:
            _train(pruned, x, y, args.finetune_epochs, args.finetune_lr, args, 1)
        except Exception as exc:  # noqa: BLE001
            entry["errors"]["fine-tuning"] = _error_text(exc)
            _log(f"{name} {criterion}: fine-tuning failed: {entry['errors']['fine-tuning']}")
            continue
        finally:
            entry["seconds"]["finetune"] = time.perf_counter() - start
        blobs[criterion] = {}
        measure(f"{name} {criterion}", pruned, args, data, entry, blobs[criterion])
        del pruned
        keras.backend.clear_session()

    source = args.scratch_from if args.scratch_from in architectures else next(
        (c for c in args.criteria if c in architectures), None)
    entry = variant("scratch")
    entry["architecture_of"] = source
    if source is None:
        entry["errors"]["scratch"] = "no pruned architecture: every criterion failed"
    else:
        epochs = args.epochs + args.finetune_epochs
        _log(f"{name}: scratch control, {source}'s architecture with fresh weights, "
             f"{epochs} epoch(s)")
        start = time.perf_counter()
        try:
            keras.utils.set_random_seed(args.seed + 2)
            scratch = keras.Model.from_config(architectures[source])
            _train(scratch, x, y, epochs, args.lr, args, 2)
        except Exception as exc:  # noqa: BLE001
            entry["errors"]["scratch"] = _error_text(exc)
            _log(f"{name}: scratch control failed: {entry['errors']['scratch']}")
            scratch = None
        entry["seconds"]["train"] = time.perf_counter() - start
        if scratch is not None:
            blobs["scratch"] = {}
            measure(f"{name} scratch", scratch, args, data, entry, blobs["scratch"])
    keras.backend.clear_session()

    # Latency probe: the channel counts XNNPACK's int8 kernels like (no fine-tuning needed).
    result["probe"] = {}
    calibration = x[:REPRESENTATIVE_EXAMPLES]
    for r in args.probe_round_to:
        label = f"probe round_to={r}"
        entry = result["variants"].setdefault(label, {"seconds": {}, "errors": {}})
        try:
            probe = prune_channels(model, target={"macs": args.target_macs}, criterion="l1",
                                   round_to=r, seed=args.seed)
            entry["macs"] = int(probe.channel_pruning_report.macs[1])
            entry["kept"] = _kept_channels(probe.channel_pruning_report)
            blobs[label] = {"int8": export.to_tflite(probe, calibration)}
            entry["int8_bytes"] = len(blobs[label]["int8"])
            result["probe"][r] = label
        except Exception as exc:  # noqa: BLE001 -- reported with the probe
            entry["errors"]["probe"] = _error_text(exc)
        keras.backend.clear_session()

    # Latency: every file of this model, round-robin in this process.
    start = time.perf_counter()
    image = xt[0]
    timed = {}
    for label, files in blobs.items():
        for kind, blob in files.items():
            try:
                timed[(label, kind)] = Timed(blob, image)
            except Exception as exc:  # noqa: BLE001
                result["variants"][label]["errors"][f"{kind} latency"] = _error_text(exc)
    _log(f"{name}: timing {len(timed)} .tflite files, {args.latency_runs} samples each")
    for t in timed.values():
        t.warm_up(args.min_sample_ms / 1e3)
    for _ in range(args.latency_runs):
        for t in timed.values():
            t.sample()
    for (label, kind), t in timed.items():
        result["variants"][label][f"{kind}_latency_ms"] = t.stats_ms()
    seconds["latency"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- report


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(value):
    return f"{value:.3f}" if value < 1 else (f"{value:.2f}" if value < 100 else f"{value:.1f}")


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def _x(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}x"


def _count(value):
    return "-" if value is None else f"{value:,}"


def _s(seconds):
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _short(text, limit=90):
    first = text.splitlines()[0] if text else ""
    return (first[:limit] + "...") if len(first) > limit else first


def _error_item(what, text):
    if "\n" not in text and "`" not in text:
        return f"- {what}: `{text}`"
    body = "\n".join("  " + line for line in text.splitlines())
    return f"- {what}:\n\n  ```text\n{body}\n  ```"


def _latency(entry, kind):
    stats = entry.get(f"{kind}_latency_ms")
    return None if stats is None else stats["median"]


def table_lines(args, results):
    lines = []
    add = lines.append
    add("| Model | Variant | Accuracy | After pruning, before fine-tuning | int8 accuracy "
        "| Params | MACs | MACs vs unpruned | Float bytes | int8 bytes | Float ms | int8 ms "
        "| Float latency vs unpruned | int8 latency vs unpruned |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        result = results.get(name) or {}
        variants = result.get("variants", {})
        base = variants.get("unpruned", {})
        for label in result.get("order", []):
            entry = variants[label]
            shown = label
            if label == "scratch" and entry.get("architecture_of"):
                shown = f"scratch ({entry['architecture_of']}'s architecture)"
            if "accuracy" not in entry:
                why = "; ".join(f"{k}: {_short(v)}" for k, v in entry["errors"].items())
                add(f"| {name} | {shown} | error: {why or 'missing'} |" + " - |" * 11)
                continue
            cells = [
                name, shown, _pct(entry["accuracy"]), _pct(entry.get("accuracy_pruned")),
                _pct(entry.get("int8_accuracy")), _count(entry["params"]),
                _count(entry["macs"]), _x(_ratio(entry["macs"], base.get("macs")), 3),
                _count(entry.get("float_bytes")), _count(entry.get("int8_bytes")),
            ]
            for kind in ("float", "int8"):
                value = _latency(entry, kind)
                cells.append("-" if value is None else _ms(value))
            for kind in ("float", "int8"):
                cells.append(_x(_ratio(_latency(entry, kind), _latency(base, kind))))
            add("| " + " | ".join(cells) + " |")
    return lines


def kept_lines(args, name, result):
    """Channels kept per prunable group, one column per criterion."""
    variants = result.get("variants", {})
    criteria = [c for c in args.criteria if variants.get(c, {}).get("kept")]
    if not criteria:
        return []
    groups = list(variants[criteria[0]]["kept"])
    lines = [(f"Channels kept per prunable channel group of {name} (kept / channels; a group "
              "is a set of coupled channels removed together, e.g. every layer on one residual "
              "path):"), ""]
    lines.append("| Group | " + " | ".join(criteria) + " |")
    lines.append("|---|" + "---:|" * len(criteria))
    for group in groups:
        cells = []
        for c in criteria:
            kept = variants[c]["kept"].get(group)
            cells.append("-" if kept is None else f"{kept[0]}/{kept[1]}")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    reached = ", ".join(
        f"{c} {variants[c]['target_reached']:.3f}" for c in criteria
        if variants[c].get("target_reached") is not None
    )
    if reached:
        lines += ["", ("MACs kept by the pruning (ChannelPruningReport.target['reached']): "
                       f"{reached}.")]
    return lines


def probe_lines(args, results):
    """int8 latency of the trained model pruned by l1 to the target at each round_to."""
    rows = []
    for name in args.models:
        result = results.get(name) or {}
        variants = result.get("variants", {})
        base = _latency(variants.get("unpruned", {}), "int8")
        full = variants.get("unpruned", {}).get("macs")
        for r in args.probe_round_to:
            entry = variants.get(f"probe round_to={r}", {})
            if entry.get("errors", {}).get("probe"):
                rows.append(f"| {name} | {r} | error: {_short(entry['errors']['probe'])} | - | - | - |")
                continue
            value = _latency(entry, "int8")
            rows.append(f"| {name} | {r} | {_x(_ratio(entry.get('macs'), full), 3)} | "
                        f"{_count(entry.get('int8_bytes'))} | "
                        f"{'-' if value is None else _ms(value)} | {_x(_ratio(value, base))} |")
    if not rows:
        return []
    return [("int8 latency against the channel counts (latency probe: the trained model "
             "pruned by l1 to the target with each round_to, int8 post-training files, not "
             "fine-tuned, timed in the same round-robin):"), "",
            ("| Model | round_to | MACs vs unpruned | int8 bytes | int8 ms | int8 latency vs "
             "unpruned |"), "|---|---:|---:|---:|---:|---:|", *rows]


def spread_lines(args, results):
    rows = []
    for name in args.models:
        result = results.get(name) or {}
        for label in result.get("order", []):
            entry = result["variants"][label]
            cells = []
            for kind in ("float", "int8"):
                s = entry.get(f"{kind}_latency_ms")
                cells.append("-" if s is None else
                             f"{_ms(s['min'])} / {_ms(s['median'])} / {_ms(s['max'])}")
            if cells != ["-", "-"]:
                rows.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["Latency spread (min / median / max ms over the samples):", "",
            "| Model | Variant | Float | int8 |", "|---|---|---|---|", *rows]


def time_lines(args, results):
    lines = []
    for name in args.models:
        result = results.get(name) or {}
        variants = result.get("variants", {})
        parts = []
        s = result.get("seconds", {})
        if "train" in s:
            parts.append(f"unpruned training {_s(s['train'])}")
        for label in result.get("order", []):
            vs = variants[label]["seconds"]
            bits = []
            if label != "unpruned" and "prune" in vs:
                bits.append(f"pruning {_s(vs['prune'])}")
            if "finetune" in vs:
                bits.append(f"fine-tuning {_s(vs['finetune'])}")
            if label == "scratch" and "train" in vs:
                bits.append(f"training {_s(vs['train'])}")
            export_s = vs.get("export_float", 0) + vs.get("export_int8", 0)
            if export_s:
                bits.append(f"exports {_s(export_s)}")
            eval_s = vs.get("evaluate", 0) + vs.get("evaluate_int8", 0)
            if eval_s:
                bits.append(f"evaluation {_s(eval_s)}")
            if bits:
                parts.append(f"{label}: " + ", ".join(bits))
        if "latency" in s:
            parts.append(f"latency timing {_s(s['latency'])}")
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def goal_lines(args, results, n_train, n_test):
    lines = []
    add = lines.append
    scope = (f" (quick mode: 8x8 digits, {n_train} training / {n_test} test images, "
             f"{args.epochs} + {args.finetune_epochs} epochs; not the benchmark's setting)"
             if args.quick else "")
    at = ("" if abs(args.target_macs - GOAL_MACS) < 1e-12 else
          f" [the goals are stated at {GOAL_MACS:.0%} MACs; this run pruned to "
          f"{args.target_macs:g}]")
    for name in args.models:
        result = results.get(name) or {}
        variants = result.get("variants", {})
        base = variants.get("unpruned", {})
        if "accuracy" not in base:
            add(f"- {name}: NOT MET (no unpruned model: "
                f"{_short(json.dumps(result.get('errors') or base.get('errors')), 200)})")
            continue
        # 1. Latency.
        base_ms = _latency(base, "int8")
        ratios, missing = {}, []
        for c in args.criteria:
            r = _ratio(_latency(variants.get(c, {}), "int8"), base_ms)
            if r is None:
                missing.append(c)
            else:
                ratios[c] = r
        slow = [c for c, r in ratios.items() if r > GOAL_LATENCY_RATIO]
        ok = bool(ratios) and not slow and not missing
        why = []
        if slow:
            why.append("above the limit: " + ", ".join(slow))
        if missing:
            why.append("no int8 latency (see errors): " + ", ".join(missing))
        listed = ", ".join(f"{c} {r:.2f}x" for c, r in ratios.items()) or "none"
        add(f"- {name}: int8 latency of every pruned model vs the unpruned model's "
            f"({_ms(base_ms) if base_ms else '-'} ms): {listed} (goal: <= "
            f"{GOAL_LATENCY_RATIO:.2f}x, i.e. >= {1 / GOAL_LATENCY_RATIO:.1f}x faster, each) -> "
            + ("MET" if ok else f"NOT MET ({'; '.join(why)})") + at + scope)
        # 2. and 3. Accuracy of the best criterion.
        scored = {c: variants[c]["accuracy"] for c in args.criteria
                  if "accuracy" in variants.get(c, {})}
        if not scored:
            add(f"- {name}: best criterion within {100 * GOAL_ACCURACY_DROP:.1f} pt of the "
                "unpruned model -> NOT MET (no criterion produced a fine-tuned model)" + scope)
            add(f"- {name}: best criterion above the from-scratch control -> NOT MET (no "
                "criterion produced a fine-tuned model)" + scope)
            continue
        best = max(scored, key=lambda c: (scored[c], -args.criteria.index(c)))
        drop = base["accuracy"] - scored[best]
        ok = drop <= GOAL_ACCURACY_DROP + 1e-12
        add(f"- {name}: best criterion {best} {_pct(scored[best])} vs unpruned "
            f"{_pct(base['accuracy'])}: {100 * -drop:+.2f} pt (goal: within "
            f"{100 * GOAL_ACCURACY_DROP:.1f} pt, i.e. >= {_pct(base['accuracy'] - GOAL_ACCURACY_DROP)}) "
            "-> " + ("MET" if ok else "NOT MET") + at + scope)
        scratch = variants.get("scratch", {})
        if "accuracy" not in scratch:
            why = "; ".join(f"{k}: {_short(v)}" for k, v in scratch.get("errors", {}).items())
            add(f"- {name}: best criterion above the from-scratch control -> NOT MET (no "
                f"scratch result: {why or 'missing'})" + scope)
        else:
            gap = scored[best] - scratch["accuracy"]
            add(f"- {name}: best criterion {best} {_pct(scored[best])} vs from scratch "
                f"({scratch['architecture_of']}'s architecture, {args.epochs + args.finetune_epochs} "
                f"epochs) {_pct(scratch['accuracy'])}: {100 * gap:+.2f} pt (goal: above) -> "
                + ("MET" if gap > 0 else "NOT MET") + scope)
        ranked = sorted(scored, key=lambda c: -scored[c])
        add("  Ranking after fine-tuning: " + ", ".join(f"{c} {_pct(scored[c])}" for c in ranked)
            + f". The best of {len(scored)} criteria is picked on the test set itself, which "
            f"favours it by chance; one test image is {100 / n_test:.3f} pt.")
    return lines


def build_report(args, machine, results, n_train, n_test, load_before, load_after, started,
                 wall, git_state):
    lines = machine.report_header(started, wall)
    add = lines.append
    from importlib import metadata

    state = git_state[0] if git_state[0] == git_state[1] else (
        f"{git_state[0]} at the start, {git_state[1]} at the end of the run"
    )
    add(f"- ai-edge-litert {metadata.version('ai-edge-litert')}; tfcompress {state}")
    add(f"- Load average (1, 5, 15 min) at start: {load_before}; at end: {load_after}"
        + (" (quick mode)" if args.quick else ""))
    add("")
    add("### Setup")
    add("")
    data = ("the packaged 8x8 UCI digits (quick mode)" if args.quick else "Fashion-MNIST")
    add(
        f"{data}, {n_train} training / {n_test} test images (pixels scaled to [0, 1]). "
        f"Models: resnet20 (tfcompress.models, conv=\"conv\") and vgg_small (conv3x3-BN-ReLU "
        f"{', '.join(str(b) for b in VGG_BLOCKS)}, global average pooling, Dense(10)). Every "
        "training stage is deep_compression.train_classifier: Adam with cosine decay to 1% over "
        f"the stage, batch {args.batch_size}, sparse categorical cross-entropy"
        + (f", training images shifted by up to {args.augment_shift} pixel(s) per axis"
           if args.augment_shift else ", no augmentation")
        + f"; seed {args.seed}. Unpruned: {args.epochs} epoch(s), Adam {args.lr:g}. Each "
        f"criterion: prune_channels(trained, target={{\"macs\": {args.target_macs:g}}}, "
        f"criterion=c, round_to={args.round_to}, seed={args.seed}) (taylor and dcp get "
        f"{args.criterion_examples} random "
        f"training images as data), then {args.finetune_epochs} epoch(s) of fine-tuning, Adam "
        f"{args.finetune_lr:g}, the same batch order for every criterion. bn_scale scores the "
        "BatchNormalization scales of a model trained without Network Slimming's L1 penalty "
        "on them. Scratch: the pruned architecture of "
        f"{args.scratch_from} (see its row) with fresh random weights, trained "
        f"{args.epochs + args.finetune_epochs} epoch(s), Adam {args.lr:g} (Liu et al., "
        "\"Rethinking the Value of Network Pruning\", ICLR 2019: the same epochs as training + "
        "fine-tuning). Accuracy: Keras on the test images; int8 accuracy: the int8 .tflite run "
        "by ai_edge_litert. Params and MACs: tfcompress.profile(model)[\"total\"] (per image). "
        "Float file: export.to_tflite(m, mode=\"float32\"); int8 file: full-integer post-training "
        f"quantization calibrated on the first {REPRESENTATIVE_EXAMPLES} training images, int8 "
        "I/O. Latency: batch 1, ai_edge_litert Interpreter(num_threads=1) with the default CPU "
        f"setup (XNNPACK delegate), median of {args.latency_runs} samples (a sample repeats "
        f"invoke() until it lasts >= {args.min_sample_ms:g} ms), all files of a model timed "
        "round-robin in this process; ratios are against the unpruned model's file of the "
        "same kind."
    )
    add("")
    add("Published anchors (CIFAR-10, long schedules; the speed-ups are the FLOPs ratios the "
        "papers report, not measured latency; not the setting above):")
    add("")
    for anchor in ANCHORS:
        add(f"- {anchor}")
    add("")
    add("### Results")
    add("")
    lines.extend(table_lines(args, results))
    for name in args.models:
        kept = kept_lines(args, name, results.get(name) or {})
        if kept:
            add("")
            lines.extend(kept)
    probe = probe_lines(args, results)
    if probe:
        add("")
        lines.extend(probe)
    spread = spread_lines(args, results)
    if spread:
        add("")
        lines.extend(spread)
    times = time_lines(args, results)
    if times:
        add("")
        add("Wall time per stage:")
        add("")
        lines.extend(times)
    errors = []
    for name in args.models:
        result = results.get(name) or {}
        for what, text in result.get("errors", {}).items():
            errors.append(_error_item(f"{name} {what}", text))
        for label in result.get("order", []):
            for what, text in result["variants"][label]["errors"].items():
                errors.append(_error_item(f"{name} {label} {what}", text))
    if errors:
        add("")
        add("Errors (full text):")
        add("")
        lines.extend(errors)
    add("")
    add("### Goals (computed from the numbers above)")
    add("")
    lines.extend(goal_lines(args, results, n_train, n_test))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    machine = _load_layers_benchmark()
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()

    (x, y), (xt, yt) = datasets.load(args.dataset, data_dir=None if args.quick else args.data_dir)
    if args.train_examples:
        x, y = x[: args.train_examples], y[: args.train_examples]
    if args.test_examples:
        xt, yt = xt[: args.test_examples], yt[: args.test_examples]
    _log(f"{args.dataset}: {len(x)} training / {len(xt)} test images of {x.shape[1:]}")
    results = {}
    for name in args.models:
        start = time.perf_counter()
        try:
            results[name] = run_model(name, args, ((x, y), (xt, yt)))
        except Exception as exc:  # noqa: BLE001 -- e.g. the unpruned training itself failing
            results[name] = {"variants": {}, "order": [], "seconds": {},
                             "errors": {"run": _error_text(exc)}}
            _log(f"{name} failed: {_error_text(exc)}")
        results[name]["seconds"]["total"] = time.perf_counter() - start
        _log(f"{name}: done in {results[name]['seconds']['total']:.0f} s")
        keras.backend.clear_session()

    wall = time.perf_counter() - t0
    report = build_report(args, machine, results, len(x), len(xt), load_before,
                          machine._loadavg(), started, wall, (git_before, machine.git_state()))
    print(report)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("output", "json")}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "n_train": len(x), "n_test": len(xt),
                       "started": started.isoformat(), "wall_seconds": wall,
                       "results": results}, f, indent=2, default=str)
        _log(f"wrote {args.json}")
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        _log(f"wrote section into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
