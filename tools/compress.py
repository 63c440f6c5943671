"""The main job: train a model, profile it, export it, and check the exported file.

Stages: train -> profile -> evaluate -> save `.keras` -> export float `.tflite`
-> verify it against Keras with LiteRT -> quantize (QAT fine-tuning with
BatchNorm folding, or post-training calibration) -> integer-only int8 `.tflite`
-> verify the int8 file against the Keras model it came from -> report.

With `--recipe=channel_pruning` the stages after training are structured
pruning's: optional sparsity training (group lasso on the kernels, or L1 on
BatchNorm's gamma for Network Slimming) -> `prune_channels` to a target share of
the multiply-adds (or a sparsity) by a criterion -> fine-tuning -> int8 export ->
a before/after table (params, MACs, accuracy, file sizes, LiteRT latency), a JSON
report and PNGs of the channels kept per group and of every stage's training.

With `--recipe=low_rank` the stages after training are low-rank decomposition's:
`decompose_model` (SVD for Dense / 1x1, Tucker-2 or CP for k x k; ranks by --energy or
EVBMF) -> BatchNorm recalibration -> fine-tuning -> int8 export -> a before/after table
(params, MACs, accuracy, file sizes, LiteRT latency), a JSON report and PNGs of the
singular-value spectra (chosen ranks marked) and of every stage's training.

With `--recipe=deep_compression` the stages after training are Deep
Compression's (Han et al., ICLR 2016): prune with retraining -> k-means weight
sharing with centroid fine-tuning -> Huffman-coded container (reloaded and
checked bit-exact) -> int8 `.tflite` (post-training, from the compressed
weights) -> a before/after table, a JSON report, and PNG plots (weight
histogram before/after clustering, sparsity per layer).

Usage:
    python tools/compress.py                       # small_cnn on the shipped digits
    python tools/compress.py --recipe=deep_compression --model=lenet_300_100
    python tools/compress.py --model=resnet20 --conv=adder --epochs=5
    python tools/compress.py --model=lenet5 --dataset=mnist --data_dir=/path/to/npz
    python tools/compress.py --quantize=ptq          # int8 by calibration, no fine-tuning
    python tools/compress.py --recipe=channel_pruning --criterion=fpgm --target_macs=0.5
    python tools/compress.py --recipe=low_rank --energy=0.9
    python tools/compress.py --recipe=channel_pruning --load=out/small_cnn.keras
        --sparsity_training=bn_l1 --criterion=bn_scale     (one command line)

Flags that do not apply to the chosen recipe are an error, not ignored.
"""

import os

if __package__:  # tfcompress <command>: the tools are the package tfcompress_tools
    from . import _quiet
else:  # python tools/<command>.py
    import _quiet
_quiet.silence()

import json
import sys
import time

from absl import flags

from tfcompress.fileio import write_atomic

MODELS = ("small_cnn", "lenet_300_100", "lenet5", "ghostnet", "resnet20")
CONVS = ("conv", "ghost", "shift", "adder", "binary")

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "small_cnn", MODELS, "Model to build and train.")
flags.DEFINE_enum("conv", "conv", CONVS, "Convolution type of resnet20's blocks.")
flags.DEFINE_string("dataset", "digits", "digits (shipped, offline), mnist or fashion_mnist.")
flags.DEFINE_string("data_dir", None, "Folder with <dataset>.npz; default $TFCOMPRESS_DATA_DIR.")
flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=0)
flags.DEFINE_integer("batch_size", 64, "Training batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_float("width", 1.0, "Width multiplier of ghostnet.", lower_bound=0.0)
flags.DEFINE_string("output_dir", "compress_out", "Where to write the results.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("verify_examples", 1000, "Test examples used to compare .tflite with Keras.")
flags.DEFINE_enum("quantize", "qat", ("qat", "ptq", "none"),
                  "int8 stage: quantization-aware fine-tuning, post-training, or none.")
flags.DEFINE_integer("qat_epochs", 2, "QAT fine-tuning epochs.", lower_bound=0)
flags.DEFINE_float("qat_learning_rate", 1e-4, "QAT fine-tuning Adam learning rate.",
                   lower_bound=0.0)
flags.DEFINE_integer("calibration_examples", 200, "Training inputs used to calibrate int8.",
                     lower_bound=1)
flags.DEFINE_enum("recipe", "default",
                  ("default", "deep_compression", "channel_pruning", "low_rank"),
                  "default: train, export, quantize. deep_compression: prune, share "
                  "weights, Huffman-code, then export int8. channel_pruning: remove "
                  "channels (a smaller, faster model), fine-tune, export int8. low_rank: "
                  "decompose layers (SVD, Tucker-2, CP), fine-tune, export int8.")
flags.DEFINE_float("energy", None, "low_rank: keep the smallest ranks whose singular values "
                   "hold this fraction of the squared spectrum (default: EVBMF ranks).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_enum("rank_selection", "vbmf", ("vbmf",), "low_rank: how ranks are chosen "
                  "without --energy (empirical variational Bayesian matrix factorization).")
flags.DEFINE_enum("decomposition", "auto", ("auto", "svd", "tucker2", "cp"),
                  "low_rank: SVD for Dense / 1x1 and Tucker-2 for k x k (auto), or one method.")
flags.DEFINE_string("load", None, "A trained .keras model to start from instead of training "
                    "(--model and --epochs are then not used).")
flags.DEFINE_enum("criterion", "l1", ("l1", "l2", "fpgm", "bn_scale", "taylor", "dcp", "random"),
                  "channel_pruning: how channels are scored.")
flags.DEFINE_float("target_macs", 0.5, "channel_pruning: fraction of the multiply-adds to keep "
                   "(ignored with --channel_sparsity).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("channel_sparsity", None, "channel_pruning: fraction of the channels of "
                   "every group to remove instead of a MACs target.", lower_bound=0.0,
                   upper_bound=0.999)
flags.DEFINE_integer("round_to", 1, "channel_pruning: keep multiples of this many channels.",
                     lower_bound=1)
flags.DEFINE_enum("sparsity_training", "none", ("none", "group_lasso", "bn_l1"),
                  "channel_pruning: train first with group lasso on the kernels or L1 on "
                  "BatchNorm's gamma (Network Slimming).")
flags.DEFINE_float("sparsity_strength", 1e-4, "channel_pruning: strength of the sparsity "
                   "penalty.", lower_bound=0.0)
flags.DEFINE_integer("sparsity_epochs", 3, "channel_pruning: epochs of sparsity training.",
                     lower_bound=0)
flags.DEFINE_integer("importance_examples", 512, "channel_pruning: training examples the "
                     "taylor / dcp criteria score with.", lower_bound=1)
flags.DEFINE_float("sparsity", None, "deep_compression: fraction of weights pruned in every "
                   "layer (default: tuned per-layer targets for the LeNets, else 0.9).",
                   lower_bound=0.0, upper_bound=0.999)
flags.DEFINE_integer("clusters", None, "deep_compression: shared weights per layer (default: "
                     "tuned per-layer counts for the LeNets, else 32).", lower_bound=2)
flags.DEFINE_enum("cluster_init", "linear", ("linear", "density", "random", "kmeans++"),
                  "deep_compression: centroid initialization.")
flags.DEFINE_integer("prune_epochs", 4, "deep_compression: epochs to reach the sparsity.",
                     lower_bound=0)
flags.DEFINE_integer("retrain_epochs", 8, "deep_compression: retraining epochs at the sparsity.",
                     lower_bound=0)
flags.DEFINE_integer("finetune_epochs", 3, "deep_compression: centroid fine-tuning epochs; "
                     "channel_pruning: fine-tuning epochs after pruning.", lower_bound=0)
flags.DEFINE_enum("lr_decay", "cosine", ("cosine", "constant"),
                  "deep_compression: learning rate of each stage, cosine decay to 1% or constant.")
flags.DEFINE_integer("augment_shift", 0, "deep_compression: move each training image by a random "
                     "offset of up to this many pixels per axis, new every epoch (1 for MNIST).",
                     lower_bound=0)


DEFAULT, DEEP, CHANNELS, LOW_RANK = ("--recipe=default", "--recipe=deep_compression",
                                     "--recipe=channel_pruning", "--recipe=low_rank")
# Flags that apply to some recipes only; the others apply to every recipe.
RECIPE_FLAGS = {
    "qat_epochs": (DEFAULT, CHANNELS, LOW_RANK),
    "qat_learning_rate": (DEFAULT, CHANNELS, LOW_RANK),
    "energy": (LOW_RANK,), "rank_selection": (LOW_RANK,), "decomposition": (LOW_RANK,),
    "criterion": (CHANNELS,), "target_macs": (CHANNELS,), "channel_sparsity": (CHANNELS,),
    "round_to": (CHANNELS,), "sparsity_training": (CHANNELS,),
    "sparsity_strength": (CHANNELS,), "sparsity_epochs": (CHANNELS,),
    "importance_examples": (CHANNELS,),
    "sparsity": (DEEP,), "clusters": (DEEP,), "cluster_init": (DEEP,),
    "prune_epochs": (DEEP,), "retrain_epochs": (DEEP,), "lr_decay": (DEEP,),
    "augment_shift": (DEEP,), "finetune_epochs": (DEEP, CHANNELS, LOW_RANK),
}


def check_flags(argv):
    """Every flag checked before any work (`tfcompress.cli.run` calls it)."""
    from tfcompress import cli

    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r}; every input is a --flag.")
    cli.check_flags_apply(FLAGS, RECIPE_FLAGS, f"--recipe={FLAGS.recipe}")
    if FLAGS.quantize != "qat" and FLAGS.recipe != "deep_compression":
        cli.check_flags_apply(FLAGS, {"qat_epochs": ("--quantize=qat",),
                                      "qat_learning_rate": ("--quantize=qat",)},
                              f"--quantize={FLAGS.quantize}")
    if FLAGS["conv"].present and FLAGS.model != "resnet20":
        raise cli.UsageError(f"--conv={FLAGS.conv} applies to --model=resnet20 only; "
                             f"received --model={FLAGS.model}.")
    if FLAGS["width"].present and FLAGS.model != "ghostnet":
        raise cli.UsageError(f"--width={FLAGS.width} applies to --model=ghostnet only; "
                             f"received --model={FLAGS.model}.")
    if FLAGS.load:
        for name in ("model", "epochs", "conv", "width"):
            if FLAGS[name].present:
                raise cli.UsageError(f"--{name} does not apply with --load (the loaded "
                                     "model is used as it is).")
        if not os.path.isfile(FLAGS.load):
            raise cli.UsageError(f"--load={FLAGS.load}: no such file.")
    if FLAGS["energy"].present and FLAGS["rank_selection"].present:
        raise cli.UsageError("give --energy or --rank_selection, not both.")
    if FLAGS.energy is not None and FLAGS.energy <= 0:
        raise cli.UsageError(f"--energy={FLAGS.energy}: must be in (0, 1].")
    if FLAGS["channel_sparsity"].present and FLAGS["target_macs"].present:
        raise cli.UsageError("give --channel_sparsity or --target_macs, not both.")
    if FLAGS.width <= 0:
        raise cli.UsageError(f"--width={FLAGS.width}: must be > 0.")
    if FLAGS.verify_examples < 1:
        raise cli.UsageError(f"--verify_examples={FLAGS.verify_examples}: must be >= 1.")
    cli.check_dataset(FLAGS.dataset, FLAGS.data_dir)


def check_clusters(model):
    """--clusters against the layers it will cluster, before any training."""
    from tfcompress import cli

    if FLAGS.recipe != "deep_compression" or FLAGS.clusters is None:
        return
    import math

    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        size = math.prod(kernel.shape) if kernel is not None else None
        if size is not None and FLAGS.clusters > size:
            raise cli.UsageError(
                f"--clusters={FLAGS.clusters}: layer {layer.name!r} has only {size} "
                f"weights; allowed: 2 to {size}."
            )


def check_batchnorm(model, x, y, what):
    """Warns, and recalibrates BatchNorm, when inference mode is far below training
    mode on the same training examples (stale moving statistics); returns True when
    it recalibrated."""
    import tfcompress

    accuracies = tfcompress.recalibration.mode_accuracies(model, x, y)
    if accuracies["training"] - accuracies["inference"] <= 0.1:
        return False
    print(f"warning: {what}: accuracy on training examples is {accuracies['inference']:.4f} "
          f"in inference mode but {accuracies['training']:.4f} in training mode: stale "
          "BatchNormalization statistics; recomputing them over the training data "
          "(tfcompress.recalibrate_batchnorm)", file=sys.stderr)
    tfcompress.recalibrate_batchnorm(model, x)
    after = tfcompress.recalibration.mode_accuracies(model, x, y)
    print(f"      after recalibration: {after['inference']:.4f} in inference mode")
    return True


def build_model(name, input_shape, num_classes, conv="conv", width=1.0):
    """Builds one of the reference models by name."""
    from tfcompress import models

    if name == "resnet20":
        return models.resnet20(conv=conv, input_shape=input_shape, num_classes=num_classes)
    if name == "ghostnet":
        return models.ghostnet(width=width, input_shape=input_shape, num_classes=num_classes)
    return getattr(models, name)(input_shape=input_shape, num_classes=num_classes)


_START = time.perf_counter()
OUT = None  # the run's `tfcompress.cli.Outputs` (staged files, moved in place on success)


def fit_verbose():
    """Keras' progress bar on a terminal; one line per epoch in a log or a pipe."""
    return 1 if sys.stdout.isatty() else 2


def stage(text):
    """Prints one stage line with the time since the job started."""
    print(f"{text}   [{time.perf_counter() - _START:.1f} s]", flush=True)


def main(argv):
    global OUT
    from tfcompress import cli

    with cli.Outputs(FLAGS.output_dir) as OUT:
        _main()
    print()
    print(OUT.listing())


def _main():
    import keras

    from tfcompress import datasets, export, profiling

    keras.utils.set_random_seed(FLAGS.seed)
    stem = FLAGS.model + (f"_{FLAGS.conv}" if FLAGS.model == "resnet20" else "")

    stage(f"[1/7] data: {FLAGS.dataset}")
    (x_train, y_train), (x_test, y_test) = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    print(f"      train {x_train.shape}, test {x_test.shape}, {num_classes} classes")

    if FLAGS.load:
        import tfcompress  # noqa: F401  (registers the tfcompress layers)

        try:
            model = keras.saving.load_model(FLAGS.load)
        except Exception as error:  # noqa: BLE001 - keras raises several kinds
            raise SystemExit(f"--load={FLAGS.load}: not a valid .keras archive ({error})") \
                from None
        stem = os.path.splitext(os.path.basename(FLAGS.load))[0]
        stage(f"[2/7] model: loaded {FLAGS.load}")
    else:
        stage(f"[2/7] model: {stem}")
        model = build_model(FLAGS.model, x_train.shape[1:], num_classes, FLAGS.conv, FLAGS.width)
    check_clusters(model)
    prof = profiling.profile(model)
    print(profiling.format_profile(prof))

    history = {}
    if FLAGS.load:
        stage("[3/7] train: skipped (--load)")
        model.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        train_seconds = 0.0
    else:
        stage(f"[3/7] train: {FLAGS.epochs} epochs")
        model.compile(
            optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        history = model.fit(
            x_train, y_train,
            batch_size=FLAGS.batch_size,
            epochs=FLAGS.epochs,
            validation_split=0.1,
            verbose=fit_verbose(),
        ).history
        train_seconds = time.perf_counter() - start
    recalibrated = check_batchnorm(model, x_train, y_train, "the trained model")
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"      test accuracy {test_acc:.4f} (loss {test_loss:.4f}) after {train_seconds:.1f} s")

    if FLAGS.recipe == "channel_pruning":
        channel_pruning_stage(model, stem, (x_train, y_train), (x_test, y_test), history)
        return
    if FLAGS.recipe == "low_rank":
        low_rank_stage(model, stem, (x_train, y_train), (x_test, y_test), history)
        return
    if FLAGS.recipe == "deep_compression":
        deep_compression_stage(model, stem, (x_train, y_train), (x_test, y_test), history)
        return

    stage("[4/7] save .keras")
    keras_path = OUT.path(stem + ".keras", f"the trained float model ({stem}_float.tflite "
                          "was exported from it)")
    model.save(keras_path)

    stage("[5/7] export float .tflite")
    tflite = export.to_tflite(model, mode="float32")
    tflite_path = OUT.path(stem + "_float.tflite", f"float32 TFLite of {stem}.keras")
    write_atomic(tflite_path, tflite)

    stage("[6/7] verify .tflite against Keras with LiteRT")
    check = export.verify(tflite, model, x_test[: FLAGS.verify_examples])
    lite_probs, _ = export.run_tflite(tflite, x_test)
    tflite_acc = float((lite_probs.argmax(-1) == y_test).mean())

    int8 = quantize_stage(model, stem, x_train, y_train, x_test, y_test)
    if int8.get("history"):
        int8["qat_history"] = int8.pop("history")

    plot_path = OUT.path(stem + "_training.png", "training curves of every stage")
    stages = {"float training": history}
    if int8.get("qat_history"):
        stages["QAT"] = int8.pop("qat_history")
    if not plot_stages(stages, f"{stem} on {FLAGS.dataset}: training of every stage",
                       plot_path):
        OUT.discard(os.path.basename(plot_path))
    qat_model = int8.pop("model", None)
    if qat_model is not None:
        bits_path = OUT.path(stem + "_bits.png", "weight storage per layer, float32 vs int8")
        int8_prof = profiling.profile(qat_model)
        kib = [p["total"]["param_bits"] / 8192 for p in (prof, int8_prof)]
        title = (f"{stem} on {FLAGS.dataset}: weights {kib[0]:.1f} KiB as float32, "
                 f"{kib[1]:.1f} KiB as int8")
        if not plot_bits(prof, int8_prof, title, bits_path):
            OUT.discard(os.path.basename(bits_path))
    report = {
        "model": stem,
        "dataset": FLAGS.dataset,
        "epochs": FLAGS.epochs,
        "train_seconds": round(train_seconds, 2),
        "batchnorm_recalibrated": recalibrated,
        "keras_test_accuracy": float(test_acc),
        "tflite_test_accuracy": tflite_acc,
        "params": prof["total"]["params"],
        "macs": prof["total"]["macs"],
        "adds": prof["total"]["adds"],
        "keras_bytes": os.path.getsize(keras_path),
        "tflite_bytes": len(tflite),
        "parity": check,
        "int8": {k: v for k, v in int8.items() if k != "path"},
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(report, indent=2))

    rows = [
        ("model", stem),
        ("parameters", f"{report['params']:,}"),
        ("multiply-adds / example", f"{report['macs']:,}"),
        ("additions / example", f"{report['adds']:,}"),
        ("Keras test accuracy", f"{test_acc:.4f}"),
        ("TFLite test accuracy", f"{tflite_acc:.4f}"),
        ("TFLite vs Keras max |diff|", f"{check['max_abs_diff']:.2e}"),
        ("TFLite vs Keras argmax agreement", f"{check['argmax_agreement']:.4f}"),
        (".keras bytes", f"{report['keras_bytes']:,}"),
        (".tflite bytes", f"{report['tflite_bytes']:,}"),
    ]
    if "error" in int8:
        rows.append((f"int8 ({FLAGS.quantize})", "FAILED: " + int8["error"]))
    elif int8:
        rows += [
            (f"int8 ({FLAGS.quantize}) test accuracy", f"{int8['test_accuracy']:.4f}"),
            ("int8 .tflite bytes", f"{int8['bytes']:,}"),
            ("int8 vs Keras within 1 step", f"{int8['parity'].get('within_1_step', 0):.4f}"),
            ("int8 vs Keras argmax agreement", f"{int8['parity']['argmax_agreement']:.4f}"),
        ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


def plot_bits(float_profile, int8_profile, title, path):
    """Bar chart of each layer's weight storage (KiB) in the float model and in the
    int8 (QAT) model, layers matched by name; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    def per_layer(profile):
        rows = {}
        for row in profile["layers"]:
            name = row["name"].removeprefix("quant_")
            if row.get("param_bits"):
                rows[name] = rows.get(name, 0) + row["param_bits"] / 8 / 1024
        return rows

    before, after = per_layer(float_profile), per_layer(int8_profile)
    names = list(before) + [n for n in after if n not in before]
    positions = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.5))
    ax.bar(positions - 0.2, [before.get(n, 0) for n in names], 0.4, label="float32",
           color="tab:gray")
    ax.bar(positions + 0.2, [after.get(n, 0) for n in names], 0.4, label="int8 (QAT)",
           color="tab:blue")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("weight storage (KiB)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_weights(before, after, layer_name, path, title=None):
    """Histogram of one layer's non-zero weights before/after weight sharing (the
    paper's Figure 5); returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    before = before[before != 0]
    after = after[after != 0]
    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    ax_b.hist(before, bins=100, color="tab:blue")
    ax_b.set_title(f"{layer_name}: {before.size:,} non-zero weights after pruning")
    values, counts = np.unique(after, return_counts=True)
    ax_a.bar(values, counts, width=(np.ptp(before) or 1.0) / 150, color="tab:orange")
    ax_a.set_title(f"after weight sharing: {values.size} distinct values")
    for ax in (ax_b, ax_a):
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_sparsity(rows, path, title="sparsity per layer"):
    """Bar chart of the fraction of weights pruned per layer; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [row["layer"] for row in rows]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(names)), 4))
    bars = ax.bar(names, [100 * row["sparsity"] for row in rows], color="tab:green")
    for bar, row in zip(bars, rows):
        ax.annotate(f"{100 * row['sparsity']:.1f}%", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel("weights pruned (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def deep_compression_stage(model, stem, train, test, history):
    """Prune, share weights, code, export int8, and report (Deep Compression)."""
    import numpy as np

    from tfcompress import coding, deep_compression, export

    x_train, _ = train
    x_test, y_test = test
    sparsity, clusters = deep_compression.default_targets(FLAGS.model)
    if FLAGS.sparsity is not None:
        sparsity = FLAGS.sparsity
    if FLAGS.clusters is not None:
        clusters = FLAGS.clusters
    config = deep_compression.DeepCompressionConfig(
        sparsity=sparsity, clusters=clusters, cluster_init=FLAGS.cluster_init,
        prune_epochs=FLAGS.prune_epochs, retrain_epochs=FLAGS.retrain_epochs,
        finetune_epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, learning_rate_decay=FLAGS.lr_decay,
        augment_shift=FLAGS.augment_shift, seed=FLAGS.seed,
    )
    stage(f"[4/7] prune -> retrain -> share weights ({clusters} clusters, "
          f"{FLAGS.cluster_init} init) -> fine-tune")
    result = deep_compression.run(model, train, test, config, verbose=2)

    stage("[5/7] Huffman-coded container")
    container = OUT.path(stem + ".tfcz", "the Huffman-coded container (tools/inspect_file.py "
                         "reads it; tools/evaluate.py --model= evaluates it)")
    coding.save_compressed(result.model, container)
    restored = coding.load_compressed(container)
    bit_exact = all(
        np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
        for a, b in zip(result.model.get_weights(), restored.get_weights())
    )
    if not bit_exact:
        raise SystemExit(f"{container}: the reloaded weights differ from the saved ones.")
    print(result.report)
    result.model.save(OUT.path(stem + "_compressed.keras", "the pruned and clustered Keras "
                               f"model ({stem}.tfcz and {stem}_int8.tflite hold it)"))

    stage("[6/7] int8 .tflite (post-training, from the compressed weights)")
    int8 = {}
    if FLAGS.quantize != "none":
        tflite = export.to_tflite(result.model, x_train[: FLAGS.calibration_examples])
        int8_path = OUT.path(stem + "_int8.tflite", "integer-only int8 file, post-training "
                             f"from {stem}_compressed.keras")
        write_atomic(int8_path, tflite)
        parity = export.verify(tflite, result.model, x_test[: FLAGS.verify_examples])
        probs, _ = export.run_tflite(tflite, x_test)
        int8 = {"path": int8_path, "bytes": len(tflite),
                "test_accuracy": float((probs.argmax(-1) == y_test).mean()), "parity": parity}
        print(f"      int8 test accuracy {int8['test_accuracy']:.4f}, argmax agreement with "
              f"Keras {parity['argmax_agreement']:.4f}")

    stage("[7/7] report")
    float_tflite = export.to_tflite(model, mode="float32")
    float_weights = [w for layer in model.layers for w in layer.get_weights()]
    params = int(sum(w.size for w in float_weights))
    nonzero_before = int(sum(np.count_nonzero(w) for w in float_weights))
    nonzero_after = int(sum(np.count_nonzero(w) for w in result.model.get_weights()))
    container_bytes = os.path.getsize(container)
    totals = result.report.to_dict()["total"]
    rows = [
        ("", "before", "after"),
        ("test accuracy", f"{result.accuracy['float']:.4f}", f"{result.accuracy['clustered']:.4f}"),
        ("parameters", f"{params:,}", f"{params:,}"),
        ("non-zero parameters", f"{nonzero_before:,}", f"{nonzero_after:,}"),
        ("bits per parameter", "32.00", f"{8 * container_bytes / params:.2f}"),
        ("stored bytes (float32 / container)", f"{4 * params:,}", f"{container_bytes:,}"),
        (".tflite bytes (float32 / int8)", f"{len(float_tflite):,}",
         f"{int8['bytes']:,}" if int8 else "-"),
        ("compression ratio", "1.0x", f"{4 * params / container_bytes:.1f}x"),
    ]
    if int8:
        rows.insert(2, ("int8 .tflite test accuracy", "-", f"{int8['test_accuracy']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))

    largest = max((row for row in result.sparsity), key=lambda row: row["size"])

    def weight_of(compressed_model):
        layer = compressed_model.get_layer(largest["layer"])
        return np.asarray(next(v for v in layer.weights if v.name == largest["weight"]))

    before_kernel, after_kernel = weight_of(result.pruned_model), weight_of(result.model)
    hist_path = OUT.path(stem + "_weights.png", "histogram of the largest layer's weights "
                         "before and after weight sharing")
    sparsity_path = OUT.path(stem + "_sparsity.png", "weights pruned per layer")
    training_path = OUT.path(stem + "_training.png", "training curves of every stage")
    stages = {"float training": history, **result.histories}
    for path, written in (
        (hist_path, plot_weights(before_kernel, after_kernel, largest["layer"], hist_path,
                                 f"{stem} on {FLAGS.dataset}: weight sharing, "
                                 f"{clusters if isinstance(clusters, int) else 'per-layer'}"
                                 " clusters")),
        (sparsity_path, plot_sparsity(result.sparsity, sparsity_path,
                                      f"{stem} on {FLAGS.dataset}: weights pruned per layer")),
        (training_path, plot_stages(stages, f"{stem} on {FLAGS.dataset}: training of every "
                                    "stage", training_path)),
    ):
        if not written:
            OUT.discard(os.path.basename(path))
    report = {
        "model": stem,
        "recipe": "deep_compression",
        "dataset": FLAGS.dataset,
        "config": {k: v for k, v in vars(config).items()},
        "accuracy": result.accuracy,
        "params": params,
        "nonzero_params": {"before": nonzero_before, "after": nonzero_after},
        "container_bytes": container_bytes,
        "float32_bytes": 4 * params,
        "compression_ratio": 4 * params / container_bytes,
        "float_tflite_bytes": len(float_tflite),
        "compression_report": result.report.to_dict(),
        "report_total": totals,
        "sparsity": result.sparsity,
        "seconds": result.seconds,
        "int8": {k: v for k, v in int8.items() if k != "path"},
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(report, indent=2, default=str))


def plot_channels(report, title, path):
    """Bar chart of the channels of every prunable group, before and kept; False
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = [g for g in report.groups if g["prunable"]]
    names = [g["name"] for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
    positions = range(len(names))
    ax.bar(positions, [g["channels"] for g in groups], color="lightgray", label="before")
    ax.bar(positions, [g["kept"] for g in groups], color="tab:blue", label="kept")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_stages(stages, title, path):
    """Loss and accuracy of every training stage, one after the other (epochs from 1,
    each stage shaded and named); False without matplotlib or without any epoch."""
    stages = {name: h for name, h in stages.items() if h and h.get("loss")}
    if not stages:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    start = 0
    for k, (name, history) in enumerate(stages.items()):
        color = colors[k % len(colors)]
        count = len(history["loss"])
        epochs = range(start + 1, start + 1 + count)
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.axvspan(start + 0.5, start + count + 0.5, color=color, alpha=0.07)
            ax.text(start + 0.5 + count / 2, 1.01, name, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color=color)
            if key in history:
                ax.plot(epochs, history[key], marker="o", markersize=3, color=color,
                        label=f"{name}: train")
            if "val_" + key in history:
                ax.plot(epochs, history["val_" + key], linestyle="--", marker="x",
                        markersize=3, color=color, label=f"{name}: validation")
        start += count
    for ax, label in ((ax_loss, "loss (cross-entropy)"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch (counted over all stages, from 1)")
        ax.set_ylabel(label)
        ax.set_xlim(0.5, start + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def channel_pruning_stage(model, stem, train, test, history):
    """Sparsity training (optional) -> prune channels -> fine-tune -> int8, and report."""
    import keras
    import numpy as np

    import tfcompress
    from tfcompress import export, profiling, pruning

    x_train, y_train = train
    x_test, y_test = test
    stages = {"float training": history}

    def compiled(m, learning_rate):
        m.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    base = model
    if FLAGS.sparsity_training != "none" and FLAGS.sparsity_epochs:
        if FLAGS.sparsity_training == "group_lasso":
            regularizer, target = pruning.GroupLasso(FLAGS.sparsity_strength), "kernel"
        else:
            regularizer, target = keras.regularizers.L1(FLAGS.sparsity_strength), "gamma"
        stage(f"[4/7] sparsity training: {FLAGS.sparsity_training} "
              f"(strength {FLAGS.sparsity_strength}) for {FLAGS.sparsity_epochs} epochs")
        base = compiled(pruning.with_regularizer(model, regularizer, target), FLAGS.learning_rate)
        stages["sparsity training"] = base.fit(
            x_train, y_train, batch_size=FLAGS.batch_size, epochs=FLAGS.sparsity_epochs,
            validation_split=0.1, verbose=fit_verbose()).history
    else:
        stage("[4/7] sparsity training: none")
    data = None
    if FLAGS.criterion in ("taylor", "dcp"):
        data = (x_train[: FLAGS.importance_examples], y_train[: FLAGS.importance_examples])
    if FLAGS.channel_sparsity is not None:
        goal, target = f"sparsity {FLAGS.channel_sparsity}", None
    else:
        goal, target = f"{FLAGS.target_macs} of the MACs", {"macs": FLAGS.target_macs}
    stage(f"[5/7] prune channels: criterion {FLAGS.criterion}, keep {goal}")
    try:
        pruned = pruning.prune_channels(
            base, FLAGS.channel_sparsity, criterion=FLAGS.criterion, target=target, data=data,
            round_to=FLAGS.round_to, seed=FLAGS.seed,
        )
    except ValueError as error:
        raise SystemExit(f"channel pruning failed: {error}") from None
    report = pruned.channel_pruning_report
    print(report)
    acc_pruned = float(compiled(pruned, FLAGS.learning_rate).evaluate(
        x_test, y_test, batch_size=256, verbose=0)[1])
    print(f"      test accuracy right after pruning: {acc_pruned:.4f}")
    # Removing channels changes what every later BatchNormalization sees: its moving
    # statistics are recomputed before fine-tuning starts.
    tfcompress.recalibrate_batchnorm(pruned, x_train[: FLAGS.importance_examples * 4])
    acc_recalibrated = float(pruned.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    print(f"      after BatchNorm recalibration: {acc_recalibrated:.4f}")
    stage(f"[6/7] fine-tune: {FLAGS.finetune_epochs} epochs")
    if FLAGS.finetune_epochs:
        stages["fine-tune"] = pruned.fit(
            x_train, y_train, batch_size=FLAGS.batch_size, epochs=FLAGS.finetune_epochs,
            validation_split=0.1, verbose=fit_verbose()).history
    acc_after = float(pruned.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    acc_before = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    keras_path = OUT.path(stem + "_pruned.keras", "the channel-pruned, fine-tuned float model")
    pruned.save(keras_path)
    int8 = quantize_stage(pruned, stem + "_pruned", x_train, y_train, x_test, y_test)
    if int8.get("history"):
        stages["QAT"] = int8.pop("history")
    int8.pop("model", None)

    calibration = x_train[: FLAGS.calibration_examples]
    files = {"before": {"float": export.to_tflite(model, mode="float32")},
             "after": {"float": export.to_tflite(pruned, mode="float32")}}
    try:
        files["before"]["int8"] = export.to_tflite(model, calibration)
    except ValueError:
        pass
    if int8.get("path"):
        with open(int8["path"], "rb") as f:
            files["after"]["int8"] = f.read()
    for side, kinds in files.items():
        for kind, blob in kinds.items():
            if side == "after" and kind == "int8":
                continue
            source = f"{stem}_pruned.keras" if side == "after" else "the unpruned model"
            how = "float32 TFLite" if kind == "float" else "post-training int8"
            name = f"{stem}{'_pruned' if side == 'after' else ''}_{kind}.tflite"
            write_atomic(OUT.path(name, f"{how} of {source}"), blob)
    latency = {side: {kind: export.measure_latency(blob, runs=100)["median_ms"]
                      for kind, blob in kinds.items()} for side, kinds in files.items()}
    before_prof, after_prof = profiling.profile(model)["total"], profiling.profile(pruned)["total"]

    def ratio(a, b):
        return f"{b / a:.3f}x" if a else "-"

    rows = [("", "before", "after", "after / before")]
    for label, a, b in (
        ("parameters", before_prof["params"], after_prof["params"]),
        ("multiply-adds / example", before_prof["macs"], after_prof["macs"]),
        ("float .tflite bytes", len(files["before"]["float"]), len(files["after"]["float"])),
        ("int8 .tflite bytes", len(files["before"].get("int8", b"")),
         len(files["after"].get("int8", b""))),
    ):
        rows.append((label, f"{a:,}", f"{b:,}", ratio(a, b)))
    rows.append(("Keras test accuracy", f"{acc_before:.4f}", f"{acc_after:.4f}",
                 f"{100 * (acc_after - acc_before):+.2f} pt"))
    if int8.get("test_accuracy") is not None:
        rows.append(("int8 .tflite test accuracy", "-", f"{int8['test_accuracy']:.4f}", ""))
    for kind in ("float", "int8"):
        a, b = latency["before"].get(kind), latency["after"].get(kind)
        if a is not None and b is not None:
            rows.append((f"LiteRT {kind} latency, batch 1 (ms)", f"{a:.3f}", f"{b:.3f}",
                         ratio(a, b)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))

    title = (f"{stem} on {FLAGS.dataset}: {FLAGS.criterion}, MACs "
             f"{before_prof['macs']:,} -> {after_prof['macs']:,}")
    channels_png = OUT.path(stem + "_channels.png", "channels kept per group")
    stages_png = OUT.path(stem + "_training.png", "training curves of every stage")
    for path, written in ((channels_png, plot_channels(report, title, channels_png)),
                          (stages_png, plot_stages(stages, f"{stem} on {FLAGS.dataset}: "
                                                   "training of every stage", stages_png))):
        if not written:
            OUT.discard(os.path.basename(path))
    summary = {
        "model": stem,
        "recipe": "channel_pruning",
        "dataset": FLAGS.dataset,
        "criterion": FLAGS.criterion,
        "target": target, "channel_sparsity": FLAGS.channel_sparsity,
        "sparsity_training": FLAGS.sparsity_training,
        "accuracy": {"before": acc_before, "pruned": acc_pruned,
                     "pruned_recalibrated": acc_recalibrated, "fine_tuned": acc_after},
        "params": {"before": before_prof["params"], "after": after_prof["params"]},
        "macs": {"before": before_prof["macs"], "after": after_prof["macs"]},
        "bytes": {side: {k: len(v) for k, v in kinds.items()} for side, kinds in files.items()},
        "latency_ms": latency,
        "groups": report.groups,
        "int8": {k: v for k, v in int8.items() if k != "path"},
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(summary, indent=2, default=lambda v: np.asarray(v).tolist()))
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


def plot_spectra(model, report, title, path):
    """Each decomposed layer's singular values (of its weight matrix, or of the kernel's
    output-channel unfolding), normalized, with the chosen rank marked; False without
    matplotlib or without a decomposed layer."""
    rows = [r for r in report.layers if r["replaced"]]
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    from tfcompress.decomposition.factor import unfold

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, row in enumerate(rows):
        kernel = np.asarray(model.get_layer(row["layer"]).kernel)
        matrix = kernel.reshape(-1, kernel.shape[-1]) if kernel.ndim == 2 or \
            kernel.shape[:2] == (1, 1) else unfold(kernel, 3)
        values = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
        values = values / values[0]
        line, = ax.plot(np.arange(1, len(values) + 1), values, marker=".", markersize=3,
                        label=f"{row['layer']} ({row['method']}, rank "
                              + "x".join(str(r) for r in row["ranks"]) + ")")
        rank = row["ranks"][-1]
        ax.plot([rank], [values[min(rank, len(values)) - 1]], marker="o", markersize=8,
                markerfacecolor="none", color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("singular value index (from 1)")
    ax.set_ylabel("singular value / largest")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def low_rank_stage(model, stem, train, test, history):
    """Decompose -> recalibrate BatchNorm -> fine-tune -> int8, and report."""
    import keras
    import numpy as np

    import tfcompress
    from tfcompress import export, profiling
    from tfcompress.decomposition import decompose_model

    x_train, y_train = train
    x_test, y_test = test
    how = f"energy {FLAGS.energy}" if FLAGS.energy is not None else f"{FLAGS.rank_selection} ranks"
    stage(f"[4/7] decompose: {FLAGS.decomposition}, {how}")
    try:
        small = decompose_model(model, method=FLAGS.decomposition, energy=FLAGS.energy,
                                rank_selection=FLAGS.rank_selection, seed=FLAGS.seed)
    except ValueError as error:
        raise SystemExit(f"decomposition failed: {error}") from None
    report = small.decomposition_report
    print(report)
    small.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tfcompress.recalibrate_batchnorm(small, x_train)
    acc_decomposed = float(small.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    print(f"      test accuracy right after decomposition: {acc_decomposed:.4f}")
    stage(f"[5/7] fine-tune: {FLAGS.finetune_epochs} epochs")
    stages = {"float training": history}
    if FLAGS.finetune_epochs:
        stages["fine-tune"] = small.fit(
            x_train, y_train, batch_size=FLAGS.batch_size, epochs=FLAGS.finetune_epochs,
            validation_split=0.1, verbose=fit_verbose()).history
    acc_after = float(small.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    acc_before = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    stage("[6/7] save .keras and float .tflite")
    small.save(OUT.path(stem + "_low_rank.keras", "the decomposed, fine-tuned float model"))
    int8 = quantize_stage(small, stem + "_low_rank", x_train, y_train, x_test, y_test)
    if int8.get("history"):
        stages["QAT"] = int8.pop("history")
    int8.pop("model", None)
    files = {"before": {"float": export.to_tflite(model, mode="float32")},
             "after": {"float": export.to_tflite(small, mode="float32")}}
    write_atomic(OUT.path(stem + "_low_rank_float.tflite",
                          f"float32 TFLite of {stem}_low_rank.keras"), files["after"]["float"])
    if int8.get("path"):
        with open(int8["path"], "rb") as f:
            files["after"]["int8"] = f.read()
        try:
            files["before"]["int8"] = export.to_tflite(
                model, x_train[: FLAGS.calibration_examples])
        except ValueError:
            # The original model may hold an op with no integer-only TFLite kernel; the
            # table then has no "before" int8 row (the decomposed file was checked above).
            pass
    latency = {side: {kind: export.measure_latency(blob, runs=100)["median_ms"]
                      for kind, blob in kinds.items()} for side, kinds in files.items()}
    before_prof, after_prof = profiling.profile(model)["total"], profiling.profile(small)["total"]

    def ratio(a, b):
        return f"{b / a:.3f}x" if a else "-"

    rows = [("", "before", "after", "after / before")]
    for label, a, b in (
        ("parameters", before_prof["params"], after_prof["params"]),
        ("multiply-adds / example", before_prof["macs"], after_prof["macs"]),
        ("float .tflite bytes", len(files["before"]["float"]), len(files["after"]["float"])),
    ):
        rows.append((label, f"{a:,}", f"{b:,}", ratio(a, b)))
    rows.append(("Keras test accuracy", f"{acc_before:.4f}", f"{acc_after:.4f}",
                 f"{100 * (acc_after - acc_before):+.2f} pt"))
    if int8.get("test_accuracy") is not None:
        rows.append(("int8 .tflite test accuracy", "-", f"{int8['test_accuracy']:.4f}", ""))
    for kind in ("float", "int8"):
        a, b = latency["before"].get(kind), latency["after"].get(kind)
        if a is not None and b is not None:
            rows.append((f"LiteRT {kind} latency, batch 1 (ms)", f"{a:.3f}", f"{b:.3f}",
                         ratio(a, b)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    spectra_png = OUT.path(stem + "_spectra.png", "singular values per layer, chosen rank marked")
    stages_png = OUT.path(stem + "_training.png", "training curves of every stage")
    title = f"{stem} on {FLAGS.dataset}: {FLAGS.decomposition}, {how}"
    for path, written in ((spectra_png, plot_spectra(model, report, title, spectra_png)),
                          (stages_png, plot_stages(stages, f"{stem} on {FLAGS.dataset}: "
                                                   "training of every stage", stages_png))):
        if not written:
            OUT.discard(os.path.basename(path))
    summary = {
        "model": stem, "recipe": "low_rank", "dataset": FLAGS.dataset,
        "decomposition": FLAGS.decomposition, "energy": FLAGS.energy,
        "rank_selection": None if FLAGS.energy is not None else FLAGS.rank_selection,
        "accuracy": {"before": acc_before, "decomposed": acc_decomposed, "fine_tuned": acc_after},
        "params": {"before": before_prof["params"], "after": after_prof["params"]},
        "macs": {"before": before_prof["macs"], "after": after_prof["macs"]},
        "bytes": {side: {k: len(v) for k, v in kinds.items()} for side, kinds in files.items()},
        "latency_ms": latency,
        "layers": report.layers,
        "int8": {k: v for k, v in int8.items() if k != "path"},
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(summary, indent=2, default=lambda v: np.asarray(v).tolist()))
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


def quantize_stage(model, stem, x_train, y_train, x_test, y_test):
    """QAT or PTQ to an integer-only int8 .tflite, verified against Keras; a report dict."""
    import keras

    from tfcompress import export
    from tfcompress.quantization import quantize_model

    if FLAGS.quantize == "none":
        return {}
    stage(f"[7/7] int8 ({FLAGS.quantize})")
    calibration = x_train[: FLAGS.calibration_examples]
    try:
        if FLAGS.quantize == "qat":
            reference = quantize_model(model)
            reference.compile(
                optimizer=keras.optimizers.Adam(FLAGS.qat_learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            qat_history = reference.fit(x_train, y_train, batch_size=FLAGS.batch_size,
                                        epochs=FLAGS.qat_epochs, verbose=fit_verbose()).history
            qat_path = OUT.path(stem + "_qat.keras", "the quantization-aware model "
                                f"({stem}_int8.tflite was exported from it: evaluate them "
                                "together)")
            reference.save(qat_path)
        else:
            reference = model
        tflite = export.to_tflite(reference, calibration, mode="int8")
    except ValueError as error:
        print(f"      int8 export is not available for this model: {error}")
        return {"error": str(error)}
    source = f"{stem}_qat.keras" if FLAGS.quantize == "qat" else f"{stem}.keras"
    path = OUT.path(stem + "_int8.tflite", f"integer-only int8 file, exported from {source}")
    write_atomic(path, tflite)
    parity = export.verify(tflite, reference, x_test[: FLAGS.verify_examples])
    probs, _ = export.run_tflite(tflite, x_test)
    accuracy = float((probs.argmax(-1) == y_test).mean())
    print(f"      int8 test accuracy {accuracy:.4f}; vs Keras: "
          f"{parity.get('within_1_step', 0):.4f} of outputs within 1 step, "
          f"argmax agreement {parity['argmax_agreement']:.4f}")
    result = {"mode": FLAGS.quantize, "path": path, "file": os.path.basename(path),
              "exported_from": source, "bytes": len(tflite),
              "test_accuracy": accuracy, "parity": parity}
    if FLAGS.quantize == "qat":
        result["history"] = qat_history
        result["model"] = reference
    return result


def run_tool(argv=None):
    """Runs this tool through the shared harness (`tfcompress.cli.run`)."""
    from tfcompress.cli import run

    run(main, check=check_flags, argv=argv)


if __name__ == "__main__":
    run_tool()
