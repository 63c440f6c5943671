"""The TensorFlow Model Optimization Toolkit (tfmot) side of benchmarks/deep_compression.py.

Legacy Keras only: this script runs with `TF_USE_LEGACY_KERAS=1` in its environment, imports
`tf_keras` and `tensorflow_model_optimization`, and is started in a subprocess by
benchmarks/deep_compression.py so that neither package is ever imported by tfcompress or by the
Keras 3 process. Install the comparison stack with

    pip install tensorflow-model-optimization==0.8.1 tf-keras==2.21.0

tfmot has no Deep Compression pipeline and no entropy-coded container; its closest recipe (the
"collaborative optimization" guides: pruning, then sparsity-preserving clustering, then
TFLite) is run here. For each model (`lenet_300_100`, `lenet5`, rebuilt layer for layer as
`tfcompress/models.py` defines them) it loads MNIST from a keras.datasets-layout .npz file
(pixels / 255, channel axis added), sets the seed, trains the float model (`train`: Adam `--lr`
with cosine decay, batch 128, sparse categorical cross-entropy, `--augment_shift` random shifts,
as tfcompress.deep_compression.train_classifier; or, with `--float_weights DIR`, loads the trained float weights
from DIR/<model>.npz instead), then, for every recipe given with `--recipes`:

    prune      tfmot.sparsity.keras.prune_low_magnitude on each named layer with
               PolynomialDecay(0 -> that layer's target) over `--prune_epochs` (end step a
               multiple of the update frequency, a quarter epoch, so that the target is reached),
               then `--retrain_epochs` at the target; UpdatePruningStep; Adam `--lr`; strip_pruning
    cluster    tfmot.clustering.keras.cluster_weights on each named layer (number_of_clusters from
               the recipe, CentroidInitialization.LINEAR, preserve_sparsity=True: the
               experimental keyword of tfmot 0.8.1, which the public cluster_weights forwards),
               fine-tuned `--finetune_epochs` with Adam `--finetune_lr`; strip_clustering
    convert    TFLiteConverter.from_keras_model: a float .tflite (no optimization) and a
               full-integer int8 PTQ .tflite (Optimize.DEFAULT, 200 training images as the
               representative dataset, int8 input and output)

and measures, as tfmot's own guides do, the size of each .tflite file compressed with gzip
(level 9), plus the test accuracy of the Keras model after each stage and of both files with the
ai_edge_litert interpreter, and per layer the sparsity and the number of distinct non-zero
values of the final kernels.

A recipe is JSON: {"NAME": {"MODEL": {"sparsity": S, "clusters": K}}}, S a fraction for every
Dense/Conv2D layer or {layer name: fraction}, K an int for every Dense/Conv2D layer or {layer
name: k}. The default is tfmot's reference recipe of the comparison: 92% sparsity and 64
clusters in every layer. benchmarks/deep_compression.py also passes tfcompress's own per-layer
targets and cluster counts, so that the two tools compress the same layers to the same sparsity.

It prints one JSON line on stdout:

    {"tool": "tfmot", "versions": {...}, "config": {...}, "models": {"lenet_300_100": {...}, ...}}

with, per model, the parameter count, the float Keras test accuracy, and per recipe the
accuracies, the per-layer report and, for the float and the PTQ file, accuracy, bytes and gzip
bytes. Progress goes to stderr.

Run (from the repository root):

    TF_USE_LEGACY_KERAS=1 python3 benchmarks/tfmot_deep_compression.py \\
        --data /path/to/mnist.npz --epochs 4 --prune_epochs 4 --retrain_epochs 4 \\
        --finetune_epochs 3
"""

import argparse
import gzip
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    sys.exit(
        "benchmarks/tfmot_deep_compression.py must run with TF_USE_LEGACY_KERAS=1 in its "
        "environment (tfmot needs legacy Keras); benchmarks/deep_compression.py sets it."
    )

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

# Shared with the quantization comparison (script folder is on sys.path): the same
# tf_keras LeNet-5, MNIST loader, compile settings, converter and LiteRT runner.
from tfmot_quantization import convert, lenet5, load_mnist, run_tflite, tool_versions

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_random_shift():
    """tfcompress.datasets.random_shift, loaded from its file: that module is NumPy only, but
    importing it through the tfcompress package would import Keras 3 here."""
    path = os.path.join(os.path.dirname(HERE), "tfcompress", "datasets.py")
    spec = importlib.util.spec_from_file_location("tfcompress_datasets_numpy_only", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_shift


random_shift = _load_random_shift()

MODELS = ("lenet_300_100", "lenet5")
REPRESENTATIVE_EXAMPLES = 200
GZIP_LEVEL = 9
REFERENCE_RECIPE = {
    "tfmot reference (92% + 64 clusters)": {
        name: {"sparsity": 0.92, "clusters": 64} for name in MODELS
    }
}


def lenet_300_100(input_shape=(28, 28, 1), num_classes=10):
    """tfcompress.models.lenet_300_100, in tf_keras."""
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(300, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="lenet_300_100")


BUILDERS = {"lenet_300_100": lenet_300_100, "lenet5": lenet5}
EXPECTED_PARAMS = {"lenet_300_100": 266_610, "lenet5": 431_080}  # as tfcompress.models documents


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MNIST .npz (keras.datasets layout)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--epochs", type=int, default=4, help="float training epochs")
    parser.add_argument("--prune_epochs", type=int, default=4,
                        help="epochs while sparsity rises from 0 to the target")
    parser.add_argument("--retrain_epochs", type=int, default=4,
                        help="further epochs at the target sparsity")
    parser.add_argument("--finetune_epochs", type=int, default=3,
                        help="epochs of clustered (weight-shared) fine-tuning")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate of float training, pruning and retraining")
    parser.add_argument("--finetune_lr", type=float, default=1e-4,
                        help="Adam learning rate of the clustered fine-tuning")
    parser.add_argument("--lr_decay", default="cosine", choices=("cosine", "constant"),
                        help="cosine decay to 1%% over each training stage, or constant")
    parser.add_argument("--augment_shift", type=int, default=0,
                        help="random shift of up to this many pixels per image and epoch")
    parser.add_argument(
        "--recipes", default=None,
        help='JSON {"NAME": {"MODEL": {"sparsity": S, "clusters": K}}} (default: 92%% sparsity '
        "and 64 clusters in every layer)",
    )
    parser.add_argument(
        "--train_examples", type=int, default=0,
        help="use only the first N training images (0: all 60000)",
    )
    parser.add_argument(
        "--test_examples", type=int, default=0, help="evaluate on the first N test images (0: all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float_weights", default=None,
        help="folder of <model>.npz trained float weights (numpy.savez of get_weights()): start "
        "from them instead of training the float model here",
    )
    parser.add_argument("--output_dir", default=None, help="save the .tflite files here")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in BUILDERS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    for name in ("epochs", "prune_epochs", "retrain_epochs", "finetune_epochs", "augment_shift"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.recipes is None:
        args.recipes = REFERENCE_RECIPE
    else:
        try:
            args.recipes = json.loads(args.recipes)
        except json.JSONDecodeError as exc:
            parser.error(f"--recipes: not JSON: {exc}")
        if not isinstance(args.recipes, dict) or not all(
            isinstance(r, dict) for r in args.recipes.values()
        ):
            parser.error("--recipes: expected {NAME: {MODEL: {sparsity: S, clusters: K}}}")
    return args


def _log(message):
    print(f"[tfmot] {message}", file=sys.stderr, flush=True)


def _accuracy(model, xt, yt):
    probs = model.predict(xt, batch_size=512, verbose=0)
    return float(np.mean(probs.argmax(-1) == yt))


def gzip_size(blob):
    """Bytes of the file compressed with gzip at level 9 (how tfmot's guides measure size)."""
    return len(gzip.compress(blob, compresslevel=GZIP_LEVEL, mtime=0))


def _compressible(layer):
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))


def _per_layer(setting, model, what):
    """{layer name: value} from a scalar (every Dense/Conv2D layer) or a dict."""
    names = [layer.name for layer in model.layers if _compressible(layer)]
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(names))
        if unknown:
            raise ValueError(f"{what}: unknown layer(s) {unknown} in {model.name}; has {names}")
        return dict(setting)
    return {name: setting for name in names}


def layer_report(model):
    """Per Dense/Conv2D layer: kernel size, sparsity and distinct non-zero kernel values."""
    report = {}
    for layer in model.layers:
        if not _compressible(layer):
            continue
        kernel = layer.kernel.numpy()
        nonzero = kernel[kernel != 0]
        report[layer.name] = {
            "weights": int(kernel.size),
            "sparsity": float(1.0 - nonzero.size / kernel.size),
            "unique_nonzero": int(np.unique(nonzero).size),
            "bias": int(layer.bias.shape[0]) if getattr(layer, "bias", None) is not None else 0,
        }
    return report


def train(model, x, y, epochs, lr, args, seed, callbacks=()):
    """What tfcompress.deep_compression.train_classifier does, in tf_keras: Adam with cosine
    decay to 1% over the stage (or a constant rate), sparse categorical cross-entropy, and with
    --augment_shift one fit per epoch on random_shift(x) from a default_rng(seed) (the same
    seeds as tfcompress: float [seed, 0], pruning [seed, 1], fine-tuning [seed, 2], so both
    tools see the same shifted images)."""
    steps = int(np.ceil(len(x) / args.batch_size)) * epochs
    schedule = lr
    if args.lr_decay == "cosine" and steps:
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if not epochs:
        return
    if not args.augment_shift:
        model.fit(x, y, batch_size=args.batch_size, epochs=epochs, verbose=0,
                  callbacks=list(callbacks))
        return
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        model.fit(random_shift(x, args.augment_shift, rng), y, batch_size=args.batch_size,
                  epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=list(callbacks))


def prune(model, targets, args, steps_per_epoch, data):
    """prune_low_magnitude with PolynomialDecay per layer, pruning + retraining epochs."""
    (x, y) = data
    sparsity = tfmot.sparsity.keras
    frequency = max(1, steps_per_epoch // 4)
    # tfmot updates masks only on steps where (step - begin_step) % frequency == 0, and only up
    # to end_step: an end step that is a multiple of the frequency reaches the target exactly.
    end_step = max(frequency, (steps_per_epoch * args.prune_epochs - 1) // frequency * frequency)

    def schedule(target):
        if args.prune_epochs == 0:  # straight to the target, kept through retraining
            return sparsity.ConstantSparsity(target, begin_step=0, frequency=frequency)
        return sparsity.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=end_step,
            frequency=frequency,
        )

    def wrap(layer):
        target = targets.get(layer.name, 0.0)
        if target > 0.0:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule(float(target)))
        return layer

    # As tfmot's own prune_low_magnitude(model) does: the clone reuses `model`'s layers (the
    # wrappers wrap them), so their trained weights are the starting point and are modified.
    pruned = keras.models.clone_model(model, clone_function=wrap)
    train(pruned, x, y, args.prune_epochs + args.retrain_epochs, args.lr, args,
          seed=[args.seed, 1], callbacks=[sparsity.UpdatePruningStep()])
    return sparsity.strip_pruning(pruned), {"end_step": end_step, "frequency": frequency}


def cluster(model, clusters, args, data):
    """Sparsity-preserving clustering with linear centroid initialization, then fine-tuning."""
    (x, y) = data
    clustering = tfmot.clustering.keras
    linear = clustering.CentroidInitialization.LINEAR

    def wrap(layer):
        k = clusters.get(layer.name)
        if k:
            # preserve_sparsity is tfmot's experimental keyword: the public cluster_weights
            # passes it on to the ClusterWeights wrapper (0.8.1 has no separate experimental
            # cluster_weights in its public API).
            return clustering.cluster_weights(
                layer, number_of_clusters=int(k), cluster_centroids_init=linear,
                preserve_sparsity=True,
            )
        return layer

    # The clone reuses `model`'s layers: each ClusterWeights wrapper initializes its centroids
    # from the pruned kernel of the layer it wraps.
    clustered = keras.models.clone_model(model, clone_function=wrap)
    train(clustered, x, y, args.finetune_epochs, args.finetune_lr, args, seed=[args.seed, 2])
    return clustering.strip_clustering(clustered)


def run_recipe(name, recipe_name, recipe, float_model, args, data, result):
    (x, y), (xt, yt) = data
    out = {"seconds": {}, "tflite": {}}
    targets = _per_layer(recipe.get("sparsity", 0.0), float_model, "sparsity")
    clusters = _per_layer(recipe.get("clusters", 0), float_model, "clusters")
    out["sparsity_target"] = targets
    out["clusters"] = clusters
    steps_per_epoch = int(np.ceil(len(x) / args.batch_size))

    keras.utils.set_random_seed(args.seed)
    # A fresh copy of the trained float model per recipe: pruning modifies its layers in place.
    start_model = BUILDERS[name]()
    start_model.set_weights(float_model.get_weights())
    _log(f"{name} / {recipe_name}: pruning {args.prune_epochs} + retraining "
         f"{args.retrain_epochs} epoch(s), targets {targets}")
    start = time.perf_counter()
    pruned, schedule = prune(start_model, targets, args, steps_per_epoch, (x, y))
    out["seconds"]["prune"] = time.perf_counter() - start
    out["schedule"] = schedule
    out["keras_pruned_acc"] = _accuracy(pruned, xt, yt)
    _log(f"{name} / {recipe_name}: pruned accuracy {out['keras_pruned_acc']:.4f}")

    _log(f"{name} / {recipe_name}: clustering {clusters}, fine-tuning "
         f"{args.finetune_epochs} epoch(s)")
    start = time.perf_counter()
    final = cluster(pruned, clusters, args, (x, y))
    out["seconds"]["cluster"] = time.perf_counter() - start
    out["keras_acc"] = _accuracy(final, xt, yt)
    out["layers"] = layer_report(final)
    out["params"] = int(final.count_params())
    _log(f"{name} / {recipe_name}: clustered accuracy {out['keras_acc']:.4f}")

    for kind, representative in (("float", None), ("ptq", x[:REPRESENTATIVE_EXAMPLES])):
        start = time.perf_counter()
        blob = convert(final, representative)
        convert_seconds = time.perf_counter() - start
        pred = run_tflite(blob, xt).argmax(-1)
        out["tflite"][kind] = {
            "acc": float(np.mean(pred == yt)),
            "bytes": len(blob),
            "gzip_bytes": gzip_size(blob),
            "convert_seconds": convert_seconds,
        }
        entry = out["tflite"][kind]
        _log(f"{name} / {recipe_name}: {kind} .tflite accuracy {entry['acc']:.4f}, "
             f"{entry['bytes']:,} bytes, gzip {entry['gzip_bytes']:,} bytes")
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            safe = "".join(ch if ch.isalnum() else "_" for ch in recipe_name).strip("_")
            with open(os.path.join(args.output_dir, f"tfmot_{name}_{safe}_{kind}.tflite"),
                      "wb") as f:
                f.write(blob)
    result["recipes"][recipe_name] = out


def run_model(name, args, data):
    (x, y), (xt, yt) = data
    result = {"params": None, "seconds": {}, "recipes": {}, "errors": {}}
    keras.utils.set_random_seed(args.seed)
    model = BUILDERS[name]()
    result["params"] = int(model.count_params())
    if result["params"] != EXPECTED_PARAMS[name]:
        raise AssertionError(
            f"{name}: {result['params']} parameters, tfcompress.models documents "
            f"{EXPECTED_PARAMS[name]}: the rebuild differs from tfcompress"
        )
    given = os.path.join(args.float_weights, f"{name}.npz") if args.float_weights else None
    start = time.perf_counter()
    if given and os.path.isfile(given):
        with np.load(given) as arrays:
            model.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
        result["float_weights"] = "given"
        _log(f"{name}: float weights from {given}")
    else:
        result["float_weights"] = "trained"
        _log(f"{name}: float training, {args.epochs} epoch(s)")
        train(model, x, y, args.epochs, args.lr, args, seed=[args.seed, 0])
    result["seconds"]["train_float"] = time.perf_counter() - start
    result["keras_float_acc"] = _accuracy(model, xt, yt)
    _log(f"{name}: float accuracy {result['keras_float_acc']:.4f}")
    for recipe_name, recipe in args.recipes.items():
        if name not in recipe:
            continue
        try:
            run_recipe(name, recipe_name, recipe[name], model, args, data, result)
        except Exception as exc:  # noqa: BLE001 -- a failing recipe is a result, reported as such
            result["errors"][recipe_name] = f"{type(exc).__name__}: {exc}".strip()
            _log(f"{name} / {recipe_name} failed: {result['errors'][recipe_name]}")
        keras.backend.clear_session()
    return result


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    data = load_mnist(args.data, args.train_examples, args.test_examples)
    versions = tool_versions()
    report = {
        "tool": "tfmot",
        "versions": versions,
        "config": {
            "epochs": args.epochs,
            "prune_epochs": args.prune_epochs,
            "retrain_epochs": args.retrain_epochs,
            "finetune_epochs": args.finetune_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "finetune_lr": args.finetune_lr,
            "seed": args.seed,
            "gzip_level": GZIP_LEVEL,
            "train_examples": len(data[0][0]),
            "test_examples": len(data[1][0]),
            "recipes": args.recipes,
        },
        "models": {},
    }
    for name in args.models:
        report["models"][name] = run_model(name, args, data)
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
