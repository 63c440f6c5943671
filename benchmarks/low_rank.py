"""Low-rank decomposition: SVD on LeNet-300-100, Tucker-2 and CP beside channel pruning.

`tfcompress.decomposition.decompose_model` replaces layers by chains of smaller plain Keras
layers (weights from the decomposition), which are then fine-tuned and exported like any
model. Two parts, in one run:

    1. lenet      LeNet-300-100 (tfcompress.models) trained `--lenet_epochs` on MNIST, then
                  for each of `--lenet_ratios`: `decompose_model(trained, method="svd",
                  ratio=r)` (fc1 and fc2 as Dense(r, no bias) -> Dense; the 100 x 10
                  classifier is kept when its chain would not have fewer MACs), accuracy
                  right after the decomposition, fine-tuned `--lenet_finetune_epochs`
                  (Adam `--lenet_finetune_lr`, cosine decay), the same batch order for
                  every ratio. Per point: parameters, the relative reconstruction error
                  of each replaced weight ||W - U_r S_r V_r^T||_F / ||W||_F (from the
                  report), accuracy before / after fine-tuning, int8 file bytes and
                  accuracy. The rank sweep: error vs parameters kept.
    2. conv       resnet20 (tfcompress.models, conv="conv") and vgg_small (the VGG-style
                  net of benchmarks/channel_pruning.py) trained `--epochs` on
                  Fashion-MNIST; for each of `--targets` (fractions of the MACs, default
                  1/2 and 1/3): tucker2 and cp (`decompose_model(trained,
                  method=m, ratio=q)`, q searched so that the model's MACs land within
                  `--macs_tolerance` of the target; only k x k convolutions are
                  decomposed, a layer whose chain would not have fewer MACs is kept) and
                  channel pruning l1 (`prune_channels(trained, target={"macs": t},
                  criterion="l1", round_to=--round_to)`); plus Tucker-2 with
                  `rank_selection="vbmf"` (Kim et al.'s choice, at whatever MACs it picks).
                  Every variant: BatchNorm statistics recalibrated on `--recalibration_
                  examples` training images (`recalibrate_batchnorm`), accuracy, then
                  `--finetune_epochs` of fine-tuning (Adam `--finetune_lr`, cosine decay),
                  the same batch order for every variant.

For the trained model and every fine-tuned variant of part 2 it measures: test accuracy
(Keras; plus before fine-tuning), parameters and MACs (`tfcompress.profile(model)["total"]`),
the float32 and the int8 .tflite (full-integer post-training quantization calibrated on the
first 256 training images, int8 I/O) sizes, the int8 file's test accuracy, and batch-1 LiteRT
latency of both files (ai_edge_litert, num_threads=1, default CPU setup with XNNPACK): the
median over `--latency_runs` samples, every file of a model timed round-robin in one process.
The measurement code is benchmarks/channel_pruning.py's (imported), so the two benchmarks
time files the same way.

It prints markdown: the setup, the published anchors, the tables, the ranks chosen, the
latency spread, the wall time of every stage, and goal lines computed from the numbers:
LeNet-300-100 >= 5x fewer parameters at <= 0.3 pt accuracy loss after fine-tuning; Tucker-2
at 1/3 of the MACs >= 2x faster in LiteRT (float and int8) at <= 1 pt accuracy loss.

Run (from the repository root; mnist.npz and fashion_mnist.npz in the keras.datasets layout
in `--data_dir`, default $TFCOMPRESS_DATA_DIR):

    PYTHONPATH=. python3 benchmarks/low_rank.py --data_dir DIR          # ~45 min, 2 cores
    PYTHONPATH=. python3 benchmarks/low_rank.py --quick                 # ~5 min, 8x8 digits
    PYTHONPATH=. python3 benchmarks/low_rank.py --data_dir DIR --output benchmarks/RESULTS.md

Expected time of the default run (2 CPU cores): resnet20 8 epochs x 20,000 images ~5.5 min
(benchmarks/channel_pruning.py's measurement), 7 variants x 3 epochs of fine-tuning ~20 min,
CP decompositions ~1-2 min each (tensorly's ALS, up to 2 per target), exports and timing
~4 min; vgg_small ~8 min; LeNet-300-100 ~3 min.
"""

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from tfcompress import (
    datasets,
    export,
    models,
    profile,
    prune_channels,
    recalibrate_batchnorm,
)
from tfcompress.decomposition import decompose_model
from tfcompress.pipelines.deep_compression import train_classifier

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN_MARK = "<!-- BEGIN benchmarks/low_rank.py -->"
END_MARK = "<!-- END benchmarks/low_rank.py -->"
SECTION_TITLE = "## Low-rank decomposition (benchmarks/low_rank.py)"

MODELS = ("resnet20", "vgg_small")
METHODS = ("tucker2", "cp", "l1", "tucker2_vbmf")
REPRESENTATIVE_EXAMPLES = 256
# Goals.
GOAL_LENET_FACTOR = 5.0        # >= 5x fewer parameters ...
GOAL_LENET_DROP = 0.003        # ... at <= 0.3 pt accuracy loss after fine-tuning
GOAL_TUCKER_TARGET = 1 / 3     # Tucker-2 at 1/3 of the MACs ...
GOAL_TUCKER_SPEEDUP = 2.0      # ... >= 2x faster (float and int8) ...
GOAL_TUCKER_DROP = 0.01        # ... at <= 1 pt accuracy loss
ANCHORS = (
    ("Jaderberg et al. 2014 (BMVC), scene-text CNN: 2.5x speed-up with no accuracy loss, "
     "4.5x at < 1% drop"),
    ("Denton et al. 2014 (NeurIPS), ImageNet CNN: convolutional layers ~2x faster within 1% "
     "of the original accuracy"),
    ("Kim et al. 2016 (ICLR), Tucker-2 with VBMF ranks + fine-tuning: VGG-16 on a Galaxy S6 "
     "1.09x smaller, 2.33x faster (measured), 0.50 pt top-5 drop; AlexNet 5.46x smaller, "
     "1.81x faster, 1.70 pt top-5 drop"),
    ("Lebedev et al. 2015 (ICLR), CP + fine-tuning of AlexNet's conv2: 4.5x speed-up of that "
     "layer (CPU) at 1 pt top-5 drop"),
)


def _load_benchmark(name):
    """A sibling benchmark module (layers.py: machine lines and write_section;
    channel_pruning.py: the measurement and the table cells)."""
    spec = importlib.util.spec_from_file_location(
        f"tfcompress_benchmarks_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cp_bench = _load_benchmark("channel_pruning")
_pct, _ms, _ratio, _x, _count, _s = (cp_bench._pct, cp_bench._ms, cp_bench._ratio, cp_bench._x,
                                     cp_bench._count, cp_bench._s)
_short, _error_item, _latency = cp_bench._short, cp_bench._error_item, cp_bench._latency


# --------------------------------------------------------------------------- arguments


def _fractions(text, flag, parser):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--{flag}={text!r}: give fractions like 0.5,0.3")
    if not values or any(not 0 < v <= 1 for v in values):
        parser.error(f"--{flag}={text!r}: every value must be in (0, 1]")
    return values


def _target(text):
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get(datasets.ENV_VAR) or None,
        help=f"folder holding mnist.npz and fashion_mnist.npz (default ${datasets.ENV_VAR}; "
        "not needed with --quick, which uses the packaged 8x8 digits)",
    )
    parser.add_argument("--parts", default="lenet,conv", help="comma-separated: lenet, conv")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--targets", default="1/2,1/3",
                        help="fractions of the MACs kept, e.g. 1/2,1/3 or 0.5,0.33")
    parser.add_argument("--macs_tolerance", type=float, default=0.03,
                        help="decompositions keep the target's MACs within this relative margin "
                        "(0.03); the search stops after --max_tries decompositions")
    parser.add_argument("--max_tries", type=int, default=4,
                        help="decompositions tried per method and target (4; CP: at most 2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of resnet20 / vgg_small (8)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="fine-tuning epochs of every conv variant (3)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    parser.add_argument("--lenet_epochs", type=int, default=None,
                        help="training epochs of LeNet-300-100 (10)")
    parser.add_argument("--lenet_finetune_epochs", type=int, default=None,
                        help="fine-tuning epochs of every LeNet sweep point (3)")
    parser.add_argument("--lenet_finetune_lr", type=float, default=3e-4)
    parser.add_argument("--lenet_ratios", default="0.5,0.3,0.2,0.18,0.15,0.1,0.07,0.05",
                        help="decompose_model(ratio=...) of the LeNet sweep")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--train_examples", type=int, default=None,
                        help="conv part: first N training images (20000; 0: all)")
    parser.add_argument("--test_examples", type=int, default=0,
                        help="evaluate on the first N test images (0: all)")
    parser.add_argument("--round_to", type=int, default=8,
                        help="prune_channels(round_to=...) of the l1 rows (8)")
    parser.add_argument("--recalibration_examples", type=int, default=2048,
                        help="training images the BatchNorm statistics are recomputed on")
    parser.add_argument("--latency_runs", type=int, default=None,
                        help="timed samples per .tflite file (100; --quick: 10)")
    parser.add_argument("--min_sample_ms", type=float, default=None,
                        help="a sample repeats invoke() until it lasts this long (10 ms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_dir", default=None, help="keep every conv .tflite file here")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: the packaged 8x8 digits, short schedules")
    parser.add_argument("--output", default=None,
                        help="markdown file to write this benchmark's section into")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"epochs": 6, "finetune_epochs": 2, "lenet_epochs": 10,
                    "lenet_finetune_epochs": 2, "train_examples": 0, "latency_runs": 10,
                    "min_sample_ms": 2.0}
    else:
        defaults = {"epochs": 8, "finetune_epochs": 3, "lenet_epochs": 10,
                    "lenet_finetune_epochs": 3, "train_examples": 20000, "latency_runs": 100,
                    "min_sample_ms": 10.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epochs", "finetune_epochs", "lenet_epochs", "lenet_finetune_epochs",
                 "train_examples", "test_examples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("latency_runs", "batch_size", "round_to", "max_tries",
                 "recalibration_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.macs_tolerance < 1:
        parser.error(f"--macs_tolerance must be in (0, 1), got {args.macs_tolerance}")
    args.parts = cp_bench._names(args.parts, ("lenet", "conv"), "parts", parser)
    args.models = cp_bench._names(args.models, MODELS, "models", parser)
    args.methods = cp_bench._names(args.methods, METHODS, "methods", parser)
    try:
        args.targets = [_target(v) for v in args.targets.split(",") if v.strip()]
    except (ValueError, ZeroDivisionError):
        parser.error(f"--targets={args.targets!r}: give fractions like 1/2,1/3 or 0.5,0.33")
    if not args.targets or any(not 0 < t <= 1 for t in args.targets):
        parser.error(f"--targets={args.targets!r}: every fraction must be in (0, 1]")
    args.lenet_ratios = _fractions(args.lenet_ratios, "lenet_ratios", parser)
    if not args.quick:
        if not args.data_dir:
            parser.error(f"MNIST / Fashion-MNIST not found: give --data_dir (a folder holding "
                         f"mnist.npz and fashion_mnist.npz) or set ${datasets.ENV_VAR}; or "
                         "--quick for the packaged digits.")
        needed = (["mnist"] if "lenet" in args.parts else []) + (
            ["fashion_mnist"] if "conv" in args.parts else [])
        for name in needed:
            path = os.path.join(args.data_dir, f"{name}.npz")
            if not os.path.isfile(path):
                parser.error(f"{name} not found: no file {os.path.abspath(path)} (from "
                             f"--data_dir / ${datasets.ENV_VAR}={args.data_dir!r}).")
    return args


def _log(message):
    print(f"[low_rank] {message}", file=sys.stderr, flush=True)


def _error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()


def _accuracy(model, xt, yt):
    probs = model.predict(xt, batch_size=512, verbose=0)
    return float(np.mean(np.asarray(probs).argmax(-1) == yt))


def _macs(model):
    return int(profile(model)["total"]["macs"])


def _target_label(t):
    for den in (2, 3, 4, 5, 8, 10):
        if abs(t * den - round(t * den)) < 1e-9 and round(t * den) == 1:
            return f"1/{den}"
    return f"{t:g}"


# --------------------------------------------------------------------------- part 1: LeNet


def run_lenet(args):
    if args.quick:
        (x, y), (xt, yt) = datasets.load("digits")
    else:
        (x, y), (xt, yt) = datasets.load("mnist", data_dir=args.data_dir)
    if args.test_examples:
        xt, yt = xt[: args.test_examples], yt[: args.test_examples]
    result = {"dataset": "digits" if args.quick else "mnist", "n_train": len(x),
              "finetune_epochs": args.lenet_finetune_epochs,
              "n_test": len(xt), "points": [], "seconds": {}, "errors": {}}
    keras.utils.set_random_seed(args.seed)
    model = models.lenet_300_100(input_shape=x.shape[1:], num_classes=10)
    _log(f"lenet_300_100: training {args.lenet_epochs} epoch(s) on {len(x)} images")
    start = time.perf_counter()
    train_classifier(model, x, y, args.lenet_epochs, args.lr, batch_size=args.batch_size,
                     seed=[args.seed, 0])
    result["seconds"]["train"] = time.perf_counter() - start
    base = {"label": "original", "params": int(profile(model)["total"]["params"]),
            "macs": _macs(model), "accuracy": _accuracy(model, xt, yt)}
    _int8(model, x, xt, yt, base)
    result["original"] = base
    _log(f"lenet_300_100: accuracy {base['accuracy']:.4f}, {base['params']:,} params")
    base["accuracy_finetuned"] = _finetuned_control(
        model, (x, y), (xt, yt), args.lenet_finetune_epochs, args.lenet_finetune_lr, args)
    for r in args.lenet_ratios:
        point = {"ratio": r, "errors": {}}
        result["points"].append(point)
        start = time.perf_counter()
        try:
            small = decompose_model(model, method="svd", ratio=r, exclude=("predictions",))
        except Exception as exc:  # noqa: BLE001 -- a failing point is a result, reported
            point["errors"]["decompose_model"] = _error_text(exc)
            continue
        point["decompose_s"] = time.perf_counter() - start
        point["layers"] = [{"layer": row["layer"], "ranks": list(row["ranks"]),
                            "error": row["error"], "replaced": row["replaced"]}
                           for row in small.decomposition_report.layers]
        point["params"] = int(profile(small)["total"]["params"])
        point["macs"] = _macs(small)
        point["accuracy_decomposed"] = _accuracy(small, xt, yt)
        keras.utils.set_random_seed(args.seed + 1)  # the same batch order for every point
        start = time.perf_counter()
        train_classifier(small, x, y, args.lenet_finetune_epochs, args.lenet_finetune_lr,
                         batch_size=args.batch_size, seed=[args.seed, 1])
        point["finetune_s"] = time.perf_counter() - start
        point["accuracy"] = _accuracy(small, xt, yt)
        _int8(small, x, xt, yt, point)
        _log(f"lenet ratio {r}: {point['params']:,} params "
             f"({base['params'] / point['params']:.2f}x fewer), accuracy "
             f"{point['accuracy_decomposed']:.4f} -> {point['accuracy']:.4f}")
        keras.backend.clear_session()
    return result


def _finetuned_control(model, train, test, epochs, lr, args):
    """Test accuracy of a copy of `model` fine-tuned like every variant: the control for
    what the extra epochs alone give."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    keras.utils.set_random_seed(args.seed + 1)
    train_classifier(copy, *train, epochs, lr, batch_size=args.batch_size, seed=[args.seed, 1])
    accuracy = _accuracy(copy, *test)
    _log(f"{model.name} fine-tuned {epochs} more epoch(s) (control): accuracy {accuracy:.4f}")
    return accuracy


def _int8(model, x, xt, yt, entry):
    try:
        blob = export.to_tflite(model, x[:REPRESENTATIVE_EXAMPLES])
        entry["int8_bytes"] = len(blob)
        entry["int8_accuracy"] = float(np.mean(export.run_tflite(blob, xt)[0].argmax(-1) == yt))
    except Exception as exc:  # noqa: BLE001
        entry.setdefault("errors", {})["int8"] = _error_text(exc)


# --------------------------------------------------------------------------- part 2: conv


def decompose_to_macs(model, method, target, args):
    """decompose_model(model, method=method, ratio=q) with q searched for target MACs.

    The model's MACs are nearly linear in q (only k x k convolutions change), so each try
    rescales q by target / reached; it stops within --macs_tolerance or after --max_tries
    (CP: 2, each CP decomposition runs tensorly's ALS) and keeps the closest result.
    """
    full = _macs(model)
    q, best, tries = target, None, []
    for _ in range(min(args.max_tries, 2) if method == "cp" else args.max_tries):
        q = min(1.0, max(1e-3, q))
        small = decompose_model(model, method=method, ratio=q, seed=args.seed)
        reached = _macs(small) / full
        tries.append((q, reached))
        if best is None or abs(reached - target) < abs(best[1] - target):
            best = (small, reached, q)
        if abs(reached / target - 1) <= args.macs_tolerance:
            break
        q = q * target / max(reached, 1e-9)
    return best[0], best[1], best[2], tries


def make_variant(model, method, target, args):
    """The decomposed or pruned model of one variant, and what was chosen."""
    info = {}
    if method == "l1":
        small = prune_channels(model, target={"macs": target}, criterion="l1",
                               round_to=args.round_to, seed=args.seed)
        info["reached"] = small.channel_pruning_report.macs[1] / small.channel_pruning_report.macs[0]
        info["kept"] = cp_bench._kept_channels(small.channel_pruning_report)
    elif method == "tucker2_vbmf":
        small = decompose_model(model, method="tucker2", rank_selection="vbmf", seed=args.seed)
        info["reached"] = _macs(small) / _macs(model)
    else:
        small, info["reached"], info["ratio"], info["tries"] = decompose_to_macs(
            model, method, target, args)
    if method != "l1":
        info["ranks"] = {row["layer"]: list(row["ranks"])
                         for row in small.decomposition_report.layers if row["replaced"]}
        info["kernel_errors"] = {row["layer"]: row["error"]
                          for row in small.decomposition_report.layers if row["replaced"]}
    return small, info


def run_model(name, args, data):
    (x, y), (xt, yt) = data
    result = {"variants": {}, "order": [], "seconds": {}, "errors": {}}
    blobs = {}

    def variant(label):
        result["order"].append(label)
        return result["variants"].setdefault(label, {"seconds": {}, "errors": {}})

    keras.utils.set_random_seed(args.seed)
    model = cp_bench.build_model(name, x.shape[1:])
    _log(f"{name}: training {args.epochs} epoch(s) on {len(x)} images")
    start = time.perf_counter()
    train_classifier(model, x, y, args.epochs, args.lr, batch_size=args.batch_size,
                     seed=[args.seed, 0])
    result["seconds"]["train"] = time.perf_counter() - start
    entry = variant("original")
    entry["seconds"]["train"] = result["seconds"]["train"]
    blobs["original"] = {}
    cp_bench.measure(f"{name} original", model, args, data, entry, blobs["original"])
    start = time.perf_counter()
    entry["accuracy_finetuned"] = _finetuned_control(model, (x, y), (xt, yt),
                                                     args.finetune_epochs, args.finetune_lr, args)
    entry["seconds"]["finetune"] = time.perf_counter() - start

    rng = np.random.default_rng([args.seed, 7])
    calib = x[np.sort(rng.choice(len(x), min(args.recalibration_examples, len(x)),
                                 replace=False))]
    jobs = [(m, t) for t in args.targets for m in args.methods if m != "tucker2_vbmf"]
    if "tucker2_vbmf" in args.methods:
        jobs.append(("tucker2_vbmf", None))
    for method, target in jobs:
        label = method if target is None else f"{method} @ {_target_label(target)}"
        entry = variant(label)
        entry["method"], entry["target"] = method, target
        _log(f"{name}: {label}")
        start = time.perf_counter()
        try:
            small, info = make_variant(model, method, target, args)
        except Exception as exc:  # noqa: BLE001 -- a failing variant is a result, reported
            entry["errors"]["make"] = _error_text(exc)
            entry["seconds"]["make"] = time.perf_counter() - start
            _log(f"{name} {label}: failed: {entry['errors']['make']}")
            continue
        entry["seconds"]["make"] = time.perf_counter() - start
        entry.update(info)
        entry["accuracy_before_recalibration"] = _accuracy(small, xt, yt)
        recalibrate_batchnorm(small, calib)
        entry["accuracy_before"] = _accuracy(small, xt, yt)
        _log(f"{name} {label}: made in {entry['seconds']['make']:.1f} s, MACs "
             f"{info['reached']:.3f} of the original, accuracy "
             f"{entry['accuracy_before_recalibration']:.4f} -> recalibrated "
             f"{entry['accuracy_before']:.4f}; fine-tuning {args.finetune_epochs} epoch(s)")
        keras.utils.set_random_seed(args.seed + 1)  # the same batch order for every variant
        start = time.perf_counter()
        try:
            train_classifier(small, x, y, args.finetune_epochs, args.finetune_lr,
                             batch_size=args.batch_size, seed=[args.seed, 1])
        except Exception as exc:  # noqa: BLE001
            entry["errors"]["fine-tuning"] = _error_text(exc)
            continue
        finally:
            entry["seconds"]["finetune"] = time.perf_counter() - start
        entry["layers"] = len(small.layers)
        blobs[label] = {}
        cp_bench.measure(f"{name} {label}", small, args, data, entry, blobs[label])
        del small
        keras.backend.clear_session()

    start = time.perf_counter()
    timed = {}
    for label, files in blobs.items():
        for kind, blob in files.items():
            try:
                timed[(label, kind)] = cp_bench.Timed(blob, xt[0])
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
    result["seconds"]["latency"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- report


def lenet_lines(lenet):
    base = lenet["original"]
    lines = [
        ("| Variant | Ranks (fc1, fc2, predictions) | Relative error (fc1, fc2) | Params | "
        "Fewer params | MACs | Accuracy after decomposition | Accuracy after fine-tuning | "
        "vs original | int8 bytes | int8 accuracy |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        (f"| original | - | - | {_count(base['params'])} | 1.00x | {_count(base['macs'])} | - | "
        f"{_pct(base['accuracy'])} | - | {_count(base.get('int8_bytes'))} | "
        f"{_pct(base.get('int8_accuracy'))} |"),
    ]
    if base.get("accuracy_finetuned") is not None:
        lines.append(f"| original + {lenet['finetune_epochs']} epoch(s) fine-tuning (control) | "
                     f"- | - | {_count(base['params'])} | 1.00x | {_count(base['macs'])} | - | "
                     f"{_pct(base['accuracy_finetuned'])} | "
                     f"{100 * (base['accuracy_finetuned'] - base['accuracy']):+.2f} pt | - | - |")
    for p in lenet["points"]:
        if "accuracy" not in p:
            why = "; ".join(f"{k}: {_short(v)}" for k, v in p["errors"].items())
            lines.append(f"| svd ratio={p['ratio']:g} | error: {why or 'missing'} |" + " - |" * 9)
            continue
        ranks = ", ".join(str(row["ranks"][0]) if row["replaced"] else "kept"
                          for row in p["layers"])
        errors = ", ".join(f"{row['error']:.3f}" for row in p["layers"] if row["replaced"])
        lines.append(
            f"| svd ratio={p['ratio']:g} | {ranks} | {errors} | {_count(p['params'])} | "
            f"{base['params'] / p['params']:.2f}x | {_count(p['macs'])} | "
            f"{_pct(p['accuracy_decomposed'])} | {_pct(p['accuracy'])} | "
            f"{100 * (p['accuracy'] - base['accuracy']):+.2f} pt | "
            f"{_count(p.get('int8_bytes'))} | {_pct(p.get('int8_accuracy'))} |")
    return lines


def conv_lines(args, results):
    lines = [
        ("| Model | Variant | MACs vs original | Layers | Params | Accuracy | Before fine-tuning "
        "(after BN recalibration) | int8 accuracy | Float bytes | int8 bytes | Float ms | "
        "int8 ms | Float speed-up | int8 speed-up |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.models:
        result = results.get(name) or {}
        variants = result.get("variants", {})
        base = variants.get("original", {})
        for label in result.get("order", []):
            e = variants[label]
            if "accuracy" not in e:
                why = "; ".join(f"{k}: {_short(v)}" for k, v in e["errors"].items())
                lines.append(f"| {name} | {label} | error: {why or 'missing'} |" + " - |" * 11)
                continue
            cells = [name, label, _x(_ratio(e["macs"], base.get("macs")), 3),
                     str(e.get("layers", "-")) if label != "original" else "-",
                     _count(e["params"]), _pct(e["accuracy"]), _pct(e.get("accuracy_before")),
                     _pct(e.get("int8_accuracy")), _count(e.get("float_bytes")),
                     _count(e.get("int8_bytes"))]
            for kind in ("float", "int8"):
                v = _latency(e, kind)
                cells.append("-" if v is None else _ms(v))
            for kind in ("float", "int8"):
                r = _ratio(_latency(base, kind), _latency(e, kind))
                cells.append(_x(r))
            lines.append("| " + " | ".join(cells) + " |")
            if label == "original" and e.get("accuracy_finetuned") is not None:
                lines.append(f"| {name} | original + {args.finetune_epochs} epoch(s) "
                             f"fine-tuning (control) | 1.000x | - | {_count(e['params'])} | "
                             f"{_pct(e['accuracy_finetuned'])} |" + " - |" * 8)
    return lines


def rank_lines(args, results):
    lines = []
    for name in args.models:
        result = results.get(name) or {}
        for label in result.get("order", []):
            e = result["variants"][label]
            if "ranks" in e:
                ranks = ", ".join(f"{layer} {'x'.join(str(r) for r in rk)}"
                                  for layer, rk in e["ranks"].items())
                extra = f" (ratio {e['ratio']:.3f})" if "ratio" in e else ""
                errors = list(e.get("kernel_errors", {}).values())
                lines.append(f"- {name} {label}{extra}: {ranks or 'no layer replaced'}"
                             + (f"; mean relative kernel error {np.mean(errors):.3f}"
                                if errors else ""))
            elif "kept" in e:
                kept = ", ".join(f"{g} {k[0]}/{k[1]}" for g, k in e["kept"].items())
                lines.append(f"- {name} {label}: channels kept {kept}")
    return lines


def time_lines(args, lenet, results):
    lines = []
    if lenet and "train" in lenet.get("seconds", {}):
        ft = sum(p.get("finetune_s", 0) for p in lenet["points"])
        lines.append(f"- lenet_300_100: training {_s(lenet['seconds']['train'])}; "
                     f"{len(lenet['points'])} sweep points: fine-tuning {_s(ft)}, total "
                     f"{_s(lenet['seconds'].get('total', 0))}")
    for name in args.models:
        result = results.get(name) or {}
        s = result.get("seconds", {})
        parts = [f"training {_s(s['train'])}"] if "train" in s else []
        for label in result.get("order", []):
            vs = result["variants"][label]["seconds"]
            bits = []
            if "make" in vs:
                bits.append(f"{'pruning' if label.startswith('l1') else 'decomposition'} "
                            f"{_s(vs['make'])}")
            if "finetune" in vs:
                bits.append(f"fine-tuning {_s(vs['finetune'])}")
            exports = vs.get("export_float", 0) + vs.get("export_int8", 0)
            if exports:
                bits.append(f"exports {_s(exports)}")
            if bits:
                parts.append(f"{label}: " + ", ".join(bits))
        if "latency" in s:
            parts.append(f"latency timing {_s(s['latency'])}")
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def goal_lines(args, lenet, results, n_test):
    lines = []
    add = lines.append
    scope = (" (quick mode: 8x8 digits and short schedules; not the benchmark's setting)"
             if args.quick else "")
    if lenet is not None:
        base = lenet.get("original")
        if not base:
            add(f"- LeNet-300-100: NOT MET (no trained model: "
                f"{_short(json.dumps(lenet.get('errors')), 200)})")
        else:
            ok_points = [p for p in lenet["points"] if "accuracy" in p
                         and base["params"] / p["params"] >= GOAL_LENET_FACTOR]
            if not ok_points:
                add(f"- LeNet-300-100: >= {GOAL_LENET_FACTOR:g}x fewer parameters at <= "
                    f"{100 * GOAL_LENET_DROP:.1f} pt loss -> NOT MET (no sweep point reached "
                    f"{GOAL_LENET_FACTOR:g}x fewer parameters)" + scope)
            else:
                best = max(ok_points, key=lambda p: p["accuracy"])
                drop = base["accuracy"] - best["accuracy"]
                add(f"- LeNet-300-100: best point with >= {GOAL_LENET_FACTOR:g}x fewer "
                    f"parameters: ratio={best['ratio']:g}, {base['params'] / best['params']:.2f}x "
                    f"fewer, {_pct(best['accuracy'])} vs {_pct(base['accuracy'])} "
                    f"({100 * -drop:+.2f} pt; goal: loss <= {100 * GOAL_LENET_DROP:.1f} pt) -> "
                    + ("MET" if drop <= GOAL_LENET_DROP + 1e-12 else "NOT MET") + scope)
                if base.get("accuracy_finetuned") is not None:
                    add(f"  Against the control (the original fine-tuned the same epochs, "
                        f"{_pct(base['accuracy_finetuned'])}): "
                        f"{100 * (best['accuracy'] - base['accuracy_finetuned']):+.2f} pt.")
                add(f"  The point is picked on the test set among {len(ok_points)} with "
                    f"enough compression; one test image is {100 / lenet['n_test']:.3f} pt.")
    label = f"tucker2 @ {_target_label(GOAL_TUCKER_TARGET)}"
    for name in (args.models if "conv" in args.parts else ()):
        variants = (results.get(name) or {}).get("variants", {})
        base, e = variants.get("original", {}), variants.get(label, {})
        if "accuracy" not in base or "accuracy" not in e:
            add(f"- {name} {label}: NOT MET (missing: "
                f"{'original' if 'accuracy' not in base else label}; "
                f"{_short(json.dumps(e.get('errors') or base.get('errors')), 200)})" + scope)
            continue
        speed = {k: _ratio(_latency(base, k), _latency(e, k)) for k in ("float", "int8")}
        drop = base["accuracy"] - e["accuracy"]
        fast = all(v is not None and v >= GOAL_TUCKER_SPEEDUP for v in speed.values())
        ok = fast and drop <= GOAL_TUCKER_DROP + 1e-12
        add(f"- {name} {label} (MACs {_x(_ratio(e['macs'], base['macs']), 3)}): LiteRT "
            f"speed-up float {_x(speed['float'])}, int8 {_x(speed['int8'])} (goal >= "
            f"{GOAL_TUCKER_SPEEDUP:g}x each); accuracy {_pct(e['accuracy'])} vs "
            f"{_pct(base['accuracy'])} ({100 * -drop:+.2f} pt; goal: loss <= "
            f"{100 * GOAL_TUCKER_DROP:.0f} pt) -> " + ("MET" if ok else "NOT MET") + scope)
        if base.get("accuracy_finetuned") is not None:
            add(f"  Against the control (the original fine-tuned the same epochs, "
                f"{_pct(base['accuracy_finetuned'])}): "
                f"{100 * (e['accuracy'] - base['accuracy_finetuned']):+.2f} pt.")
    return lines


def build_report(args, machine, lenet, results, n_train, n_test, load, started, wall, git):
    lines = machine.report_header(started, wall)
    add = lines.append
    from importlib import metadata

    state = git[0] if git[0] == git[1] else f"{git[0]} at the start, {git[1]} at the end"
    add(f"- ai-edge-litert {metadata.version('ai-edge-litert')}, tensorly "
        f"{metadata.version('tensorly')}; tfcompress {state}")
    add(f"- Load average (1, 5, 15 min) at start: {load[0]}; at end: {load[1]}")
    add("")
    add("### Setup")
    add("")
    if lenet is not None:
        add(f"LeNet-300-100 on {'the 8x8 digits' if args.quick else 'MNIST'} "
            f"({lenet['n_train']} / {lenet['n_test']} images): trained {args.lenet_epochs} "
            f"epoch(s), Adam {args.lr:g} with cosine decay, batch {args.batch_size}; each sweep "
            "point is decompose_model(trained, method=\"svd\", ratio=r) (every Dense whose SVD "
            "chain has fewer MACs becomes Dense(rank, no bias) -> Dense), then "
            f"{args.lenet_finetune_epochs} epoch(s) of fine-tuning, Adam "
            f"{args.lenet_finetune_lr:g} with cosine decay, the same batch order for every point. "
            "Relative error: ||W - W_r||_F / ||W||_F of each replaced kernel (Eckart-Young: the "
            "norm of the dropped singular values over the norm of all).")
        add("")
    if "conv" in args.parts:
        add(f"resnet20 (tfcompress.models, conv=\"conv\") and vgg_small (the net of "
            f"benchmarks/channel_pruning.py) on {'the 8x8 digits' if args.quick else 'Fashion-MNIST'}, "
            f"{n_train} training / {n_test} test images: trained {args.epochs} epoch(s), Adam "
            f"{args.lr:g}, cosine decay, batch {args.batch_size}. Variants at each target fraction "
            "of the MACs: tucker2 and cp = decompose_model(trained, method=m, ratio=q), q "
            f"searched until the model's MACs are within {args.macs_tolerance:.0%} of the target "
            "(every k x k convolution whose chain has fewer MACs replaced; the 1x1 shortcuts, "
            "the stem when not cheaper, and the classifier kept); l1 = prune_channels(trained, "
            f"target={{\"macs\": t}}, criterion=\"l1\", round_to={args.round_to}); "
            "tucker2_vbmf = decompose_model(trained, method=\"tucker2\", "
            "rank_selection=\"vbmf\") (Kim et al. 2016's rank choice, at the MACs it picks). "
            "Each variant: BatchNorm moving statistics recomputed on "
            f"{args.recalibration_examples} training images (recalibrate_batchnorm), then "
            f"{args.finetune_epochs} epoch(s) of fine-tuning, Adam {args.finetune_lr:g}, cosine "
            "decay, the same batch order for every variant. Latency: batch 1, ai_edge_litert "
            f"Interpreter(num_threads=1), default CPU setup (XNNPACK), median of "
            f"{args.latency_runs} samples (a sample repeats invoke() until it lasts >= "
            f"{args.min_sample_ms:g} ms), every file of a model timed round-robin; speed-up = "
            "the original model's latency / the variant's, same file kind. int8 file: "
            f"full-integer post-training quantization calibrated on {REPRESENTATIVE_EXAMPLES} "
            "training images, int8 I/O.")
        add("")
    add("Published anchors (ImageNet-scale models and other settings, not the ones above):")
    add("")
    for anchor in ANCHORS:
        add(f"- {anchor}")
    add("")
    add("### Results")
    add("")
    if lenet is not None and lenet.get("original"):
        add("LeNet-300-100, SVD rank sweep:")
        add("")
        lines.extend(lenet_lines(lenet))
        add("")
    if "conv" in args.parts:
        lines.extend(conv_lines(args, results))
        ranks = rank_lines(args, results)
        if ranks:
            add("")
            add("Ranks (decompositions) and channels (l1) chosen:")
            add("")
            lines.extend(ranks)
        spread = cp_bench.spread_lines(args, results)
        if spread:
            add("")
            lines.extend(spread)
    times = time_lines(args, lenet, results)
    if times:
        add("")
        add("Wall time per stage:")
        add("")
        lines.extend(times)
    errors = []
    if lenet is not None:
        for what, text in lenet.get("errors", {}).items():
            errors.append(_error_item(f"lenet {what}", text))
        for p in lenet.get("points", []):
            for what, text in p.get("errors", {}).items():
                errors.append(_error_item(f"lenet ratio={p['ratio']:g} {what}", text))
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
    lines.extend(goal_lines(args, lenet, results, n_test))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    machine = _load_benchmark("layers")
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()

    lenet = None
    if "lenet" in args.parts:
        start = time.perf_counter()
        try:
            lenet = run_lenet(args)
        except Exception as exc:  # noqa: BLE001 -- reported in the goals
            lenet = {"points": [], "seconds": {}, "errors": {"run": _error_text(exc)},
                     "n_test": 1}
            _log(f"lenet failed: {_error_text(exc)}")
        lenet["seconds"]["total"] = time.perf_counter() - start
        keras.backend.clear_session()

    results, n_train, n_test = {}, 0, 0
    if "conv" in args.parts:
        dataset = "digits" if args.quick else "fashion_mnist"
        (x, y), (xt, yt) = datasets.load(dataset, data_dir=None if args.quick else args.data_dir)
        if args.train_examples:
            x, y = x[: args.train_examples], y[: args.train_examples]
        if args.test_examples:
            xt, yt = xt[: args.test_examples], yt[: args.test_examples]
        n_train, n_test = len(x), len(xt)
        _log(f"{dataset}: {n_train} training / {n_test} test images of {x.shape[1:]}")
        for name in args.models:
            start = time.perf_counter()
            try:
                results[name] = run_model(name, args, ((x, y), (xt, yt)))
            except Exception as exc:  # noqa: BLE001
                results[name] = {"variants": {}, "order": [], "seconds": {},
                                 "errors": {"run": _error_text(exc)}}
                _log(f"{name} failed: {_error_text(exc)}")
            results[name]["seconds"]["total"] = time.perf_counter() - start
            _log(f"{name}: done in {results[name]['seconds']['total']:.0f} s")
            keras.backend.clear_session()

    wall = time.perf_counter() - t0
    report = build_report(args, machine, lenet, results, n_train, n_test,
                          (load_before, machine._loadavg()), started, wall,
                          (git_before, machine.git_state()))
    print(report)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("output", "json")}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "started": started.isoformat(), "wall_seconds": wall,
                       "lenet": lenet, "results": results}, f, indent=2, default=str)
        _log(f"wrote {args.json}")
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        _log(f"wrote section into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
