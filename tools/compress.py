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

With `--teacher=teacher.keras` the student (the trained model for the default recipe, the
pruned or decomposed model while it is fine-tuned, Deep Compression's pruning and centroid
fine-tuning, and the QAT model) learns with knowledge
distillation from that teacher (`--distill=logits`: soft targets at `--temperature`, labels
weighted `--alpha`; `--distill=hints`: plus a FitNets hint, `--hint_layers=T:S`); the
table adds the teacher's accuracy and the same training without distillation.

Usage:
    python tools/compress.py                       # small_cnn on the shipped digits
    python tools/compress.py --recipe=deep_compression --model=lenet_300_100
    python tools/compress.py --model=resnet20 --conv=adder --epochs=5
    python tools/compress.py --model=lenet5 --dataset=mnist --data_dir=/path/to/npz
    python tools/compress.py --quantize=ptq          # int8 by calibration, no fine-tuning
    python tools/compress.py --recipe=channel_pruning --criterion=fpgm --target_macs=0.5
    python tools/compress.py --recipe=low_rank --energy=0.9
    python tools/compress.py --recipe=channel_pruning --teacher=out/resnet20_conv.keras
    python tools/compress.py --recipe=channel_pruning --load=out/small_cnn.keras
        --sparsity_training=bn_l1 --criterion=bn_scale     (one command line)

Flags that do not apply to the chosen recipe are an error, not ignored.
"""

import os

if __package__:  # tfcompress <command>: the tools are the package tfcompress_tools
    from . import _quiet, plots
else:  # python tools/<command>.py
    import _quiet
    import plots
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
flags.DEFINE_enum("precision", "8", ("8", "auto"),
                  "--quantize=qat: 8 (every layer int8) or auto (mixed precision: the layers "
                  "whose int8 costs the most accuracy, measured one at a time on the last "
                  "--sensitivity_examples training examples, become 16x8 operators in the "
                  "int8 file where that keeps the budget, else stay float).")
flags.DEFINE_float("max_accuracy_drop", 0.01, "--precision=auto: accuracy the int8 layers may "
                   "cost together, in [0, 1) (0.01 = one point).", lower_bound=0.0,
                   upper_bound=0.999)
flags.DEFINE_integer("sensitivity_examples", 1000, "--precision=auto: training examples the "
                     "per-layer sensitivity is measured on.", lower_bound=1)
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
flags.DEFINE_string("teacher", None, "A trained .keras teacher: the student (the trained model, "
                    "the pruned or decomposed model in fine-tuning, Deep Compression's pruning "
                    "and fine-tuning stages, the QAT model) learns with knowledge distillation "
                    "from it; the table adds the student trained the same way without it.")
flags.DEFINE_enum("distill", "logits", ("logits", "hints", "none"),
                  "with --teacher: soft targets (Hinton et al. 2015), FitNets hints plus soft "
                  "targets, or none (the teacher is only evaluated).")
flags.DEFINE_float("temperature", 4.0, "with --teacher: softmax temperature T of the soft "
                   "targets (> 0).")
flags.DEFINE_float("alpha", 0.1, "with --teacher: weight of the hard-label loss; the "
                   "distillation loss gets 1 - alpha.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_string("hint_layers", None, "with --distill=hints: TEACHER_LAYER:STUDENT_LAYER, "
                    "the teacher's hint layer and the student's guided layer.")
flags.DEFINE_float("hint_weight", 0.1, "with --distill=hints: weight of the hint loss beside "
                   "the soft targets' 1.", lower_bound=0.0)


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
    "teacher": (DEFAULT, DEEP, CHANNELS, LOW_RANK),
    "distill": (DEFAULT, DEEP, CHANNELS, LOW_RANK),
    "temperature": (DEFAULT, DEEP, CHANNELS, LOW_RANK),
    "alpha": (DEFAULT, DEEP, CHANNELS, LOW_RANK),
}
DISTILL_FLAGS = ("distill", "temperature", "alpha", "hint_layers", "hint_weight")


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
    if FLAGS.quantize != "qat":
        cli.check_flags_apply(FLAGS, {"precision": ("--quantize=qat",)},
                              f"--quantize={FLAGS.quantize}")
    cli.check_flags_apply(FLAGS, {"max_accuracy_drop": ("--precision=auto",),
                                  "sensitivity_examples": ("--precision=auto",)},
                          f"--precision={FLAGS.precision}")
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
    if FLAGS.teacher is None:
        cli.check_flags_apply(FLAGS, {name: ("--teacher",) for name in DISTILL_FLAGS},
                              "no --teacher")
    elif not os.path.isfile(FLAGS.teacher):
        raise cli.UsageError(f"--teacher={FLAGS.teacher}: no such file.")
    if FLAGS.temperature <= 0:
        raise cli.UsageError(f"--temperature={FLAGS.temperature}: must be > 0.")
    if FLAGS.distill == "hints" and FLAGS.recipe == "deep_compression":
        raise cli.UsageError("--distill=hints does not apply with --recipe=deep_compression "
                             "(its pruning wrappers rename the layers); use --distill=logits.")
    if FLAGS.distill == "hints":
        if not FLAGS.hint_layers or FLAGS.hint_layers.count(":") != 1 or not all(
                FLAGS.hint_layers.split(":")):
            raise cli.UsageError(f"--distill=hints needs --hint_layers=TEACHER_LAYER:"
                                 f"STUDENT_LAYER; received --hint_layers={FLAGS.hint_layers}.")
    elif FLAGS["hint_layers"].present or FLAGS["hint_weight"].present:
        raise cli.UsageError(f"--hint_layers / --hint_weight apply to --distill=hints only; "
                             f"received --distill={FLAGS.distill}.")
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
TEACHER = None  # with --teacher: {"model", "accuracy", "without_kd", "with_kd"}


def load_teacher(input_shape, num_classes, test):
    """Loads --teacher and checks it against the data; its test accuracy is printed."""
    import keras

    import tfcompress  # noqa: F401  (registers the tfcompress layers)

    try:
        teacher = keras.saving.load_model(FLAGS.teacher)
    except Exception as error:  # noqa: BLE001 - keras raises several kinds
        raise SystemExit(f"--teacher={FLAGS.teacher}: not a valid .keras archive ({error})") \
            from None
    if getattr(teacher, "inputs", None) is None or len(teacher.inputs) != 1:
        raise SystemExit(f"--teacher={FLAGS.teacher}: a teacher has one input.")
    got = tuple(teacher.inputs[0].shape[1:])
    if got != tuple(input_shape):
        raise SystemExit(f"--teacher={FLAGS.teacher}: takes inputs of shape {got}; "
                         f"--dataset={FLAGS.dataset} has {tuple(input_shape)}.")
    classes = teacher.outputs[0].shape[-1]
    if classes != num_classes:
        raise SystemExit(f"--teacher={FLAGS.teacher}: outputs {classes} classes; "
                         f"--dataset={FLAGS.dataset} has {num_classes}.")
    teacher.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    accuracy = float(teacher.evaluate(*test, batch_size=256, verbose=0)[1])
    print(f"      teacher {FLAGS.teacher}: test accuracy {accuracy:.4f}, "
          f"{teacher.count_params():,} parameters; distillation: {FLAGS.distill}"
          + (f", T={FLAGS.temperature:g}, alpha={FLAGS.alpha:g}" if FLAGS.distill != "none"
             else ""))
    return {"model": teacher, "accuracy": accuracy, "without_kd": None, "with_kd": None}


def student_fit(model, x, y, epochs, learning_rate, *, validation_split=0.1, distill=True,
                hints=True):
    """`model.fit` (Adam), or with --teacher a `keras.distillation.Distiller`'s: the
    student learns from the labels (weight --alpha) and from the teacher (our
    `LogitsDistillation`, plus `HintDistillation` with --distill=hints). Returns the
    history dict; `model` is compiled for `evaluate` afterwards."""
    import keras

    def compile_plain():
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    if TEACHER is None or FLAGS.distill == "none" or not distill:
        compile_plain()
        return model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs,
                         validation_split=validation_split, verbose=fit_verbose()).history
    from tfcompress.distillation import Distiller, HintDistillation, LogitsDistillation

    losses, weights = [LogitsDistillation(FLAGS.temperature)], [1.0]
    if FLAGS.distill == "hints" and hints:
        teacher_layer, student_layer = FLAGS.hint_layers.split(":")
        losses.append(HintDistillation(teacher_layer, student_layer))
        weights.append(FLAGS.hint_weight)
    try:
        distiller = Distiller(TEACHER["model"], model, losses, weights,
                              student_loss_weight=FLAGS.alpha)
    except ValueError as error:
        raise SystemExit(f"--teacher={FLAGS.teacher}: {error}") from None
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = dict(distiller.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs,
                                 validation_split=validation_split,
                                 verbose=fit_verbose()).history)
    # "loss" is the Distiller's weighted total; the stage plot shows the labels'
    # cross-entropy, as for every other stage (the total stays as "total_loss").
    for prefix in ("", "val_"):
        if prefix + "student_loss" in history:
            history[prefix + "loss"] = history[prefix + "student_loss"]
    compile_plain()
    # Built now, so that a saved student reloads with its optimizer's variables.
    model.optimizer.build(model.trainable_variables)
    return history


def fit_with_and_without_teacher(model, train, test, epochs, learning_rate, what):
    """`student_fit(model, ...)`; with --teacher, first the same training of a copy of
    `model` without distillation (same start, same batch order), for the table.
    Returns the history of `model`'s training."""
    import keras

    if TEACHER is None or FLAGS.distill == "none":
        return student_fit(model, *train, epochs, learning_rate)
    print(f"      {what} without distillation (the comparison), {epochs} epochs")
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    keras.utils.set_random_seed(FLAGS.seed + 1)
    student_fit(plain, *train, epochs, learning_rate, distill=False)
    TEACHER["without_kd"] = float(plain.evaluate(*test, batch_size=256, verbose=0)[1])
    print(f"      {what} with distillation from --teacher, {epochs} epochs")
    keras.utils.set_random_seed(FLAGS.seed + 1)
    history = student_fit(model, *train, epochs, learning_rate)
    TEACHER["with_kd"] = float(model.evaluate(*test, batch_size=256, verbose=0)[1])
    return history


def distillation_rows():
    """Table rows: teacher, student without and with distillation (empty without
    --teacher)."""
    if TEACHER is None:
        return []
    rows = [("teacher test accuracy", f"{TEACHER['accuracy']:.4f}")]
    without, with_kd = TEACHER["without_kd"], TEACHER["with_kd"]
    if without is not None:
        rows += [("student test accuracy without KD", f"{without:.4f}"),
                 (f"student test accuracy with KD ({FLAGS.distill}, T={FLAGS.temperature:g})",
                  f"{with_kd:.4f} ({100 * (with_kd - without):+.2f} pt)")]
    return rows


def distillation_report():
    """The JSON report's "distillation" entry (None without --teacher)."""
    if TEACHER is None:
        return None
    return {"teacher": FLAGS.teacher, "distill": FLAGS.distill,
            "temperature": FLAGS.temperature, "alpha": FLAGS.alpha,
            "hint_layers": FLAGS.hint_layers if FLAGS.distill == "hints" else None,
            "teacher_accuracy": TEACHER["accuracy"],
            "student_without_kd": TEACHER["without_kd"], "student_with_kd": TEACHER["with_kd"]}


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

    from tfcompress import cli, datasets, export, profiling

    keras.utils.set_random_seed(FLAGS.seed)
    stem = FLAGS.model + (f"_{FLAGS.conv}" if FLAGS.model == "resnet20" else "")

    stage(f"[1/7] data: {FLAGS.dataset}")
    (x_train, y_train), (x_test, y_test) = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    print(f"      train {x_train.shape}, test {x_test.shape}, {num_classes} classes")
    global TEACHER
    TEACHER = (load_teacher(x_train.shape[1:], num_classes, (x_test, y_test))
               if FLAGS.teacher else None)

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
        start = time.perf_counter()
        if FLAGS.recipe == "default":  # the trained model is the student
            history = fit_with_and_without_teacher(model, (x_train, y_train),
                                                   (x_test, y_test), FLAGS.epochs,
                                                   FLAGS.learning_rate, "training")
        else:  # the student is the pruned or decomposed model, in fine-tuning
            history = student_fit(model, x_train, y_train, FLAGS.epochs,
                                  FLAGS.learning_rate, distill=False)
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
    if not plots.plot_stages(stages, f"{stem} on {FLAGS.dataset}: training of every stage",
                             plot_path):
        OUT.discard(os.path.basename(plot_path))
    qat_model = int8.pop("model", None)
    if qat_model is not None:
        bits_path = OUT.path(stem + "_bits.png", "weight storage per layer, float32 vs int8")
        int8_prof = profiling.profile(qat_model)
        kib = [p["total"]["param_bits"] / 8192 for p in (prof, int8_prof)]
        title = (f"{stem} on {FLAGS.dataset}: weights {kib[0]:.1f} KiB as float32, "
                 f"{kib[1]:.1f} KiB as int8")
        if not plots.plot_bits(prof, int8_prof, title, bits_path):
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
        "distillation": distillation_report(),
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
        *distillation_rows(),
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
        if int8.get("int16_layers"):
            rows.append(("int8 file's 16x8 layers", ", ".join(int8["int16_layers"])))
        if int8.get("float_layers"):
            rows.append(("int8 file's float layers", ", ".join(int8["float_layers"])))
    cli.print_rows(rows)
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


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
    if TEACHER is not None and FLAGS.distill != "none":
        from tfcompress.distillation import LogitsDistillation

        print("      the pipeline without distillation first (the comparison)")
        plain = deep_compression.run(model, train, test, config, verbose=2)
        TEACHER["without_kd"] = plain.accuracy["clustered"]
        print(f"      without distillation: {TEACHER['without_kd']:.4f}; now with "
              "distillation from --teacher")
        distillation = {"teacher": TEACHER["model"],
                        "distillation_losses": LogitsDistillation(FLAGS.temperature),
                        "student_loss_weight": FLAGS.alpha}
        result = deep_compression.run(model, train, test, config, verbose=2,
                                      distillation=distillation)
        TEACHER["with_kd"] = result.accuracy["clustered"]
    else:
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
    rows += [(label, "", value) for label, value in distillation_rows()]
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
        (hist_path, plots.plot_weights(
            before_kernel, after_kernel, largest["layer"], hist_path,
            f"{stem} on {FLAGS.dataset}: weight sharing, "
            f"{clusters if isinstance(clusters, int) else 'per-layer'} clusters")),
        (sparsity_path, plots.plot_sparsity(
            result.sparsity, sparsity_path,
            f"{stem} on {FLAGS.dataset}: weights pruned per layer")),
        (training_path, plots.plot_stages(
            stages, f"{stem} on {FLAGS.dataset}: training of every stage", training_path)),
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
        "distillation": distillation_report(),
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(report, indent=2, default=str))


def channel_pruning_stage(model, stem, train, test, history):
    """Sparsity training (optional) -> prune channels -> fine-tune -> int8, and report."""
    import keras
    import numpy as np

    import tfcompress
    from tfcompress import pruning

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
        stages["fine-tune"] = fit_with_and_without_teacher(
            pruned, train, test, FLAGS.finetune_epochs, FLAGS.learning_rate, "fine-tuning")
    acc_after = float(pruned.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    acc_before = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    keras_path = OUT.path(stem + "_pruned.keras", "the channel-pruned, fine-tuned float model")
    pruned.save(keras_path)
    int8 = quantize_stage(pruned, stem + "_pruned", x_train, y_train, x_test, y_test)
    if int8.get("history"):
        stages["QAT"] = int8.pop("history")
    int8.pop("model", None)

    files, compared = compare_before_after(model, pruned, int8, (acc_before, acc_after),
                                           x_train[: FLAGS.calibration_examples])
    for side, kinds in files.items():
        for kind, blob in kinds.items():
            if side == "after" and kind == "int8":
                continue
            source = f"{stem}_pruned.keras" if side == "after" else "the unpruned model"
            how = "float32 TFLite" if kind == "float" else "post-training int8"
            name = f"{stem}{'_pruned' if side == 'after' else ''}_{kind}.tflite"
            write_atomic(OUT.path(name, f"{how} of {source}"), blob)

    title = (f"{stem} on {FLAGS.dataset}: {FLAGS.criterion}, MACs "
             f"{compared['macs']['before']:,} -> {compared['macs']['after']:,}")
    channels_png = OUT.path(stem + "_channels.png", "channels kept per group")
    stages_png = OUT.path(stem + "_training.png", "training curves of every stage")
    for path, written in ((channels_png, plots.plot_channels(report, title, channels_png)),
                          (stages_png, plots.plot_stages(stages, f"{stem} on {FLAGS.dataset}: "
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
        **compared,
        "groups": report.groups,
        "int8": {k: v for k, v in int8.items() if k != "path"},
        "distillation": distillation_report(),
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(summary, indent=2, default=lambda v: np.asarray(v).tolist()))
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


def low_rank_stage(model, stem, train, test, history):
    """Decompose -> recalibrate BatchNorm -> fine-tune -> int8, and report."""
    import keras
    import numpy as np

    import tfcompress
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
        stages["fine-tune"] = fit_with_and_without_teacher(
            small, train, test, FLAGS.finetune_epochs, FLAGS.learning_rate, "fine-tuning")
    acc_after = float(small.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    acc_before = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    stage("[6/7] save .keras and float .tflite")
    small.save(OUT.path(stem + "_low_rank.keras", "the decomposed, fine-tuned float model"))
    int8 = quantize_stage(small, stem + "_low_rank", x_train, y_train, x_test, y_test)
    if int8.get("history"):
        stages["QAT"] = int8.pop("history")
    int8.pop("model", None)
    files, compared = compare_before_after(model, small, int8, (acc_before, acc_after),
                                           x_train[: FLAGS.calibration_examples])
    write_atomic(OUT.path(stem + "_low_rank_float.tflite",
                          f"float32 TFLite of {stem}_low_rank.keras"), files["after"]["float"])
    spectra_png = OUT.path(stem + "_spectra.png", "singular values per layer, chosen rank marked")
    stages_png = OUT.path(stem + "_training.png", "training curves of every stage")
    title = f"{stem} on {FLAGS.dataset}: {FLAGS.decomposition}, {how}"
    for path, written in ((spectra_png, plots.plot_spectra(model, report, title, spectra_png)),
                          (stages_png, plots.plot_stages(stages, f"{stem} on {FLAGS.dataset}: "
                                                         "training of every stage", stages_png))):
        if not written:
            OUT.discard(os.path.basename(path))
    summary = {
        "model": stem, "recipe": "low_rank", "dataset": FLAGS.dataset,
        "decomposition": FLAGS.decomposition, "energy": FLAGS.energy,
        "rank_selection": None if FLAGS.energy is not None else FLAGS.rank_selection,
        "accuracy": {"before": acc_before, "decomposed": acc_decomposed, "fine_tuned": acc_after},
        **compared,
        "layers": report.layers,
        "int8": {k: v for k, v in int8.items() if k != "path"},
        "distillation": distillation_report(),
        "files": OUT.files,
    }
    write_atomic(OUT.path(stem + "_report.json", "this report as JSON"),
                 json.dumps(summary, indent=2, default=lambda v: np.asarray(v).tolist()))
    if "error" in int8:
        raise SystemExit(f"int8 stage failed: {int8['error']}")


def compare_before_after(model, compact, int8, accuracy, calibration):
    """Exports the model a stage started from and the stage's smaller model to .tflite,
    measures their LiteRT latency and prints the before/after table.

    The table: parameters, multiply-adds, file sizes, Keras (and int8) test accuracy and
    LiteRT latency at batch 1, before, after and after / before.

    Args:
        model: the trained float model the stage started from ("before").
        compact: the stage's smaller float model ("after").
        int8: `quantize_stage`'s report on `compact`: its int8 file ("path") is read
            back, its "test_accuracy" is a row of the table.
        accuracy: (before, after), the two models' Keras test accuracy.
        calibration: training inputs that calibrate the post-training int8 export of
            `model`, made only when the stage wrote an int8 file (no int8 rows without
            one, e.g. with --quantize=none).

    Returns:
        `(files, compared)`: files is {"before" | "after": {"float" | "int8": the
        .tflite file's bytes}} (nothing written yet); compared holds the JSON report's
        "params", "macs", "bytes" and "latency_ms" (median, ms) entries, each
        {"before": ..., "after": ...}.
    """
    from tfcompress import export, profiling

    files = {"before": {"float": export.to_tflite(model, mode="float32")},
             "after": {"float": export.to_tflite(compact, mode="float32")}}
    if int8.get("path"):
        with open(int8["path"], "rb") as f:
            files["after"]["int8"] = f.read()
        try:
            files["before"]["int8"] = export.to_tflite(model, calibration)
        except ValueError:
            # The original model may hold an op with no integer-only TFLite kernel; the
            # table then has no "before" int8 row (`quantize_stage` checked the new file).
            pass
    latency = {side: {kind: export.measure_latency(blob, runs=100)["median_ms"]
                      for kind, blob in kinds.items()} for side, kinds in files.items()}
    before_prof, after_prof = profiling.profile(model)["total"], profiling.profile(compact)["total"]

    def ratio(a, b):
        return f"{b / a:.3f}x" if a else "-"

    sizes = [
        ("parameters", before_prof["params"], after_prof["params"]),
        ("multiply-adds / example", before_prof["macs"], after_prof["macs"]),
        ("float .tflite bytes", len(files["before"]["float"]), len(files["after"]["float"])),
    ]
    if "int8" in files["before"] and "int8" in files["after"]:
        sizes.append(("int8 .tflite bytes", len(files["before"]["int8"]),
                      len(files["after"]["int8"])))
    acc_before, acc_after = accuracy
    rows = [("", "before", "after", "after / before")]
    for label, a, b in sizes:
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
    for label, value in distillation_rows():
        rows.append((label, "", value, ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    compared = {
        "params": {"before": before_prof["params"], "after": after_prof["params"]},
        "macs": {"before": before_prof["macs"], "after": after_prof["macs"]},
        "bytes": {side: {k: len(v) for k, v in kinds.items()} for side, kinds in files.items()},
        "latency_ms": latency,
    }
    return files, compared


def quantize_stage(model, stem, x_train, y_train, x_test, y_test):
    """QAT or PTQ to an integer-only int8 .tflite, verified against Keras; a report dict."""

    from tfcompress import export
    from tfcompress.quantization import float_layers as mixed_float_layers
    from tfcompress.quantization import int16_layers as mixed_int16_layers
    from tfcompress.quantization import quantize_model

    if FLAGS.quantize == "none":
        return {}
    float_layers, wide_layers = [], []
    stage(f"[7/7] int8 ({FLAGS.quantize})")
    calibration = x_train[: FLAGS.calibration_examples]
    try:
        if FLAGS.quantize == "qat":
            if FLAGS.precision == "auto":
                held = slice(-min(FLAGS.sensitivity_examples, len(x_train)), None)
                print(f"      mixed precision: each weighted layer alone int8 on the last "
                      f"{len(x_train[held])} training examples")
                reference = quantize_model(
                    model, precision="auto", max_accuracy_drop=FLAGS.max_accuracy_drop,
                    data=(x_train[held], y_train[held]))
                float_layers = mixed_float_layers(reference)
                wide_layers = mixed_int16_layers(reference)
            else:
                reference = quantize_model(model)
            # With --teacher the QAT model learns from it too (soft targets only: the
            # QAT wrappers rename the layers that --hint_layers names).
            qat_history = student_fit(reference, x_train, y_train, FLAGS.qat_epochs,
                                      FLAGS.qat_learning_rate, validation_split=0.0,
                                      hints=False)
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
    mixed = [f"16x8 {', '.join(wide_layers)}"] if wide_layers else []
    mixed += [f"float {', '.join(float_layers)}"] if float_layers else []
    kind = (f"int8 file with {' and '.join(mixed)} (mixed precision)" if mixed
            else "integer-only int8 file")
    path = OUT.path(stem + "_int8.tflite", f"{kind}, exported from {source}")
    write_atomic(path, tflite)
    parity = export.verify(tflite, reference, x_test[: FLAGS.verify_examples])
    probs, _ = export.run_tflite(tflite, x_test)
    accuracy = float((probs.argmax(-1) == y_test).mean())
    print(f"      int8 test accuracy {accuracy:.4f}; vs Keras: "
          f"{parity.get('within_1_step', 0):.4f} of outputs within 1 step, "
          f"argmax agreement {parity['argmax_agreement']:.4f}")
    result = {"mode": FLAGS.quantize, "path": path, "file": os.path.basename(path),
              "exported_from": source, "bytes": len(tflite),
              "test_accuracy": accuracy, "parity": parity, "float_layers": float_layers,
              "int16_layers": wide_layers}
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
