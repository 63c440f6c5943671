"""Deep Compression on MNIST: tfcompress against the paper's Table 1 and against tfmot.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
Quantization and Huffman Coding", ICLR 2016 (arXiv:1510.00149), Table 1: LeNet-300-100 from
1.64% to 1.58% test error and 1070 KB to 27 KB (40x); LeNet-5 from 0.80% to 0.74% and 1720 KB
to 44 KB (39x); weights kept per layer 8% / 9% / 26% (LeNet-300-100) and 66% / 12% / 8% / 19%
(LeNet-5). The paper's KB are 1000 bytes: 1070 KB is 266,610 float32 parameters.

tfcompress side, for `lenet_300_100` and `lenet5` (tfcompress.models, 28x28x1 inputs): trains the
float model with `deep_compression.train_classifier` (Adam `--lr` with cosine decay, batch 128,
sparse categorical cross-entropy, `--epochs`, seed; every epoch on a fresh copy of the training
images shifted by up to `--augment_shift` pixels, `datasets.random_shift`), then
runs `tfcompress.deep_compression.run` with DeepCompressionConfig(sparsity =
deep_compression.DEFAULT_SPARSITY[model] (or `--sparsity`), clusters =
deep_compression.MODEL_CLUSTERS[model] (or `--clusters`),
prune_epochs, retrain_epochs, finetune_epochs, learning rates, decay and shift from the
flags): pruning with
retraining, sparsity-preserving weight sharing (k-means, linear initialization) with centroid
fine-tuning, and the Huffman-coded per-layer report. The compressed model is written with
`tfcompress.coding.save_compressed`: the container's file size is the compressed size and the
ratio is 4 bytes x parameters / container bytes (biases included on both sides). The container
is reloaded with `coding.load_compressed`, checked bit for bit against the compressed weights,
and the reloaded model's test error is the compressed error. The compressed model is also
exported as an integer-only int8 .tflite (`export.to_tflite(model, x_train[:200])`, post-training,
int8 I/O) and as a float32 .tflite; each file's size, gzip size and test accuracy (ai_edge_litert,
`export.run_tflite`) are reported.

tfmot side: benchmarks/tfmot_deep_compression.py in a subprocess (TF_USE_LEGACY_KERAS=1: tf_keras
and tensorflow_model_optimization are imported there only, never here) rebuilds the same models,
trains them the same way (same data, epochs, batch, learning rates, seed; `--tfmot_from_ours`
starts it from tfcompress's trained float weights instead) and runs tfmot's pruning +
sparsity-preserving clustering recipe (prune_low_magnitude with PolynomialDecay, strip_pruning,
cluster_weights with LINEAR init and preserve_sparsity=True, fine-tuning, strip_clustering) with
the SAME per-layer sparsity targets and cluster counts as tfcompress, plus tfmot's reference
recipe (92% sparsity and 64 clusters everywhere; `--no_tfmot_reference` skips it). tfmot has no
entropy-coded format: its size is, as its guides measure it, the gzip (level 9) size of the float
.tflite from TFLiteConverter.from_keras_model (the gzip size of its int8 PTQ .tflite is reported
too).

It prints markdown: per model, the paper / tfcompress / tfmot table (float error, compressed
error, original size, compressed size, ratio), the per-layer weights kept against the paper's,
tfcompress's per-layer coding report, the .tflite files, and goal lines computed from the numbers:
LeNet-300-100 >= 50x at <= 1.6% test error, LeNet-5 >= 50x at <= 0.8%, and tfcompress's ratio
>= 2.5x tfmot's (same targets, gzip float .tflite) in the same run.

Run (from the repository root; MNIST as mnist.npz in the keras.datasets layout):

    PYTHONPATH=. python3 benchmarks/deep_compression.py --data_dir DIR           # ~28 min, 2 cores
    PYTHONPATH=. python3 benchmarks/deep_compression.py --data_dir DIR --quick   # ~1 min
    PYTHONPATH=. python3 benchmarks/deep_compression.py --data_dir DIR --output benchmarks/RESULTS.md

`--data_dir` defaults to $TFCOMPRESS_DATA_DIR. The tfmot side needs
`pip install tensorflow-model-optimization==0.8.1 tf-keras==2.21.0`; without it the tfmot rows
report the error (`--skip_tfmot` skips them).
"""

import argparse
import contextlib
import datetime
import gzip
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from tfcompress import datasets, export, models

HERE = os.path.dirname(os.path.abspath(__file__))
TFMOT_SCRIPT = os.path.join(HERE, "tfmot_deep_compression.py")
BEGIN_MARK = "<!-- BEGIN benchmarks/deep_compression.py -->"
END_MARK = "<!-- END benchmarks/deep_compression.py -->"
SECTION_TITLE = "## Deep Compression (benchmarks/deep_compression.py)"

MODELS = ("lenet_300_100", "lenet5")
LABELS = {"lenet_300_100": "LeNet-300-100", "lenet5": "LeNet-5"}
REPRESENTATIVE_EXAMPLES = 200
GZIP_LEVEL = 9
KB = 1000  # the paper's KB: 266,610 float32 parameters = 1,066,440 bytes = "1070 KB"
# Han et al. 2016, Table 1 (errors, sizes in KB, ratio) and Tables 2-3 (weights kept per layer).
PAPER = {
    "lenet_300_100": {
        "error": (0.0164, 0.0158), "kb": (1070, 27), "ratio": 40,
        "kept": {"fc1": 0.08, "fc2": 0.09, "predictions": 0.26},
    },
    "lenet5": {
        "error": (0.0080, 0.0074), "kb": (1720, 44), "ratio": 39,
        "kept": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "predictions": 0.19},
    },
}
# Goals of this benchmark: (minimum ratio, maximum compressed test error) per model, and the
# minimum ratio of tfcompress's ratio to tfmot's.
GOALS = {"lenet_300_100": (50.0, 0.016), "lenet5": (50.0, 0.008)}
GOAL_VS_TFMOT = 2.5
SAME_TARGETS = "tfmot, same targets"
REFERENCE = "tfmot reference (92% + 64 clusters)"


def _load_layers_benchmark():
    """benchmarks/layers.py, for its machine description and write_section."""
    spec = importlib.util.spec_from_file_location(
        "tfcompress_benchmarks_layers", os.path.join(HERE, "layers.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- arguments


def _parse_sparsity(text):
    """--sparsity: a fraction for every layer, or JSON {model: {layer: fraction}}."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a number or JSON: {exc}") from exc
    if isinstance(value, (int, float)):
        return {name: float(value) for name in MODELS}
    if isinstance(value, dict) and all(isinstance(v, (dict, int, float)) for v in value.values()):
        return value
    raise argparse.ArgumentTypeError("expected a fraction or {model: {layer: fraction}}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get(datasets.ENV_VAR) or None,
        help=f"folder holding mnist.npz (default ${datasets.ENV_VAR})",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs (20)")
    parser.add_argument("--prune_epochs", type=int, default=None,
                        help="epochs while sparsity rises to the target (6)")
    parser.add_argument("--retrain_epochs", type=int, default=None,
                        help="retraining epochs at the target sparsity (12)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="centroid fine-tuning epochs (3)")
    parser.add_argument("--clusters", type=int, default=None,
                        help="shared weights per layer (default "
                        "tfcompress.deep_compression.MODEL_CLUSTERS)")
    parser.add_argument(
        "--sparsity", type=_parse_sparsity, default=None,
        help="fraction pruned in every layer, or JSON {model: {layer: fraction}} (default "
        "tfcompress.deep_compression.DEFAULT_SPARSITY)",
    )
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate of float training, pruning and retraining")
    parser.add_argument("--finetune_lr", type=float, default=1e-4,
                        help="Adam learning rate of the centroid fine-tuning")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--lr_decay", default="cosine", choices=("cosine", "constant"),
        help="learning rate of every training stage: cosine decay to 1%% over the stage "
        "(default) or constant",
    )
    parser.add_argument(
        "--augment_shift", type=int, default=None,
        help="move each training image by a random offset of up to this many pixels per "
        "axis, new offsets every epoch, in every training stage (default 1; --quick: 0)",
    )
    parser.add_argument(
        "--train_examples", type=int, default=None,
        help="train on the first N training images (default all 60000; --quick: 6000)",
    )
    parser.add_argument(
        "--test_examples", type=int, default=None,
        help="evaluate on the first N test images (default all 10000; --quick: 2000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_tfmot", action="store_true", help="no tfmot subprocess")
    parser.add_argument(
        "--no_tfmot_reference", dest="tfmot_reference", action="store_false",
        help="skip tfmot's reference recipe (92%% sparsity, 64 clusters everywhere)",
    )
    parser.add_argument(
        "--tfmot_from_ours", action="store_true",
        help="start tfmot's recipes from tfcompress's trained float weights (no float "
        "training in the tfmot process)",
    )
    parser.add_argument("--save_dir", default=None,
                        help="keep the containers and .tflite files here")
    parser.add_argument("--json", default=None, help="also write the raw numbers to this file")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="deep_compression.run verbosity, shown on stderr (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: subset, 1 epoch each")
    parser.add_argument(
        "--output", default=None, help="markdown file to write this benchmark's section into"
    )
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"epochs": 1, "prune_epochs": 1, "retrain_epochs": 1, "finetune_epochs": 1,
                    "train_examples": 6000, "test_examples": 2000, "augment_shift": 0}
    else:
        defaults = {"epochs": 20, "prune_epochs": 6, "retrain_epochs": 12, "finetune_epochs": 3,
                    "train_examples": 0, "test_examples": 0, "augment_shift": 1}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in defaults:
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.clusters is not None and args.clusters < 2:
        parser.error("--clusters must be at least 2")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if not args.data_dir:
        parser.error(
            f"MNIST not found: give --data_dir (a folder holding mnist.npz, the arrays of "
            f"keras.datasets.mnist.load_data() saved with numpy.savez) or set "
            f"${datasets.ENV_VAR}."
        )
    args.mnist_path = os.path.abspath(os.path.join(args.data_dir, "mnist.npz"))
    if not os.path.isfile(args.mnist_path):
        parser.error(f"MNIST not found: no file {args.mnist_path} (from --data_dir / "
                     f"${datasets.ENV_VAR}={args.data_dir!r}).")
    args.work_dir = None
    return args


def _log(message):
    print(f"[deep_compression] {message}", file=sys.stderr, flush=True)


def _error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()


# --------------------------------------------------------------------------- tfcompress


def _compile(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _accuracy(model, xt, yt):
    probs = model.predict(xt, batch_size=512, verbose=0)
    return float(np.mean(np.asarray(probs).argmax(-1) == yt))


def gzip_size(blob):
    return len(gzip.compress(blob, compresslevel=GZIP_LEVEL, mtime=0))


def _kernel_layers(model):
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]


def layer_report(model):
    """Per Dense/Conv2D layer: kernel size, sparsity and distinct non-zero kernel values."""
    report = {}
    for layer in _kernel_layers(model):
        kernel = np.asarray(layer.kernel)
        nonzero = kernel[kernel != 0]
        report[layer.name] = {
            "weights": int(kernel.size),
            "sparsity": float(1.0 - nonzero.size / kernel.size),
            "unique_nonzero": int(np.unique(nonzero).size),
        }
    return report


def bit_identical(a_weights, b_weights):
    if len(a_weights) != len(b_weights):
        return False
    return all(
        np.asarray(a).shape == np.asarray(b).shape
        and np.asarray(a).dtype == np.asarray(b).dtype
        and np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
        for a, b in zip(a_weights, b_weights)
    )


def targets_for(args, name, deep_compression):
    """Per-layer sparsity targets and the cluster count tfcompress uses for `name`."""
    sparsity, clusters = deep_compression.default_targets(name)
    if (args.sparsity or {}).get(name) is not None:
        sparsity = args.sparsity[name]
    if args.clusters is not None:
        clusters = args.clusters
    return sparsity, clusters


def run_tfcompress(name, args, data):
    """Float training, tfcompress.deep_compression.run, container, .tflite files for one model.

    Errors after float training are recorded in result["errors"], not raised.
    """
    (x, y), (xt, yt) = data
    result = {"seconds": {}, "errors": {}, "tflite": {}}
    keras.utils.set_random_seed(args.seed)
    model = getattr(models, name)(input_shape=(28, 28, 1))
    result["params"] = int(model.count_params())
    from tfcompress import deep_compression

    _log(f"tfcompress {name}: float training, {args.epochs} epoch(s)")
    start = time.perf_counter()
    deep_compression.train_classifier(
        model, x, y, args.epochs, args.lr, batch_size=args.batch_size,
        learning_rate_decay=args.lr_decay, augment_shift=args.augment_shift,
        seed=[args.seed, 0],
    )
    result["seconds"]["train_float"] = time.perf_counter() - start
    result["float_acc"] = _accuracy(model, xt, yt)
    _log(f"tfcompress {name}: float accuracy {result['float_acc']:.4f}")
    if args.work_dir:  # for --tfmot_from_ours
        np.savez(os.path.join(args.work_dir, f"{name}.npz"), *model.get_weights())

    try:
        from tfcompress import coding

        sparsity, clusters = targets_for(args, name, deep_compression)
        result["sparsity_target"], result["clusters"] = sparsity, clusters
        config = deep_compression.DeepCompressionConfig(
            sparsity=sparsity, clusters=clusters, prune_epochs=args.prune_epochs,
            retrain_epochs=args.retrain_epochs, finetune_epochs=args.finetune_epochs,
            batch_size=args.batch_size, learning_rate=args.lr,
            finetune_learning_rate=args.finetune_lr, learning_rate_decay=args.lr_decay,
            augment_shift=args.augment_shift, seed=args.seed,
        )
        result["config"] = {k: v for k, v in vars(config).items()}
        _log(f"tfcompress {name}: deep_compression.run, sparsity {sparsity}, "
             f"{clusters} clusters")
        keras.utils.set_random_seed(args.seed)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stage lines and Keras progress
            dc = deep_compression.run(model, (x, y), (xt, yt), config, verbose=args.verbose)
        result["seconds"]["pipeline"] = time.perf_counter() - start
        result["seconds"].update({f"stage_{k}": v for k, v in dc.seconds.items()})
        result["accuracy"] = dict(dc.accuracy)
        result["report_text"] = str(dc.report)
        try:
            result["report"] = dc.report.to_dict()
        except Exception as exc:  # noqa: BLE001 -- the text form is still there
            result["errors"]["report"] = _error_text(exc)
        result["sparsity_report"] = dc.sparsity
        result["layers"] = layer_report(dc.model)
    except Exception as exc:  # noqa: BLE001 -- a failing pipeline is a result, reported as such
        result["errors"]["pipeline"] = _error_text(exc)
        _log(f"tfcompress {name}: pipeline failed: {result['errors']['pipeline']}")
        return result

    folder = args.save_dir or args.work_dir
    container = os.path.join(folder, f"tfcompress_{name}.tfcz")
    try:
        start = time.perf_counter()
        coding.save_compressed(dc.model, container)
        result["seconds"]["save"] = time.perf_counter() - start
        result["container_bytes"] = os.path.getsize(container)
        restored = coding.load_compressed(container)
        result["bit_identical"] = bit_identical(dc.model.get_weights(), restored.get_weights())
        result["compressed_acc"] = _accuracy(restored, xt, yt)
        _log(f"tfcompress {name}: container {result['container_bytes']:,} bytes "
             f"({4 * result['params'] / result['container_bytes']:.1f}x), bit-identical "
             f"{result['bit_identical']}, accuracy {result['compressed_acc']:.4f}")
    except Exception as exc:  # noqa: BLE001
        result["errors"]["container"] = _error_text(exc)
        _log(f"tfcompress {name}: container failed: {result['errors']['container']}")

    for kind, kwargs in (
        ("int8", {"representative_data": x[:REPRESENTATIVE_EXAMPLES], "mode": "int8"}),
        ("float", {"mode": "float32"}),
    ):
        try:
            start = time.perf_counter()
            blob = export.to_tflite(dc.model, **kwargs)
            convert_seconds = time.perf_counter() - start
            pred = export.run_tflite(blob, xt)[0].argmax(-1)
            result["tflite"][kind] = {
                "acc": float(np.mean(pred == yt)), "bytes": len(blob),
                "gzip_bytes": gzip_size(blob), "convert_seconds": convert_seconds,
            }
            if args.save_dir:
                with open(os.path.join(args.save_dir, f"tfcompress_{name}_{kind}.tflite"),
                          "wb") as f:
                    f.write(blob)
            entry = result["tflite"][kind]
            _log(f"tfcompress {name}: {kind} .tflite accuracy {entry['acc']:.4f}, "
                 f"{entry['bytes']:,} bytes, gzip {entry['gzip_bytes']:,}")
        except Exception as exc:  # noqa: BLE001
            result["errors"][f"{kind} .tflite"] = _error_text(exc)
            _log(f"tfcompress {name}: {kind} .tflite failed: {_error_text(exc)}")
    return result


# --------------------------------------------------------------------------- tfmot


def run_tfmot(args, ours):
    """benchmarks/tfmot_deep_compression.py in a legacy-Keras subprocess; (report, error)."""
    recipes = {SAME_TARGETS: {}}
    for name in args.models:
        mine = ours.get(name) or {}
        if "sparsity_target" in mine:
            recipes[SAME_TARGETS][name] = {
                "sparsity": mine["sparsity_target"], "clusters": mine["clusters"],
            }
    if not recipes[SAME_TARGETS]:
        del recipes[SAME_TARGETS]
    if args.tfmot_reference:
        recipes[REFERENCE] = {name: {"sparsity": 0.92, "clusters": 64} for name in args.models}
    if not recipes:
        return None, "no recipe to run (tfcompress gave no targets)"
    command = [
        sys.executable, TFMOT_SCRIPT, "--data", args.mnist_path,
        "--models", ",".join(args.models), "--epochs", str(args.epochs),
        "--prune_epochs", str(args.prune_epochs), "--retrain_epochs", str(args.retrain_epochs),
        "--finetune_epochs", str(args.finetune_epochs), "--batch_size", str(args.batch_size),
        "--lr", repr(args.lr), "--finetune_lr", repr(args.finetune_lr),
        "--lr_decay", args.lr_decay, "--augment_shift", str(args.augment_shift),
        "--seed", str(args.seed), "--train_examples", str(args.train_examples),
        "--test_examples", str(args.test_examples), "--recipes", json.dumps(recipes),
    ]
    if args.tfmot_from_ours and args.work_dir:
        command += ["--float_weights", args.work_dir]
    if args.save_dir:
        command += ["--output_dir", args.save_dir]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    _log("tfmot: " + " ".join(shlex.quote(c) for c in command[1:]) + " (TF_USE_LEGACY_KERAS=1)")
    stderr_tail = []
    try:
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.PIPE,
                                    text=True)
            for line in proc.stderr:  # progress as it comes: the tfmot side takes a while
                line = line.rstrip("\n")
                if line.startswith("[tfmot]"):
                    print(line, file=sys.stderr, flush=True)
                elif line.strip():
                    stderr_tail = (stderr_tail + [line])[-5:]
            returncode = proc.wait()
            out.seek(0)
            stdout = out.read()
    except OSError as exc:
        return None, _error_text(exc)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        return None, f"tfmot subprocess exited with {returncode}: " + " | ".join(stderr_tail[-3:])
    try:
        return json.loads(lines[-1]), None
    except json.JSONDecodeError as exc:
        return None, f"tfmot subprocess printed unreadable JSON: {exc}"


# --------------------------------------------------------------------------- report


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def _err(acc):
    return "-" if acc is None else f"{100 * (1 - acc):.2f}%"


def _kb(nbytes):
    return "-" if nbytes is None else f"{nbytes / KB:.1f} KB"


def _ratio(value):
    return "-" if value is None else f"{value:.1f}x"


def _short(error, limit=110):
    first = error.splitlines()[0] if error else ""
    return (first[:limit] + "...") if len(first) > limit else first


def _error_item(what, text):
    if "\n" not in text and "`" not in text:
        return f"- {what}: `{text}`"
    body = "\n".join("  " + line for line in text.splitlines())
    return f"- {what}:\n\n  ```text\n{body}\n  ```"


def our_ratio(mine):
    if not mine or not mine.get("container_bytes"):
        return None
    return 4 * mine["params"] / mine["container_bytes"]


def tfmot_ratio(model_result, recipe, kind="float"):
    entry = (model_result or {}).get("recipes", {}).get(recipe, {}).get("tflite", {}).get(kind)
    if not entry:
        return None
    return 4 * model_result["params"] / entry["gzip_bytes"]


def model_lines(name, args, mine, theirs_model, tfmot_error):
    lines = []
    add = lines.append
    paper = PAPER[name]
    mine = mine or {}
    params = mine.get("params") or (theirs_model or {}).get("params")
    original = 4 * params if params else None
    add(f"#### {LABELS[name]} ({params:,} parameters)" if params else f"#### {LABELS[name]}")
    add("")
    add("| Row | Float error | Compressed error | Original size | Compressed size | Ratio |")
    add("|---|---:|---:|---:|---:|---:|")
    add(f"| Paper (Han et al. 2016, Table 1) | {paper['error'][0] * 100:.2f}% "
        f"| {paper['error'][1] * 100:.2f}% | {paper['kb'][0]} KB | {paper['kb'][1]} KB "
        f"| {paper['ratio']}x |")
    if mine.get("errors", {}).get("pipeline"):
        add(f"| tfcompress | {_err(mine.get('float_acc'))} "
            f"| error: {_short(mine['errors']['pipeline'])} | {_kb(original)} | - | - |")
    else:
        acc = mine.get("compressed_acc", (mine.get("accuracy") or {}).get("clustered"))
        size = mine.get("container_bytes")
        add(f"| tfcompress (container, coding.save_compressed) | {_err(mine.get('float_acc'))} "
            f"| {_err(acc)} | {_kb(original)} | "
            + (f"{_kb(size)} ({size:,} B)" if size else
               f"error: {_short(mine.get('errors', {}).get('container', 'missing'))}")
            + f" | {_ratio(our_ratio(mine))} |")
        for kind, label in (("int8", "int8 .tflite"), ("float", "float .tflite")):
            entry = mine.get("tflite", {}).get(kind)
            if entry:
                add(f"| tfcompress, {label}, gzip | {_err(mine.get('float_acc'))} "
                    f"| {_err(entry['acc'])} | {_kb(original)} | {_kb(entry['gzip_bytes'])} "
                    f"| {_ratio(4 * params / entry['gzip_bytes'])} |")
    if theirs_model is None:
        add(f"| tfmot | - | error: {_short(tfmot_error or 'no result')} | - | - | - |")
    else:
        for recipe, out in theirs_model.get("recipes", {}).items():
            for kind, label in (("float", "gzip float .tflite"), ("ptq", "gzip int8 .tflite")):
                entry = out["tflite"].get(kind)
                if not entry:
                    continue
                add(f"| {recipe} ({label}) | {_err(theirs_model.get('keras_float_acc'))} "
                    f"| {_err(entry['acc'])} | {_kb(original)} | {_kb(entry['gzip_bytes'])} "
                    f"({entry['gzip_bytes']:,} B) | {_ratio(tfmot_ratio(theirs_model, recipe, kind))} |")
        for recipe, text in theirs_model.get("errors", {}).items():
            add(f"| {recipe} | {_err(theirs_model.get('keras_float_acc'))} "
                f"| error: {_short(text)} | - | - | - |")
    add("")
    stages = []
    if mine.get("accuracy"):
        a = mine["accuracy"]
        stages.append(
            f"tfcompress float {_err(a.get('float'))} -> pruned {_err(a.get('pruned'))} -> "
            f"clustered {_err(a.get('clustered'))}"
        )
    for recipe, out in (theirs_model or {}).get("recipes", {}).items():
        stages.append(
            f"{recipe}: float {_err(theirs_model.get('keras_float_acc'))} -> pruned "
            f"{_err(out.get('keras_pruned_acc'))} -> clustered {_err(out.get('keras_acc'))}"
        )
    if stages:
        add("Test error after each stage (Keras): " + "; ".join(stages) + ".")
        add("")
    if "bit_identical" in mine:
        add(f"Container reloaded with coding.load_compressed: weights bit-identical to the "
            f"compressed model: {'yes' if mine['bit_identical'] else 'NO'}.")
        add("")

    # Per-layer weights kept.
    ours_layers = mine.get("layers") or {}
    same = ((theirs_model or {}).get("recipes", {}).get(SAME_TARGETS) or {}).get("layers") or {}
    names = list(paper["kept"])
    if ours_layers or same:
        target = mine.get("sparsity_target")
        clusters = mine.get("clusters")
        add("| Layer | Weights | Kept: paper | Kept: target | Kept: tfcompress | Kept: tfmot "
            "(same targets) | Clusters | Distinct non-zero values tfcompress / tfmot |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        for layer in names:
            o, t = ours_layers.get(layer), same.get(layer)
            size = (o or t or {}).get("weights")
            goal = target.get(layer) if isinstance(target, dict) else target
            cells = [
                layer,
                f"{size:,}" if size else "-",
                _pct(paper["kept"][layer]),
                "-" if goal is None else _pct(1 - goal),
                _pct(1 - o["sparsity"]) if o else "-",
                _pct(1 - t["sparsity"]) if t else "-",
                str((clusters.get(layer, "-") if isinstance(clusters, dict) else clusters) or "-"),
                f"{o['unique_nonzero'] if o else '-'} / {t['unique_nonzero'] if t else '-'}",
            ]
            add("| " + " | ".join(cells) + " |")
        kept_o, kept_t = _kept(ours_layers), _kept(same)
        if kept_o is not None or kept_t is not None:
            total = sum(v["weights"] for v in (ours_layers or same).values())
            add(f"| all kernels | {total:,} | {_pct(_paper_total(name))} | - "
                f"| {_pct(kept_o)} | {_pct(kept_t)} | - | - |")
        add("")
    if mine.get("report_text"):
        add("tfcompress per-layer coding report (`str(result.report)`, "
            "tfcompress.coding.compression_report of the compressed model):")
        add("")
        add("```text")
        lines.extend(mine["report_text"].rstrip("\n").splitlines())
        add("```")
        add("")
    return lines


def _kept(layers):
    """Fraction of kernel weights kept over all layers of a layer_report, or None."""
    total = sum(v["weights"] for v in layers.values())
    if not total:
        return None
    return sum(v["weights"] * (1 - v["sparsity"]) for v in layers.values()) / total


def _paper_total(name):
    """Weights kept over all kernels in the paper, from its per-layer fractions."""
    sizes = {
        "lenet_300_100": {"fc1": 784 * 300, "fc2": 300 * 100, "predictions": 100 * 10},
        "lenet5": {"conv1": 5 * 5 * 20, "conv2": 5 * 5 * 20 * 50, "fc1": 800 * 500,
                   "predictions": 500 * 10},
    }[name]
    kept = PAPER[name]["kept"]
    return sum(sizes[k] * kept[k] for k in sizes) / sum(sizes.values())


def goal_lines(args, ours, theirs, tfmot_error, n_test):
    lines = []
    add = lines.append
    scope = (f" (quick mode: {ours['_n_train']} training / {n_test} test images, not the "
             "paper's setting)" if args.quick else "")
    for name in args.models:
        mine = ours.get(name) or {}
        min_ratio, max_error = GOALS[name]
        ratio = our_ratio(mine)
        acc = mine.get("compressed_acc")
        if ratio is None or acc is None:
            why = mine.get("errors") or {"result": "missing"}
            add(f"- {LABELS[name]}: >= {min_ratio:g}x at <= {100 * max_error:.1f}% test error -> "
                f"NOT MET (no tfcompress result: {_short('; '.join(f'{k}: {v}' for k, v in why.items()), 200)})")
            continue
        error = 1 - acc
        ok = ratio >= min_ratio and error <= max_error + 1e-12
        why = []
        if ratio < min_ratio:
            why.append(f"ratio {ratio:.1f}x < {min_ratio:g}x")
        if error > max_error + 1e-12:
            why.append(f"error {100 * error:.2f}% > {100 * max_error:.1f}%")
        add(f"- {LABELS[name]}: tfcompress {ratio:.1f}x at {100 * error:.2f}% test error "
            f"(paper: {PAPER[name]['ratio']}x at {100 * PAPER[name]['error'][1]:.2f}%) "
            f"(goal: >= {min_ratio:g}x at <= {100 * max_error:.1f}%) -> "
            + ("MET" if ok else f"NOT MET ({'; '.join(why)})") + scope)
    recipes = ((SAME_TARGETS, "same per-layer sparsity targets and cluster count as tfcompress"),
               (REFERENCE, "tfmot's reference recipe"))
    for name in args.models:
        mine = ours.get(name) or {}
        theirs_model = (theirs or {}).get("models", {}).get(name)
        ratio = our_ratio(mine)
        for recipe, what in recipes:
            if recipe == REFERENCE and not args.tfmot_reference:
                continue
            other = tfmot_ratio(theirs_model, recipe)
            if ratio is None or other is None:
                why = ("tfcompress: no container" if ratio is None else
                       "tfmot: " + _short(tfmot_error or ((theirs_model or {}).get("errors")
                                                          or {}).get(recipe, "no result"), 200))
                add(f"- {LABELS[name]}: tfcompress ratio >= {GOAL_VS_TFMOT:g}x tfmot's "
                    f"({recipe}) -> NOT CHECKED ({why})")
                continue
            factor = ratio / other
            entry = theirs_model["recipes"][recipe]["tflite"]["float"]
            add(f"- {LABELS[name]}: tfcompress {ratio:.1f}x at {_err(mine.get('compressed_acc'))} "
                f"error vs {recipe} {other:.1f}x at {_err(entry['acc'])} ({what}; tfmot size = "
                f"gzip of its float .tflite): {factor:.2f}x tfmot's (goal: >= {GOAL_VS_TFMOT:g}x) "
                "-> " + ("MET" if factor >= GOAL_VS_TFMOT else "NOT MET") + scope)
        rest = []
        for recipe, out in (theirs_model or {}).get("recipes", {}).items():
            for kind in ("float", "ptq"):
                if kind in out.get("tflite", {}):
                    rest.append((tfmot_ratio(theirs_model, recipe, kind), recipe, kind,
                                 out["tflite"][kind]["acc"]))
        if rest and ratio is not None:
            best, recipe, kind, acc = max(rest)
            label = "int8" if kind == "ptq" else "float"
            add(f"  Against tfmot's smallest file in this run ({recipe}, gzip {label} .tflite, "
                f"{best:.1f}x at {_err(acc)} error): {ratio / best:.2f}x.")
    return lines


def build_report(args, machine, ours, theirs, tfmot_error, load_before, load_after, started,
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
    add(
        f"MNIST, {ours['_n_train']} training / {ours['_n_test']} test images (pixels / 255). "
        + (f"Every training stage moves each training image by a random offset of up to "
           f"{args.augment_shift} pixel(s) per axis (new offsets every epoch, zero fill; "
           "tfcompress.datasets.random_shift; the paper used no augmentation). "
           if args.augment_shift else "No data augmentation. ")
        + ("Learning rates decay along a cosine to 1% over each stage. "
           if args.lr_decay == "cosine" else "Constant learning rates. ")
        + f"Float training {args.epochs} epoch(s), Adam {args.lr:g}, batch {args.batch_size}, "
        f"seed {args.seed}; pruning {args.prune_epochs} epoch(s) from 0 to the per-layer target "
        f"(polynomial schedule) + {args.retrain_epochs} epoch(s) of retraining at the target, "
        f"Adam {args.lr:g}; weight sharing with k clusters per layer (k: the Clusters column "
        "of each model's layer table; linear "
        f"initialization, sparsity preserved), {args.finetune_epochs} epoch(s) of fine-tuning, "
        f"Adam {args.finetune_lr:g}; the same for both tools. Errors are on the test images "
        "(tfcompress: the model reloaded from the container; .tflite rows: the file run by "
        "ai_edge_litert). Sizes in the paper's KB (1000 bytes); original size = 4 bytes x "
        "parameters (biases included); ratio = original / compressed size. tfcompress's "
        "compressed size is its container file (Huffman-coded indices, sparse offsets, "
        "centroids, biases); tfmot has no such format and is measured, as its guides do, by the "
        f"gzip (level {GZIP_LEVEL}) size of its .tflite file; the gzip sizes of tfcompress's "
        ".tflite files are shown for the same measure. int8 files: full-integer post-training "
        f"quantization calibrated on {REPRESENTATIVE_EXAMPLES} training images, int8 I/O."
    )
    if theirs:
        v, c = theirs["versions"], theirs["config"]
        add("")
        add(
            f"tfmot side (subprocess, TF_USE_LEGACY_KERAS=1): tensorflow-model-optimization "
            f"{v['tensorflow_model_optimization']}, tf_keras {v['tf_keras']}; "
            "prune_low_magnitude (PolynomialDecay per layer) + UpdatePruningStep, strip_pruning, "
            "cluster_weights(CentroidInitialization.LINEAR, preserve_sparsity=True; one of the k "
            "centroids is pinned at zero), strip_clustering, TFLiteConverter.from_keras_model; "
            f"same data ({c['train_examples']} / {c['test_examples']}), epochs, seed; float "
            + ("weights: tfcompress's trained float model." if args.tfmot_from_ours
               else "model trained in the tfmot process.")
            + f" \"{SAME_TARGETS}\" uses tfcompress's per-layer sparsity targets and cluster "
            "count" + (f"; \"{REFERENCE}\" prunes every layer to 92% and uses 64 clusters."
                       if args.tfmot_reference else ".")
        )
    for name in args.models:
        add("")
        lines.extend(model_lines(name, args, ours.get(name), (theirs or {}).get("models", {})
                                 .get(name), tfmot_error))
    seconds = []
    for name in args.models:
        mine = (ours.get(name) or {}).get("seconds", {})
        if mine:
            seconds.append(f"{LABELS[name]} tfcompress: float training "
                           f"{mine.get('train_float', 0):.0f} s, pipeline "
                           f"{mine.get('pipeline', 0):.0f} s")
        theirs_model = (theirs or {}).get("models", {}).get(name) or {}
        for recipe, out in theirs_model.get("recipes", {}).items():
            s = out.get("seconds", {})
            seconds.append(f"{LABELS[name]} {recipe}: prune {s.get('prune', 0):.0f} s, cluster "
                           f"{s.get('cluster', 0):.0f} s")
    if seconds:
        add("Wall time: " + "; ".join(seconds) + ".")
    errors = []
    for name in args.models:
        for kind, text in (ours.get(name) or {}).get("errors", {}).items():
            errors.append(_error_item(f"tfcompress {name} {kind}", text))
        for recipe, text in ((theirs or {}).get("models", {}).get(name) or {}).get(
                "errors", {}).items():
            errors.append(_error_item(f"{name} {recipe}", text))
    if tfmot_error:
        errors.append(_error_item("tfmot", tfmot_error))
    if errors:
        add("")
        add("Errors (full text):")
        add("")
        lines.extend(errors)
    add("")
    add("### Goals (computed from the numbers above)")
    add("")
    lines.extend(goal_lines(args, ours, theirs, tfmot_error, ours["_n_test"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    machine = _load_layers_benchmark()
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()

    (x, y), (xt, yt) = datasets.load("mnist", data_dir=args.data_dir)
    if args.train_examples:
        x, y = x[: args.train_examples], y[: args.train_examples]
    if args.test_examples:
        xt, yt = xt[: args.test_examples], yt[: args.test_examples]
    ours = {"_n_train": len(x), "_n_test": len(xt)}
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
    theirs = tfmot_error = None
    with tempfile.TemporaryDirectory() as work_dir:
        args.work_dir = work_dir
        for name in args.models:
            try:
                ours[name] = run_tfcompress(name, args, ((x, y), (xt, yt)))
            except Exception as exc:  # noqa: BLE001 -- e.g. float training itself failing
                ours[name] = {"errors": {"pipeline": _error_text(exc)}}
                _log(f"tfcompress {name} failed: {_error_text(exc)}")
            keras.backend.clear_session()
        if args.skip_tfmot:
            tfmot_error = "skipped (--skip_tfmot)"
        else:
            theirs, tfmot_error = run_tfmot(args, ours)

    report = build_report(
        args, machine, ours, theirs, tfmot_error, load_before, machine._loadavg(), started,
        time.perf_counter() - t0, (git_before, machine.git_state()),
    )
    print(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"tfcompress": ours, "tfmot": theirs, "tfmot_error": tfmot_error}, f,
                      indent=2, default=str)
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        print(f"[wrote section into {args.output}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
