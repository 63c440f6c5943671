"""Knowledge distillation: Hinton et al.'s MNIST table, compressed students, keras' own losses.

`tfcompress.distillation` on top of `keras.distillation.Distiller`: every student is trained
without knowledge distillation (KD) and with it, on the same initial weights (the same seed
before the model is built), the same epochs and learning-rate schedule and the same batch
order (`keras.utils.set_random_seed` before each comparable `fit`). Plain training is
`deep_compression.train_classifier` (Adam `--lr`, cosine decay to 1% over the stage, batch
`--batch_size`, sparse categorical cross-entropy); a KD run compiles the Distiller with
`Adam(CosineDecay(lr, decay_steps=steps of the stage, alpha=0.01))`, the same schedule, and
`Distiller(teacher, student, losses, student_loss_weight=--student_loss_weight)`: loss =
w * cross-entropy(labels) + (1 - w) * (sum of the weighted distillation losses). Three parts,
in one run (`--parts`):

    1. mnist    Hinton, Vinyals and Dean 2015 ("Distilling the Knowledge in a Neural
                Network", section 3) with Keras 3, on all 60,000 MNIST training images:
                teacher  784-1200-1200-10 MLP (ReLU), dropout 0.2 on the inputs and 0.5
                         after each hidden layer, trained `--mnist_teacher_epochs` on images
                         jittered by random shifts of up to `--mnist_shift` (2) pixels per
                         axis, new offsets every epoch (`tfcompress.datasets.random_shift`,
                         through train_classifier's augment_shift);
                800-800  784-800-800-10, no regularization, trained `--mnist_epochs` alone,
                         and distilled from the teacher with `LogitsDistillation(
                         temperature=--mnist_temperature)` (20) on the unshifted images;
                30-30    784-30-30-10, alone and distilled at each of
                         `--small_temperatures` (2.5, 4).
                The MLPs end in Dense(10) "logits" -> Softmax; the Distiller gets views of
                teacher and student that stop at "logits" (the same layers, so the student
                is trained in place; student loss: cross-entropy from logits), so that at
                T = 20 the soft targets come from the teacher's real logits (not the
                log-probabilities of its softmax, tfcompress.distillation.outputs).
    2. fashion  Fashion-MNIST (`--train_examples` training images, 20,000 by default, all
                10,000 test images). Teacher: `models.resnet20(conv="conv",
                input_shape=(28, 28, 1), num_classes=10)` trained `--teacher_epochs`.
                Students, each trained (i) without KD, (ii) with logits KD
                (`LogitsDistillation(temperature=--temperature)`) and (iii) with hints +
                logits (`[LogitsDistillation(T), HintDistillation(--teacher_hint_layer,
                student layer)]`, weights [1, `--hint_weight`]; regressor "auto": bilinear
                resize + 1x1 convolution, trained with the student):
                small_cnn  `models.small_cnn(input_shape, num_classes=10)`, `--student_epochs`
                           (Adam `--lr`), hint layer `--student_hint_layer` (relu2);
                pruned     `prune_channels(trained teacher, target={"macs": --target_macs},
                           criterion="l1", round_to=--round_to)`, then
                           `recalibrate_batchnorm(pruned, x_subset)` on
                           `--recalibration_examples` random training images, then
                           `--finetune_epochs` (Adam `--finetune_lr`) from that same start
                           for each of (i)-(iii); hint layer: its own copy of the teacher's;
                qat        `quantize_model(small_cnn trained without KD)` (a fresh copy for
                           each of (i)-(iii)), fine-tuned `--qat_epochs` (Adam `--qat_lr`);
                           hint layer: the quantized layer that computes the small_cnn's
                           hint layer (relu2 is fused into quant_conv2). Besides the Keras
                           accuracy: the int8 .tflite file (`export.to_tflite(qat, x_train[
                           :256])`) run by ai_edge_litert (`export.run_tflite(blob,
                           x_test)[0].argmax(-1)`).
                Deep mutual learning (Zhang et al., CVPR 2018): two small_cnn peers,
                `MutualLearning([peer_a, peer_b], kl_weight=--kl_weight)`, `--student_epochs`;
                peer A starts from the weights of the no-KD small_cnn above, peer B from
                another seed; each is compared with itself trained alone (peer A alone = the
                no-KD small_cnn; peer B alone is trained here, same batch order).
    3. keras    keras.distillation's own loss on the same teacher, data, small_cnn initial
                weights, epochs, schedule, batch order and student_loss_weight as the
                small_cnn logits-KD row of part 2: `keras.distillation.Distiller` with
                `keras.distillation.LogitsDistillation(temperature=T,
                loss=keras.losses.KLDivergence())` (the object form, right in Keras 3.15)
                and with its default `keras.distillation.LogitsDistillation(temperature=T)`
                (loss="kl_divergence", a string that Keras 3.15 resolves to the function
                keras.losses.kl_divergence, so neither the softmax nor the T^2 factor is
                applied). Keras' loss expects logits, so it gets them: the teacher as a
                copy of resnet20 with classifier_activation=None holding the trained
                teacher's weights, the student as small_cnn(classifier_activation=None)
                built from the same seed (same initial weights), student loss
                SparseCategoricalCrossentropy(from_logits=True). Part 3 needs part 2's
                teacher, no-KD small_cnn (both seeds) and logits-KD small_cnn: they are run
                if part 2 is not.

For every model: test accuracy and errors (Keras; the student itself after training),
parameters and MACs (`tfcompress.profile(model)["total"]`), training wall time; the int8
.tflite accuracy for the QAT student; the last epoch's Distiller losses for part 3.

It prints markdown: the setup, the published anchors, one table per part, the wall time of
every stage, the errors, and goal lines computed from the numbers (MET / NOT MET): on MNIST
the distilled 800-800 student closes >= 60% of the error gap to the teacher, gap closed =
(errors alone - errors distilled) / (errors alone - errors of the teacher); on Fashion-MNIST
KD (the better of logits and hints) beats no KD for every student, and for the int8 file of
the QAT student; mutual learning beats each peer trained alone; our logits KD equals Keras'
object-form KL to within run-to-run noise: |difference| <= max(2 x the standard deviation
of the two no-KD small_cnn runs with different seeds (peer A alone, peer B alone), 0.3 pt).

Run (from the repository root; mnist.npz and fashion_mnist.npz in the keras.datasets layout
in `--data_dir`, default $TFCOMPRESS_DATA_DIR):

    PYTHONPATH=. python3 benchmarks/distillation.py --data_dir DIR    # ~30 min, 2 cores
    PYTHONPATH=. python3 benchmarks/distillation.py --quick           # ~3 min, 8x8 digits
    PYTHONPATH=. python3 benchmarks/distillation.py --data_dir DIR --output benchmarks/RESULTS.md

`--quick` uses the packaged 8x8 UCI digits (1,437 training / 360 test images) for every part
(the same MLP sizes, on 64 inputs; resnet20 and small_cnn at input_shape (8, 8, 1)), shifts of
up to 1 pixel, 10 epochs for the MLPs and the resnet20 teacher, 5 for small_cnn, 1 for the
pruned and QAT fine-tuning.

Expected time of the default run (2 CPU cores, idle machine; an estimate, the default run was
not timed): the reference is resnet20 training at ~480 images/s on 28x28 Fashion-MNIST
(benchmarks/channel_pruning.py's measurement). A 60-s throwaway probe (not in this file:
3 epochs of `fit` on 1,024 random 28x28 images, the last one timed; 2026-12-01, while another
job kept the load average near 3) gave, relative to resnet20 training: resnet20 forward pass 3.4x faster, small_cnn training 7x, a Distiller step
resnet20 -> small_cnn (logits or hints) 1.8-2.9x, MLP 1200-1200 with dropout training 17x,
800-800 16x, a Distiller step 1200-1200 -> 800-800 15x, 30-30 69x, 1200-1200 -> 30-30 34x
(the quick run's speeds on 8x8 images do not carry over: there resnet20 trains at ~800-1,100
images/s, small_cnn only ~3.5x faster, its KD step ~1.8x). Hence, with generous rounding
of those idle-scaled speeds (e.g. ~1,000 images/s for a small_cnn KD step, ~5,000 for the
MLPs, ~430 for the pruned resnet20): Fashion-MNIST (20,000 images) ~23 min: the teacher 8
epochs ~5.5 min; small_cnn 5 epochs, no KD ~0.5 min (x 2 seeds), each KD run ~1.7 min x 4
(logits, hints, the two keras forms) ~7 min; pruned resnet20 2 epochs x 3 variants ~6 min;
QAT 2 epochs x 3 + three int8 exports and file evaluations ~2 min; mutual learning ~1 min;
evaluations ~1 min. MNIST (60,000 images) ~7 min: teacher 10 epochs on shifted images ~2 min,
800-800 8 epochs alone and distilled ~3.5 min, 30-30 alone and at two temperatures ~2 min.
About 30 minutes in all, more on a loaded machine; the KD runs of part 2 and 3, whose
cost is mostly the teacher's forward pass, are the largest share.
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

from tfcompress import (
    datasets,
    export,
    models,
    profile,
    prune_channels,
    quantize_model,
    recalibrate_batchnorm,
)
from tfcompress.distillation import (
    Distiller,
    HintDistillation,
    LogitsDistillation,
    MutualLearning,
)
from tfcompress.pipelines.deep_compression import COSINE_ALPHA, train_classifier

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN_MARK = "<!-- BEGIN benchmarks/distillation.py -->"
END_MARK = "<!-- END benchmarks/distillation.py -->"
SECTION_TITLE = "## Distillation (benchmarks/distillation.py)"

PARTS = ("mnist", "fashion", "keras")
KD_VARIANTS = ("none", "logits", "hints")
STUDENTS = ("small_cnn", "pruned", "qat")
LOSS = "sparse_categorical_crossentropy"
REPRESENTATIVE_EXAMPLES = 256
TEACHER_DROPOUT = (0.2, 0.5)  # on the inputs, after each hidden layer
# Seed offsets (added to --seed): initial weights and batch orders of the comparable runs.
SEED_TEACHER, SEED_TEACHER_ORDER = 0, 100
SEED_INIT_A, SEED_INIT_B, SEED_INIT_SMALL = 1, 2, 3
SEED_ORDER_STUDENT, SEED_ORDER_PRUNED, SEED_ORDER_QAT = 11, 12, 13
SEED_SUBSET = 7
# Goals.
GOAL_GAP_CLOSED = 0.60       # distilled 800-800 closes >= 60% of the error gap to the teacher
GOAL_NOISE_FLOOR = 0.003     # ours vs keras' object-form KL: within max(2 x seed std, 0.3 pt)
GOAL_NOISE_STDS = 2.0
ANCHORS = (
    ("Hinton, Vinyals and Dean 2015 (arXiv:1503.02531), MNIST: teacher 1200-1200 (dropout, "
     "inputs jittered by up to 2 pixels) 67 test errors; student 800-800 trained alone 146 "
     "errors, distilled at T = 20 74 errors: (146 - 74) / (146 - 67) = 91% of the gap "
     "closed. With 30 units per hidden layer, temperatures 2.5 to 4 worked significantly "
     "better than higher or lower ones (no error counts given)."),
    ("keras.io's \"Knowledge Distillation\" code example (MNIST, CNN teacher and student): "
     "student 97.6% trained alone -> 98.1% distilled."),
)
STUDENT_LABELS = {
    "small_cnn": "small_cnn",
    "pruned": "resnet20 pruned (l1)",
    "qat": "small_cnn int8 QAT",
}
VARIANT_LABELS = {"none": "no KD", "logits": "logits KD", "hints": "hints + logits KD"}


def _load_benchmark(name):
    """A sibling benchmark module (layers.py: machine lines and write_section;
    channel_pruning.py: the formatting helpers and _names)."""
    spec = importlib.util.spec_from_file_location(
        f"tfcompress_benchmarks_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cp_bench = _load_benchmark("channel_pruning")
_pct, _count, _s, _short, _error_item = (cp_bench._pct, cp_bench._count, cp_bench._s,
                                         cp_bench._short, cp_bench._error_item)
_error_text, _accuracy = cp_bench._error_text, cp_bench._accuracy


# --------------------------------------------------------------------------- arguments


def _temperatures(text, flag, parser):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--{flag}={text!r}: give temperatures like 2.5,4")
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        parser.error(f"--{flag}={text!r}: every temperature must be a finite number > 0")
    return values


def _layer_names(model):
    return [layer.name for layer in model.layers]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get(datasets.ENV_VAR) or None,
        help=f"folder holding mnist.npz and fashion_mnist.npz (default ${datasets.ENV_VAR}; "
        "not needed with --quick, which uses the packaged 8x8 digits)",
    )
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated subset of mnist, fashion, keras")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate of every from-scratch training (1e-3)")
    parser.add_argument("--student_loss_weight", type=float, default=0.1,
                        help="Distiller(student_loss_weight=...): weight of the labels' "
                        "cross-entropy, the distillation losses get 1 minus it (0.1)")
    # MNIST.
    parser.add_argument("--mnist_teacher_epochs", type=int, default=None,
                        help="epochs of the 1200-1200 teacher (10; --quick: 10)")
    parser.add_argument("--mnist_epochs", type=int, default=None,
                        help="epochs of every MNIST student, alone or distilled (8; --quick: "
                        "10)")
    parser.add_argument("--mnist_shift", type=int, default=None,
                        help="the teacher's training images move by up to this many pixels "
                        "per axis (2; --quick: 1, the images being 8x8)")
    parser.add_argument("--mnist_temperature", type=float, default=20.0,
                        help="T of the distilled 800-800 student (20)")
    parser.add_argument("--small_temperatures", default="2.5,4",
                        help="temperatures of the distilled 30-30 student (2.5,4)")
    # Fashion-MNIST.
    parser.add_argument("--train_examples", type=int, default=None,
                        help="Fashion-MNIST: train on the first N images (20000; 0: all "
                        "60000; --quick: all 1437 digits)")
    parser.add_argument("--test_examples", type=int, default=0,
                        help="evaluate on the first N test images, every part (0: all)")
    parser.add_argument("--teacher_epochs", type=int, default=None,
                        help="epochs of the resnet20 teacher (8; --quick: 10)")
    parser.add_argument("--student_epochs", type=int, default=None,
                        help="epochs of every small_cnn run: no KD, KD, mutual learning, "
                        "part 3 (5; --quick: 5)")
    parser.add_argument("--finetune_epochs", type=int, default=None,
                        help="fine-tuning epochs of the pruned resnet20, each variant (2; "
                        "--quick: 1)")
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    parser.add_argument("--qat_epochs", type=int, default=None,
                        help="fine-tuning epochs of the QAT student, each variant (2; "
                        "--quick: 1)")
    parser.add_argument("--qat_lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=4.0,
                        help="T of every Fashion-MNIST logits KD and of part 3 (4)")
    parser.add_argument("--hint_weight", type=float, default=0.1,
                        help="weight of the hint loss beside the logits loss's 1.0 (0.1)")
    parser.add_argument("--teacher_hint_layer", default="stage2_block3_relu2",
                        help="resnet20 layer the hints regress (stage2_block3_relu2: the "
                        "output of stage 2)")
    parser.add_argument("--student_hint_layer", default="relu2",
                        help="small_cnn layer guided by the hint (relu2)")
    parser.add_argument("--kl_weight", type=float, default=1.0,
                        help="MutualLearning(kl_weight=...) (1.0)")
    parser.add_argument("--target_macs", type=float, default=0.5,
                        help="fraction of the teacher's MACs the pruned student keeps (0.5)")
    parser.add_argument("--round_to", type=int, default=8,
                        help="prune_channels(round_to=...) of the pruned student (8)")
    parser.add_argument("--recalibration_examples", type=int, default=None,
                        help="random training images the pruned student's BatchNorm "
                        "statistics are recomputed on (2048; --quick: 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every number to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: the packaged 8x8 digits for every part, 1-10 epochs")
    parser.add_argument("--output", default=None,
                        help="markdown file to write this benchmark's section into")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"mnist_teacher_epochs": 10, "mnist_epochs": 10, "teacher_epochs": 10,
                    "student_epochs": 5, "finetune_epochs": 1, "qat_epochs": 1,
                    "train_examples": 0, "recalibration_examples": 512, "mnist_shift": 1}
    else:
        defaults = {"mnist_teacher_epochs": 10, "mnist_epochs": 8, "teacher_epochs": 8,
                    "student_epochs": 5, "finetune_epochs": 2, "qat_epochs": 2,
                    "train_examples": 20000, "recalibration_examples": 2048,
                    "mnist_shift": 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("mnist_teacher_epochs", "mnist_epochs", "teacher_epochs", "student_epochs",
                 "finetune_epochs", "qat_epochs", "batch_size", "round_to",
                 "recalibration_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("train_examples", "test_examples", "mnist_shift"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.mnist_shift >= (8 if args.quick else 28):
        parser.error(f"--mnist_shift={args.mnist_shift} must be smaller than the image size")
    for name in ("lr", "finetune_lr", "qat_lr", "temperature", "mnist_temperature"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{name} must be a finite number > 0, got {value}")
    if not 0.0 <= args.student_loss_weight < 1.0:
        parser.error(f"--student_loss_weight must be in [0, 1) (1 would switch the "
                     f"distillation off), got {args.student_loss_weight}")
    for name in ("hint_weight", "kl_weight"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name} must be a finite number >= 0, got {value}")
    if not 0.0 < args.target_macs <= 1.0:
        parser.error(f"--target_macs must be in (0, 1], got {args.target_macs}")
    args.small_temperatures = _temperatures(args.small_temperatures, "small_temperatures",
                                            parser)
    args.parts = cp_bench._names(args.parts, PARTS, "parts", parser)
    shape = (8, 8, 1) if args.quick else (28, 28, 1)
    if "fashion" in args.parts or "keras" in args.parts:
        teacher_names = _layer_names(models.resnet20(conv="conv", input_shape=shape,
                                                     num_classes=10))
        if args.teacher_hint_layer not in teacher_names:
            parser.error(f"--teacher_hint_layer={args.teacher_hint_layer!r} is not a layer of "
                         f"resnet20; e.g. {', '.join(n for n in teacher_names if 'relu2' in n)}")
        student_names = _layer_names(models.small_cnn(input_shape=shape, num_classes=10))
        if args.student_hint_layer not in student_names:
            parser.error(f"--student_hint_layer={args.student_hint_layer!r} is not a layer of "
                         f"small_cnn ({', '.join(student_names)})")
        keras.backend.clear_session()
    if not args.quick:
        if not args.data_dir:
            parser.error(f"MNIST / Fashion-MNIST not found: give --data_dir (a folder holding "
                         f"mnist.npz and fashion_mnist.npz) or set ${datasets.ENV_VAR}; or "
                         "--quick for the packaged digits.")
        needed = (["mnist"] if "mnist" in args.parts else []) + (
            ["fashion_mnist"] if "fashion" in args.parts or "keras" in args.parts else [])
        for name in needed:
            path = os.path.join(args.data_dir, f"{name}.npz")
            if not os.path.isfile(path):
                parser.error(f"{name} not found: no file {os.path.abspath(path)} (from "
                             f"--data_dir / ${datasets.ENV_VAR}={args.data_dir!r}).")
    return args


def _log(message):
    print(f"[distillation] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def mlp(hidden, input_shape, dropout=None, name="mlp"):
    """Flatten -> [Dropout] -> (Dense(h, ReLU) -> [Dropout]) per h -> Dense(10) "logits" ->
    Softmax "predictions"; dropout = (on the inputs, after each hidden layer) or None."""
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    if dropout:
        x = keras.layers.Dropout(dropout[0], name="input_dropout")(x)
    for i, units in enumerate(hidden, 1):
        x = keras.layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout[1], name=f"dropout{i}")(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    outputs = keras.layers.Softmax(name="predictions")(logits)
    return keras.Model(inputs, outputs, name=name)


def _logits_view(model):
    """The same layers up to "logits": training the view trains `model`."""
    return keras.Model(model.inputs, model.get_layer("logits").output,
                       name=f"{model.name}_logits")


def _mlp_key(hidden):
    return "-".join(str(h) for h in hidden)


def _mlp_label(hidden, inputs=784):
    return f"{inputs}-{_mlp_key(hidden)}-10"


def _qat_layer(qat, float_model, name):
    """The layer of `qat` that computes `name` of `float_model` (a ReLU is fused into the
    quantized convolution before it: relu2 -> quant_conv2)."""
    names = set(_layer_names(qat))
    if name in names:
        return name
    order = _layer_names(float_model)
    for candidate in reversed(order[: order.index(name) + 1]):
        if f"quant_{candidate}" in names:
            return f"quant_{candidate}"
    raise ValueError(f"no layer of the QAT model computes {name!r}: {', '.join(sorted(names))}")


def _weights_checksum(model):
    return float(sum(np.abs(w).sum(dtype=np.float64) for w in model.get_weights()))


# --------------------------------------------------------------------------- training


def _seed(args, offset):
    keras.utils.set_random_seed(args.seed + offset)


def _adam(lr, n, epochs, batch_size):
    steps = math.ceil(n / batch_size) * int(epochs)
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        lr, decay_steps=steps, alpha=COSINE_ALPHA))


def _last(history):
    return {k: float(v[-1]) for k, v in history.history.items() if v}


def train_plain(model, x, y, epochs, lr, args, order, shift=0):
    _seed(args, order)
    train_classifier(model, x, y, epochs, lr, batch_size=args.batch_size, augment_shift=shift,
                     seed=[args.seed, order])
    return {}


def train_kd(teacher, student, losses, weights, x, y, epochs, lr, args, order,
             student_loss=LOSS):
    """Distiller(teacher, student, losses, weights) trained like train_classifier."""
    distiller = Distiller(teacher, student, losses, distillation_loss_weights=weights,
                          student_loss_weight=args.student_loss_weight)
    distiller.compile(optimizer=_adam(lr, len(x), epochs, args.batch_size), loss=student_loss)
    _seed(args, order)
    history = distiller.fit(x, y, epochs=epochs, batch_size=args.batch_size, verbose=0)
    return _last(history)


def _kd_losses(kind, args, temperature, teacher_layer=None, student_layer=None):
    if kind == "logits":
        return [LogitsDistillation(temperature=temperature)], [1.0]
    return ([LogitsDistillation(temperature=temperature),
             HintDistillation(teacher_layer, student_layer)], [1.0, args.hint_weight])


# --------------------------------------------------------------------------- bookkeeping


class Part:
    """The rows of one part, in order, each with its numbers, seconds and errors."""

    def __init__(self, name):
        self.name = name
        self.rows = {}
        self.order = []
        self.seconds = {}
        self.errors = {}
        self.info = {}

    def row(self, key, **info):
        entry = {"key": key, "seconds": {}, "errors": {}, **info}
        self.rows[key] = entry
        self.order.append(key)
        return entry

    def get(self, key):
        return self.rows.get(key, {})

    def to_json(self):
        return {"rows": [self.rows[k] for k in self.order], "seconds": self.seconds,
                "errors": self.errors, "info": self.info}


def attempt(entry, what, fn, label):
    """fn() timed into entry["seconds"][what]; an exception is recorded, None returned."""
    start = time.perf_counter()
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 -- a failing variant is a result, reported
        entry["errors"][what] = _error_text(exc)
        _log(f"{label}: {what} failed: {entry['errors'][what]}")
        return None
    finally:
        entry["seconds"][what] = entry["seconds"].get(what, 0.0) + time.perf_counter() - start


def evaluate(entry, model, xt, yt, label, n_train=None, epochs=None):
    """Test accuracy and errors, params and MACs of `model` into `entry`."""
    start = time.perf_counter()
    try:
        pred = np.asarray(model.predict(xt, batch_size=512, verbose=0)).argmax(-1)
        entry["accuracy"] = float(np.mean(pred == yt))
        entry["test_errors"] = int(np.sum(pred != yt))
        entry["n_test"] = len(yt)
    except Exception as exc:  # noqa: BLE001
        entry["errors"]["evaluation"] = _error_text(exc)
    try:
        total = profile(model)["total"]
        entry["params"], entry["macs"] = int(total["params"]), int(total["macs"])
    except Exception as exc:  # noqa: BLE001
        entry["errors"]["profile"] = _error_text(exc)
    entry["seconds"]["evaluate"] = time.perf_counter() - start
    train_s = entry["seconds"].get("train")
    speed = (f", {n_train * epochs / train_s:.0f} training images/s"
             if train_s and n_train and epochs and "train" not in entry["errors"] else "")
    acc = entry.get("accuracy")
    _log(f"{label}: accuracy {'-' if acc is None else f'{acc:.4f}'} "
         f"({entry.get('test_errors', '-')} errors), params {entry.get('params', '-')}"
         + (f", trained in {train_s:.0f} s{speed}" if train_s else ""))


def evaluate_int8(entry, model, x, xt, yt, label):
    """The int8 .tflite file of a QAT model: bytes and test accuracy (ai_edge_litert)."""
    start = time.perf_counter()
    try:
        blob = export.to_tflite(model, x[:REPRESENTATIVE_EXAMPLES])
        entry["int8_bytes"] = len(blob)
        pred = export.run_tflite(blob, xt)[0].argmax(-1)
        entry["int8_accuracy"] = float(np.mean(pred == yt))
        entry["int8_errors"] = int(np.sum(pred != yt))
        _log(f"{label}: int8 .tflite {len(blob):,} B, accuracy {entry['int8_accuracy']:.4f}")
    except Exception as exc:  # noqa: BLE001
        entry["errors"]["int8 file"] = _error_text(exc)
        _log(f"{label}: int8 file failed: {entry['errors']['int8 file']}")
    entry["seconds"]["int8"] = time.perf_counter() - start


def _load(args, dataset):
    (x, y), (xt, yt) = datasets.load("digits" if args.quick else dataset,
                                     data_dir=None if args.quick else args.data_dir)
    if args.test_examples:
        xt, yt = xt[: args.test_examples], yt[: args.test_examples]
    return (x, y), (xt, yt)


# --------------------------------------------------------------------------- part 1: MNIST


def run_mnist(args, part):
    (x, y), (xt, yt) = _load(args, "mnist")
    part.info.update(dataset="digits" if args.quick else "mnist", n_train=len(x),
                     n_test=len(xt), shape=list(x.shape[1:]))
    _log(f"mnist part: {part.info['dataset']}, {len(x)} training / {len(xt)} test images")
    n, shape = len(x), x.shape[1:]
    inputs = part.info["inputs"] = int(np.prod(shape))

    entry = part.row("teacher", model=_mlp_label((1200, 1200), inputs), role="teacher",
                     variant=(f"{args.mnist_teacher_epochs} epoch(s), dropout "
                              f"{TEACHER_DROPOUT[0]:g} / {TEACHER_DROPOUT[1]:g}, shifts up to "
                              f"{args.mnist_shift} px"))
    _seed(args, SEED_TEACHER)
    teacher = mlp((1200, 1200), shape, dropout=TEACHER_DROPOUT, name="teacher_1200_1200")
    _log(f"mnist teacher: {args.mnist_teacher_epochs} epoch(s), shifts up to "
         f"{args.mnist_shift} px")
    ok = attempt(entry, "train", lambda: train_plain(
        teacher, x, y, args.mnist_teacher_epochs, args.lr, args, SEED_TEACHER_ORDER,
        shift=args.mnist_shift), "mnist teacher") is not None
    teacher_view = None
    if ok:
        evaluate(entry, teacher, xt, yt, "mnist teacher", n, args.mnist_teacher_epochs)
        teacher_view = _logits_view(teacher)

    for hidden, temperatures, init in (((800, 800), [args.mnist_temperature], SEED_INIT_A),
                                       ((30, 30), args.small_temperatures, SEED_INIT_SMALL)):
        label = _mlp_label(hidden, inputs)
        runs = [("alone", None)] + [("distilled", t) for t in temperatures]
        for kind, temperature in runs:
            key = f"{_mlp_key(hidden)} {kind}" + (f" T={temperature:g}" if temperature else "")
            entry = part.row(key, model=label, role="student", hidden=list(hidden),
                             variant=("trained alone" if kind == "alone" else
                                      f"distilled, T = {temperature:g}"),
                             temperature=temperature)
            _seed(args, init)
            student = mlp(hidden, shape, name=f"student_{'_'.join(map(str, hidden))}")
            entry["init_checksum"] = _weights_checksum(student)
            _log(f"mnist {key}: {args.mnist_epochs} epoch(s)")
            if kind == "alone":
                done = attempt(entry, "train", lambda s=student: train_plain(
                    s, x, y, args.mnist_epochs, args.lr, args, SEED_ORDER_STUDENT),
                    f"mnist {key}")
            elif teacher_view is None:
                entry["errors"]["train"] = "no teacher (its training failed)"
                continue
            else:
                done = attempt(entry, "train", lambda s=student, t=temperature: train_kd(
                    teacher_view, _logits_view(s), [LogitsDistillation(temperature=t)], [1.0],
                    x, y, args.mnist_epochs, args.lr, args, SEED_ORDER_STUDENT,
                    student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                    f"mnist {key}")
            if done is None:
                continue
            entry["history"] = done
            evaluate(entry, student, xt, yt, f"mnist {key}", n, args.mnist_epochs)
            keras.backend.clear_session()


# --------------------------------------------------------------------------- part 2 + 3


def run_fashion(args, part, kpart):
    """Part 2 (`part`, when "fashion" is asked) and part 3 (`kpart` or None)."""
    full = "fashion" in args.parts
    (x, y), (xt, yt) = _load(args, "fashion_mnist")
    if args.train_examples:
        x, y = x[: args.train_examples], y[: args.train_examples]
    n, shape = len(x), x.shape[1:]
    part.info.update(dataset="digits" if args.quick else "fashion_mnist", n_train=n,
                     n_test=len(xt), shape=list(shape), full=full)
    _log(f"fashion part: {part.info['dataset']}, {n} training / {len(xt)} test images"
         + ("" if full else " (only what part 3 needs)"))

    entry = part.row("teacher", student="resnet20", variant="teacher", role="teacher")
    _seed(args, SEED_TEACHER)
    teacher = models.resnet20(conv="conv", input_shape=shape, num_classes=10)
    _log(f"resnet20 teacher: {args.teacher_epochs} epoch(s) on {n} images")
    ok = attempt(entry, "train", lambda: train_plain(
        teacher, x, y, args.teacher_epochs, args.lr, args, SEED_TEACHER_ORDER),
        "resnet20 teacher") is not None
    if ok:
        evaluate(entry, teacher, xt, yt, "resnet20 teacher", n, args.teacher_epochs)
    else:
        teacher = None

    # The pruned student comes from the trained teacher before any Distiller freezes it
    # (Distiller sets teacher.trainable = False).
    pruned_base = None
    if full:
        entry = part.row("pruned/start", student="pruned", variant="start", role="start")
        if teacher is None:
            entry["errors"]["prune_channels"] = "no teacher (its training failed)"
        else:
            rng = np.random.default_rng([args.seed, SEED_SUBSET])
            subset = x[np.sort(rng.choice(n, min(args.recalibration_examples, n),
                                          replace=False))]

            def prune():
                pruned = prune_channels(teacher, target={"macs": args.target_macs},
                                        criterion="l1", round_to=args.round_to,
                                        seed=args.seed)
                report = pruned.channel_pruning_report
                entry["macs_reached"] = report.macs[1] / report.macs[0]
                entry["accuracy_before_recalibration"] = _accuracy(pruned, xt, yt)
                recalibrate_batchnorm(pruned, subset)
                return pruned

            pruned_base = attempt(entry, "prune_channels", prune, "pruned resnet20")
            if pruned_base is not None:
                evaluate(entry, pruned_base, xt, yt, "pruned resnet20 before fine-tuning")

    def student_run(student, kind, build, order, epochs, lr, key, hint_layer, int8=False):
        entry = part.row(key, student=student, variant=kind, role="student",
                         epochs=epochs, lr=lr)
        model = attempt(entry, "build", build, key)
        if model is None:
            return entry, None
        entry["init_checksum"] = _weights_checksum(model)
        _log(f"{key}: {epochs} epoch(s)")
        if kind == "none":
            done = attempt(entry, "train", lambda: train_plain(model, x, y, epochs, lr, args,
                                                               order), key)
        elif teacher is None:
            entry["errors"]["train"] = "no teacher (its training failed)"
            return entry, None
        else:
            def kd():
                layer = hint_layer(model) if kind == "hints" else None
                entry["hint_layers"] = [args.teacher_hint_layer, layer] if layer else None
                losses, weights = _kd_losses(kind, args, args.temperature,
                                             args.teacher_hint_layer, layer)
                return train_kd(teacher, model, losses, weights, x, y, epochs, lr, args,
                                order)
            done = attempt(entry, "train", kd, key)
        if done is None:
            return entry, None
        entry["history"] = done
        evaluate(entry, model, xt, yt, key, n, epochs)
        if int8:
            evaluate_int8(entry, model, x, xt, yt, key)
        return entry, model

    def small_cnn_builder(init, activation="softmax"):
        def build():
            _seed(args, init)
            return models.small_cnn(input_shape=shape, num_classes=10,
                                    classifier_activation=activation)
        return build

    # small_cnn: no KD (also peer A alone and the QAT start), logits, hints.
    _, small_none = student_run(
        "small_cnn", "none", small_cnn_builder(SEED_INIT_A), SEED_ORDER_STUDENT,
        args.student_epochs, args.lr, "small_cnn/none", None)
    kinds = ("logits", "hints") if full else ("logits",)
    for kind in kinds:
        student_run("small_cnn", kind, small_cnn_builder(SEED_INIT_A), SEED_ORDER_STUDENT, args.student_epochs, args.lr, f"small_cnn/{kind}",
                    lambda m: args.student_hint_layer)
        keras.backend.clear_session()
    # Peer B alone: the no-KD small_cnn from another seed (and the noise of part 3's goal).
    student_run("small_cnn_b", "none", small_cnn_builder(SEED_INIT_B), SEED_ORDER_STUDENT, args.student_epochs, args.lr, "small_cnn_b/none", None)

    if kpart is not None:
        start = time.perf_counter()
        run_keras(args, kpart, teacher, (x, y), (xt, yt), small_cnn_builder)
        kpart.seconds["total"] = time.perf_counter() - start

    if not full:
        return
    # Pruned resnet20: the same recalibrated start for each variant.
    for kind in KD_VARIANTS:
        def build_pruned():
            if pruned_base is None:
                raise ValueError("no pruned model (see pruned/start)")
            copy = keras.models.clone_model(pruned_base)
            copy.set_weights(pruned_base.get_weights())
            return copy
        student_run("pruned", kind, build_pruned, SEED_ORDER_PRUNED,
                    args.finetune_epochs, args.finetune_lr, f"pruned/{kind}",
                    lambda m: args.teacher_hint_layer)
        keras.backend.clear_session()
    # QAT: a fresh quantize_model copy of the no-KD small_cnn for each variant.
    float_small = models.small_cnn(input_shape=shape, num_classes=10)
    for kind in KD_VARIANTS:
        def build_qat():
            if small_none is None:
                raise ValueError("no trained no-KD small_cnn (see small_cnn/none)")
            return quantize_model(small_none)
        student_run("qat", kind, build_qat, SEED_ORDER_QAT, args.qat_epochs,
                    args.qat_lr, f"qat/{kind}",
                    lambda m: _qat_layer(m, float_small, args.student_hint_layer), int8=True)
        keras.backend.clear_session()
    # Deep mutual learning.
    run_dml(args, part, (x, y), (xt, yt), small_cnn_builder)


def run_dml(args, part, train, test, small_cnn_builder):
    (x, y), (xt, yt) = train, test
    entries = [part.row(f"dml/{p}", student=f"peer {p.upper()}", variant="mutual", role="dml",
                        epochs=args.student_epochs, lr=args.lr) for p in ("a", "b")]
    start = time.perf_counter()
    try:
        peers = [small_cnn_builder(SEED_INIT_A)(), small_cnn_builder(SEED_INIT_B)()]
        for entry, peer in zip(entries, peers):
            entry["init_checksum"] = _weights_checksum(peer)
        _log(f"mutual learning: 2 small_cnn peers, {args.student_epochs} epoch(s)")
        dml = MutualLearning(peers, kl_weight=args.kl_weight)
        dml.compile(_adam(args.lr, len(x), args.student_epochs, args.batch_size), LOSS)
        _seed(args, SEED_ORDER_STUDENT)
        history = dml.fit(x, y, epochs=args.student_epochs, batch_size=args.batch_size,
                          verbose=0)
    except Exception as exc:  # noqa: BLE001
        for entry in entries:
            entry["errors"]["train"] = _error_text(exc)
        _log(f"mutual learning failed: {_error_text(exc)}")
        return
    finally:
        seconds = time.perf_counter() - start
        for entry in entries:
            entry["seconds"]["train"] = seconds
        entries[1]["train_shared_with"] = "dml/a"  # one run trains both peers
    last = _last(history)
    for k, (entry, peer) in enumerate(zip(entries, peers)):
        entry["history"] = {key: v for key, v in last.items() if key.startswith(f"peer{k}")}
        evaluate(entry, peer, xt, yt, f"mutual learning peer {'AB'[k]}", 2 * len(x),
                 args.student_epochs)


def run_keras(args, kpart, teacher, train, test, small_cnn_builder):
    """keras.distillation.LogitsDistillation, object-form and default, logits models."""
    (x, y), (xt, yt) = train, test
    kpart.info.update(n_train=len(x), n_test=len(xt))
    check = kpart.row("teacher copy", variant="check", role="check")
    teacher_logits = None
    if teacher is None:
        check["errors"]["teacher"] = "no teacher (its training failed)"
    else:
        def copy_teacher():
            copy = models.resnet20(conv="conv", input_shape=x.shape[1:], num_classes=10,
                                   classifier_activation=None)
            copy.set_weights(teacher.get_weights())
            sample = xt[:512]
            probs = np.asarray(teacher.predict(sample, batch_size=512, verbose=0))
            logits = np.asarray(copy.predict(sample, batch_size=512, verbose=0))
            check["max_prob_difference"] = float(np.max(np.abs(
                keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)) - probs)))
            check["checked_images"] = len(sample)
            return copy
        teacher_logits = attempt(check, "copy", copy_teacher, "keras teacher copy")

    forms = (("object", lambda t: keras.distillation.LogitsDistillation(
                  temperature=t, loss=keras.losses.KLDivergence())),
             ("default", lambda t: keras.distillation.LogitsDistillation(temperature=t)))
    for form, make in forms:
        key = f"keras/{form}"
        entry = kpart.row(key, variant=form, role="student", epochs=args.student_epochs)
        if teacher_logits is None:
            entry["errors"]["train"] = "no teacher copy (see the teacher copy row)"
            continue
        student = attempt(entry, "build", small_cnn_builder(SEED_INIT_A, None), key)
        if student is None:
            continue
        entry["init_checksum"] = _weights_checksum(student)
        _log(f"{key}: keras LogitsDistillation ({form} form), {args.student_epochs} epoch(s)")
        done = attempt(entry, "train", lambda s=student, m=make: train_kd(
            teacher_logits, s, [m(args.temperature)], [1.0], x, y, args.student_epochs,
            args.lr, args, SEED_ORDER_STUDENT,
            student_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)), key)
        if done is None:
            continue
        entry["history"] = done
        evaluate(entry, student, xt, yt, key, len(x), args.student_epochs)
        keras.backend.clear_session()


# --------------------------------------------------------------------------- report


def _errors_cell(entry):
    if "test_errors" not in entry:
        return "-"
    return f"{entry['test_errors']:,} / {entry['n_test']:,}"


def _failed(entry):
    why = "; ".join(f"{k}: {_short(v)}" for k, v in entry.get("errors", {}).items())
    return f"error: {why or 'missing'}"


def _gap_closed(alone, distilled, teacher):
    """(errors alone - errors distilled) / (errors alone - errors teacher), or None."""
    keys = [e.get("test_errors") for e in (alone, distilled, teacher)]
    if None in keys or keys[0] <= keys[2]:  # no gap: the student alone is as good
        return None
    return (keys[0] - keys[1]) / (keys[0] - keys[2])


def _diff_pt(a, b):
    return "-" if a is None or b is None else f"{100 * (a - b):+.2f} pt"


def mnist_lines(args, part):
    teacher = part.get("teacher")
    lines = [("| Model | Training | Test accuracy | Test errors | Gap to the teacher closed | "
              "Params | MACs | Train s |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    alone = {}
    for key in part.order:
        e = part.rows[key]
        if e["role"] == "student" and e["variant"] == "trained alone":
            alone[e["model"]] = e
        if "accuracy" not in e:
            lines.append(f"| {e['model']} | {e['variant']} | {_failed(e)} |" + " - |" * 5)
            continue
        gap = "-"
        if e["role"] == "student" and e.get("temperature"):
            base = alone.get(e["model"], {})
            value = _gap_closed(base, e, teacher)
            gap = f"{100 * value:.0f}%" if value is not None else (
                "no gap (alone <= teacher)" if "test_errors" in base
                and "test_errors" in teacher else "-")
        lines.append(f"| {e['model']} | {e['variant']} | {_pct(e['accuracy'])} | "
                     f"{_errors_cell(e)} | {gap} | {_count(e.get('params'))} | "
                     f"{_count(e.get('macs'))} | {_s(e['seconds'].get('train', 0))} |")
    groups = [tuple(k for k in part.order if k.startswith(f"{h} "))
              for h in ("800-800", "30-30")]
    same = _same_init(part, groups)
    return lines + (["", same] if same else [])


def fashion_lines(args, part):
    lines = [("| Student | Training | Test accuracy | Test errors | vs no KD | int8 .tflite "
              "accuracy | int8 vs no KD | Params | MACs | Train s |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in part.order:
        e = part.rows[key]
        if e["role"] == "teacher":
            name, training = "resnet20 (teacher)", f"{args.teacher_epochs} epoch(s), no KD"
        elif e["role"] == "start":
            name = (f"resnet20 pruned to {args.target_macs:g} of the MACs (l1, round_to "
                    f"{args.round_to})")
            training = "after pruning + BatchNorm recalibration, not fine-tuned"
        elif e["role"] == "dml":
            name = f"small_cnn {e['student']}"
            training = (f"mutual learning, kl_weight {args.kl_weight:g} (one run trains "
                        "both peers)")
        else:
            name = ("small_cnn, seed B (peer B alone)" if e["student"] == "small_cnn_b"
                    else STUDENT_LABELS[e["student"]])
            training = VARIANT_LABELS[e["variant"]]
            if e["variant"] != "none":
                training += f", T = {args.temperature:g}"
        if "accuracy" not in e:
            lines.append(f"| {name} | {training} | {_failed(e)} |" + " - |" * 7)
            continue
        base = {}
        if e["role"] == "student" and e["variant"] != "none":
            base = part.get(f"{e['student']}/none")
        elif e["role"] == "dml":
            base = part.get("small_cnn/none" if e["key"] == "dml/a" else "small_cnn_b/none")
        lines.append(
            f"| {name} | {training} | {_pct(e['accuracy'])} | {_errors_cell(e)} | "
            f"{_diff_pt(e['accuracy'], base.get('accuracy')) if base else '-'} | "
            f"{_pct(e.get('int8_accuracy'))} | "
            f"{_diff_pt(e.get('int8_accuracy'), base.get('int8_accuracy')) if base else '-'} | "
            f"{_count(e.get('params'))} | {_count(e.get('macs'))} | "
            f"{_s(e['seconds'].get('train', 0)) if 'train' in e['seconds'] else '-'} |")
    start = part.get("pruned/start")
    notes = []
    if "macs_reached" in start:
        notes.append(f"The pruned student keeps {start['macs_reached']:.3f} of the teacher's "
                     f"MACs; its accuracy right after pruning was "
                     f"{_pct(start.get('accuracy_before_recalibration'))}, after the "
                     f"BatchNorm recalibration {_pct(start.get('accuracy'))}.")
    hints = [(STUDENT_LABELS[s], part.get(f"{s}/hints").get("hint_layers"))
             for s in STUDENTS]
    hints = [f"{s}: teacher {h[0]} -> student {h[1]}" for s, h in hints if h]
    if hints:
        notes.append("Hint layers: " + "; ".join(hints) + ".")
    same = _same_init(part, [("small_cnn/none", "small_cnn/logits", "small_cnn/hints",
                              "dml/a"), ("small_cnn_b/none", "dml/b")])
    if same:
        notes.append(same)
    if notes:
        lines += ["", *notes]
    return lines


def _same_init(part, groups, extra=None):
    """A sentence saying whether the compared runs started from identical weights."""
    bits = []
    for group in groups:
        sums = [(k, part.get(k).get("init_checksum")) for k in group]
        if extra:
            sums += [(k, extra.get(k).get("init_checksum")) for k in extra.order
                     if k.startswith("keras/")]
        sums = [(k, v) for k, v in sums if v is not None]
        if len(sums) < 2:
            continue
        equal = all(v == sums[0][1] for _, v in sums)
        bits.append(f"{', '.join(k for k, _ in sums)}: "
                    + ("identical" if equal else "DIFFERENT"))
    if not bits:
        return ""
    return ("Initial weights (sum of |w| of the built model, before training) of the runs "
            "compared: " + "; ".join(bits) + ".")


def keras_lines(args, kpart, fpart):
    ours = fpart.get("small_cnn/logits")
    lines = [("| Implementation | Models | Test accuracy | Test errors | vs tfcompress | "
              "Last-epoch distillation loss | Last-epoch student loss | Train s |"),
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = [("tfcompress `LogitsDistillation(temperature=T)`",
             "softmax outputs (log p used as logits)", ours)]
    rows += [("keras `LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())`",
              "logits", kpart.get("keras/object")),
             ("keras `LogitsDistillation(temperature=T)` (default loss=\"kl_divergence\")",
              "logits", kpart.get("keras/default"))]
    for name, kind, e in rows:
        if "accuracy" not in e:
            lines.append(f"| {name} | {kind} | {_failed(e)} |" + " - |" * 5)
            continue
        hist = e.get("history", {})

        def loss(k, hist=hist):
            return "-" if k not in hist else f"{hist[k]:.4f}"
        lines.append(f"| {name} | {kind} | {_pct(e['accuracy'])} | {_errors_cell(e)} | "
                     f"{'-' if e is ours else _diff_pt(e['accuracy'], ours.get('accuracy'))} | "
                     f"{loss('distillation_loss')} | {loss('student_loss')} | "
                     f"{_s(e['seconds'].get('train', 0))} |")
    check = kpart.get("teacher copy")
    notes = []
    if "max_prob_difference" in check:
        notes.append(f"Teacher for keras' loss: resnet20(classifier_activation=None) holding "
                     f"the trained teacher's weights; softmax of its outputs vs the teacher's "
                     f"probabilities on {check['checked_images']} test images: max |difference| "
                     f"{check['max_prob_difference']:.1e}.")
    same = _same_init(fpart, [("small_cnn/logits",)], extra=kpart)
    if same:
        notes.append(same)
    notes.append("Distillation loss: the Distiller's distillation_loss metric, the weighted "
                 "sum before the (1 - student_loss_weight) factor, mean over the last epoch.")
    return lines + ["", *notes]


def time_lines(args, parts):
    lines = []
    for part in parts:
        if part is None:
            continue
        bits = []
        for key in part.order:
            s = part.rows[key]["seconds"]
            shared = part.rows[key].get("train_shared_with")
            shown = [f"{what} {_s(v)}" for what, v in s.items()
                     if v >= 0.5 and not (shared and what == "train")]
            if shared:
                shown.append(f"trained in the {shared} run")
            if shown:
                bits.append(f"{key}: " + ", ".join(shown))
        if "total" in part.seconds:
            bits.append(f"part total {_s(part.seconds['total'])}")
        if bits:
            lines.append(f"- {part.name}: " + "; ".join(bits))
    return lines


def _noise(fpart):
    a = fpart.get("small_cnn/none").get("accuracy")
    b = fpart.get("small_cnn_b/none").get("accuracy")
    if a is None or b is None:
        return None, None
    std = statistics.stdev([a, b])
    return std, max(GOAL_NOISE_STDS * std, GOAL_NOISE_FLOOR)


def goal_lines(args, mpart, fpart, kpart):
    lines = []
    add = lines.append
    scope = (" (quick mode: 8x8 digits and 1-10 epochs; not the benchmark's setting)"
             if args.quick else "")
    if mpart is not None:
        teacher = mpart.get("teacher")
        key = f"800-800 distilled T={args.mnist_temperature:g}"
        alone, distilled = mpart.get("800-800 alone"), mpart.get(key)
        gap = _gap_closed(alone, distilled, teacher)
        missing = [name for name, e in (("teacher", teacher), ("800-800 alone", alone),
                                        ("800-800 distilled", distilled))
                   if "test_errors" not in e]
        if missing:
            add(f"- MNIST: distilled 800-800 closes >= {GOAL_GAP_CLOSED:.0%} of the error gap "
                f"-> NOT MET (no result: {', '.join(missing)})" + scope)
        elif gap is None:
            add(f"- MNIST: distilled 800-800 closes >= {GOAL_GAP_CLOSED:.0%} of the error gap "
                f"-> NOT MET (no gap: the student alone made {alone['test_errors']} errors, "
                f"the teacher {teacher['test_errors']})" + scope)
        else:
            add(f"- MNIST: 800-800 student {alone['test_errors']} errors alone, "
                f"{distilled['test_errors']} distilled at T = {args.mnist_temperature:g}, "
                f"teacher {teacher['test_errors']}: {100 * gap:.0f}% of the gap closed (goal: "
                f">= {GOAL_GAP_CLOSED:.0%}; Hinton et al.: 91%) -> "
                + ("MET" if gap >= GOAL_GAP_CLOSED - 1e-12 else "NOT MET") + scope)
        small = [(t, _gap_closed(mpart.get("30-30 alone"),
                                 mpart.get(f"30-30 distilled T={t:g}"),
                                 teacher)) for t in args.small_temperatures]
        small = [f"T = {t:g}: {100 * g:.0f}%" for t, g in small if g is not None]
        if small:
            add("  30-30 student, gap to the teacher closed (no goal): " + ", ".join(small)
                + ".")
    if fpart is not None and fpart.info.get("full"):
        for s in STUDENTS:
            none = fpart.get(f"{s}/none")
            kd = {k: fpart.get(f"{s}/{k}") for k in ("logits", "hints")}
            kd = {k: e for k, e in kd.items() if "accuracy" in e}
            kinds = [("Keras accuracy", "accuracy")]
            if s == "qat":
                kinds.append(("int8 .tflite accuracy", "int8_accuracy"))
            for what, field in kinds:
                scored = {k: e[field] for k, e in kd.items() if e.get(field) is not None}
                if none.get(field) is None or not scored:
                    why = ("no no-KD result" if none.get(field) is None else
                           "no KD result")
                    add(f"- Fashion-MNIST {STUDENT_LABELS[s]}: KD beats no KD ({what}) -> "
                        f"NOT MET ({why}; see the errors)" + scope)
                    continue
                best = max(scored, key=lambda k: (scored[k], k == "logits"))
                gain = scored[best] - none[field]
                add(f"- Fashion-MNIST {STUDENT_LABELS[s]} ({what}): best KD "
                    f"{VARIANT_LABELS[best]} {_pct(scored[best])} vs no KD "
                    f"{_pct(none[field])} ({100 * gain:+.2f} pt; "
                    + ", ".join(f"{VARIANT_LABELS[k]} {_pct(v)}" for k, v in scored.items())
                    + ") (goal: above) -> " + ("MET" if gain > 0 else "NOT MET") + scope)
        peers = [("A", fpart.get("dml/a"), fpart.get("small_cnn/none")),
                 ("B", fpart.get("dml/b"), fpart.get("small_cnn_b/none"))]
        if any("accuracy" not in d or "accuracy" not in a for _, d, a in peers):
            add("- Fashion-MNIST mutual learning beats each peer trained alone -> NOT MET "
                "(missing results; see the errors)" + scope)
        else:
            ok = all(d["accuracy"] > a["accuracy"] for _, d, a in peers)
            add("- Fashion-MNIST mutual learning vs each peer trained alone: "
                + "; ".join(f"peer {p} {_pct(d['accuracy'])} vs {_pct(a['accuracy'])} "
                            f"({_diff_pt(d['accuracy'], a['accuracy'])})"
                            for p, d, a in peers)
                + " (goal: above, both) -> " + ("MET" if ok else "NOT MET") + scope)
    if kpart is not None:
        ours, theirs = fpart.get("small_cnn/logits"), kpart.get("keras/object")
        std, tol = _noise(fpart)
        if "accuracy" not in ours or "accuracy" not in theirs or tol is None:
            add("- Our logits KD equals keras' (object-form KL) within run-to-run noise -> "
                "NOT MET (missing results; see the errors)" + scope)
        else:
            diff = ours["accuracy"] - theirs["accuracy"]
            which = ("2 x std" if GOAL_NOISE_STDS * std >= GOAL_NOISE_FLOOR else
                     f"the {100 * GOAL_NOISE_FLOOR:.1f} pt floor")
            add(f"- tfcompress logits KD {_pct(ours['accuracy'])} vs keras "
                f"LogitsDistillation(loss=KLDivergence()) {_pct(theirs['accuracy'])}: "
                f"|difference| {100 * abs(diff):.2f} pt (goal: <= {100 * tol:.2f} pt = "
                f"max(2 x {100 * std:.2f} pt, {100 * GOAL_NOISE_FLOOR:.1f} pt), where "
                f"{100 * std:.2f} pt is the standard deviation of the two no-KD small_cnn "
                f"runs with different seeds (peer A alone, peer B alone); {which} governs) -> "
                + ("MET" if abs(diff) <= tol + 1e-12 else "NOT MET") + scope)
        default = kpart.get("keras/default")
        if "accuracy" in default and "accuracy" in theirs:
            add(f"  Observation (no goal): keras' default LogitsDistillation(temperature=T) "
                f"(loss=\"kl_divergence\") {_pct(default['accuracy'])}, "
                f"{_diff_pt(default['accuracy'], theirs['accuracy'])} vs its object form.")
    n_test = max([p.info.get("n_test", 0) for p in (mpart, fpart) if p is not None] or [0])
    if n_test:
        picked = (" (the better of logits / hints is picked on the test set itself)"
                  if fpart is not None and fpart.info.get("full") else "")
        add(f"  Every comparison is one run per variant{picked}; one test image is "
            f"{100 / n_test:.3f} pt.")
    return lines


def build_report(args, machine, mpart, fpart, kpart, load, started, wall, git):
    lines = machine.report_header(started, wall)
    add = lines.append
    from importlib import metadata

    state = git[0] if git[0] == git[1] else f"{git[0]} at the start, {git[1]} at the end"
    add(f"- ai-edge-litert {metadata.version('ai-edge-litert')}; tfcompress {state}")
    add(f"- Load average (1, 5, 15 min) at start: {load[0]}; at end: {load[1]}"
        + (" (quick mode)" if args.quick else ""))
    add("")
    add("### Setup")
    add("")
    add("Every comparable pair of runs starts from the same initial weights (the same seed "
        "before the model is built) and uses the same epochs, learning-rate schedule (Adam, "
        f"cosine decay to {COSINE_ALPHA:.0%} over the stage) and batch order "
        f"(keras.utils.set_random_seed before fit); batch {args.batch_size}; seed "
        f"{args.seed}. Plain training: deep_compression.train_classifier. KD: "
        "keras.distillation.Distiller (tfcompress.distillation.Distiller) with "
        f"student_loss_weight {args.student_loss_weight:g}: loss = "
        f"{args.student_loss_weight:g} x cross-entropy(labels) + "
        f"{1 - args.student_loss_weight:g} x (the weighted distillation losses); "
        "tfcompress's LogitsDistillation(T) is T^2 x KL(softmax(t / T) || softmax(s / T)).")
    add("")
    if mpart is not None:
        info = mpart.info
        data = "the 8x8 digits (quick mode)" if args.quick else "MNIST"
        inputs = info.get("inputs", 784)
        add(f"Part 1, {data}, {info.get('n_train', '-')} training / {info.get('n_test', '-')} "
            f"test images: teacher {_mlp_label((1200, 1200), inputs)} (ReLU; dropout "
            f"{TEACHER_DROPOUT[0]:g} on the inputs, {TEACHER_DROPOUT[1]:g} after each hidden "
            f"layer; no weight constraints), {args.mnist_teacher_epochs} epoch(s) on images "
            f"shifted by up to {args.mnist_shift} pixel(s) per axis (new offsets every "
            f"epoch, datasets.random_shift), Adam {args.lr:g}. Students "
            f"{_mlp_label((800, 800), inputs)} and {_mlp_label((30, 30), inputs)} (no "
            "regularization), "
            f"{args.mnist_epochs} epoch(s) on the unshifted images, Adam {args.lr:g}, alone "
            f"or distilled with LogitsDistillation(T), T = {args.mnist_temperature:g} for "
            f"800-800, T in {{{', '.join(f'{t:g}' for t in args.small_temperatures)}}} for "
            "30-30; the Distiller sees teacher and student through their \"logits\" layer "
            "(the layer before the final Softmax), so the soft targets come from the "
            "teacher's logits; student loss: cross-entropy from the logits. The paper gives "
            "no epoch counts for these nets (its teacher follows the dropout recipe of its "
            "reference [5], with weight constraints); this run used the epochs above.")
        add("")
    if fpart is not None:
        info = fpart.info
        data = "the 8x8 digits (quick mode)" if args.quick else "Fashion-MNIST"
        add(f"Part 2, {data}, {info.get('n_train', '-')} training / {info.get('n_test', '-')} "
            f"test images: teacher resnet20 (conv=\"conv\"), {args.teacher_epochs} epoch(s), "
            f"Adam {args.lr:g}. Students, each with no KD, logits KD "
            f"(LogitsDistillation(temperature={args.temperature:g})) and hints + logits KD "
            f"([LogitsDistillation(T), HintDistillation(teacher layer, student layer)], "
            f"weights [1, {args.hint_weight:g}], regressor \"auto\"): small_cnn, "
            f"{args.student_epochs} epoch(s), Adam {args.lr:g}; resnet20 pruned by "
            f"prune_channels(trained teacher, target={{\"macs\": {args.target_macs:g}}}, "
            f"criterion=\"l1\", round_to={args.round_to}) + recalibrate_batchnorm on "
            f"{args.recalibration_examples} random training images, then "
            f"{args.finetune_epochs} epoch(s), Adam {args.finetune_lr:g}, from the same start "
            f"for each variant; int8 QAT small_cnn: quantize_model(the no-KD small_cnn), "
            f"fine-tuned {args.qat_epochs} epoch(s), Adam {args.qat_lr:g}, its int8 .tflite "
            f"file (export.to_tflite(qat, x_train[:{REPRESENTATIVE_EXAMPLES}]), int8 I/O) run "
            "by ai_edge_litert (export.run_tflite). Mutual learning: "
            f"MutualLearning([peer A, peer B], kl_weight={args.kl_weight:g}), "
            f"{args.student_epochs} epoch(s), Adam {args.lr:g}; peer A starts from the no-KD "
            "small_cnn's initial weights, peer B from another seed (peer B alone: that seed "
            "trained without KD). vs no KD: the same student trained without KD (for the "
            "peers: the peer trained alone)."
            + ("" if info.get("full") else " Only the rows part 3 needs were run."))
        add("")
    if kpart is not None:
        add(f"Part 3: keras.distillation.Distiller with keras.distillation.LogitsDistillation("
            f"temperature={args.temperature:g}), once with loss=keras.losses.KLDivergence() "
            "(the object form) and once with its default loss=\"kl_divergence\" (resolved to "
            "the function keras.losses.kl_divergence: Keras 3.15 then applies neither the "
            "softmax nor T^2), on the teacher, data, small_cnn initial weights, epochs, "
            "schedule and batch order of the tfcompress logits-KD small_cnn of part 2. Keras' "
            "loss takes logits, so teacher and student are the logits versions "
            "(classifier_activation=None; the teacher holds the trained teacher's weights); "
            "student loss SparseCategoricalCrossentropy(from_logits=True). Noise: the "
            "standard deviation of the no-KD small_cnn over the two seeds of part 2.")
        add("")
    add("Published anchors (other settings and much longer training; not the runs above):")
    add("")
    for anchor in ANCHORS:
        add(f"- {anchor}")
    add("")
    add("### Results")
    add("")
    if mpart is not None:
        add("Part 1, Hinton et al.'s MNIST table:")
        add("")
        lines.extend(mnist_lines(args, mpart))
        add("")
    if fpart is not None:
        add("Part 2, Fashion-MNIST students:")
        add("")
        lines.extend(fashion_lines(args, fpart))
        add("")
    if kpart is not None:
        add("Part 3, keras.distillation's LogitsDistillation on the small_cnn student:")
        add("")
        lines.extend(keras_lines(args, kpart, fpart))
        add("")
    times = time_lines(args, (mpart, fpart, kpart))
    if times:
        add("Wall time per stage:")
        add("")
        lines.extend(times)
    errors = []
    for part in (mpart, fpart, kpart):
        if part is None:
            continue
        for what, text in part.errors.items():
            errors.append(_error_item(f"{part.name} {what}", text))
        for key in part.order:
            for what, text in part.rows[key]["errors"].items():
                errors.append(_error_item(f"{part.name} {key} {what}", text))
    if errors:
        add("")
        add("Errors (full text):")
        add("")
        lines.extend(errors)
    add("")
    add("### Goals (computed from the numbers above)")
    add("")
    lines.extend(goal_lines(args, mpart, fpart, kpart))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    machine = _load_benchmark("layers")
    started = datetime.datetime.now().astimezone()
    load_before = machine._loadavg()
    git_before = machine.git_state()
    t0 = time.perf_counter()

    mpart = fpart = kpart = None
    if "mnist" in args.parts:
        mpart = Part("mnist")
        start = time.perf_counter()
        try:
            run_mnist(args, mpart)
        except Exception as exc:  # noqa: BLE001 -- e.g. the data failing to load
            mpart.errors["run"] = _error_text(exc)
            _log(f"mnist part failed: {_error_text(exc)}")
        mpart.seconds["total"] = time.perf_counter() - start
        keras.backend.clear_session()
    if "fashion" in args.parts or "keras" in args.parts:
        fpart = Part("fashion")
        kpart = Part("keras") if "keras" in args.parts else None
        fpart.info["full"] = "fashion" in args.parts
        start = time.perf_counter()
        try:
            run_fashion(args, fpart, kpart)
        except Exception as exc:  # noqa: BLE001
            fpart.errors["run"] = _error_text(exc)
            _log(f"fashion part failed: {_error_text(exc)}")
        fpart.seconds["total"] = time.perf_counter() - start
        keras.backend.clear_session()

    wall = time.perf_counter() - t0
    report = build_report(args, machine, mpart, fpart, kpart,
                          (load_before, machine._loadavg()), started, wall,
                          (git_before, machine.git_state()))
    print(report)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("output", "json")}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "started": started.isoformat(), "wall_seconds": wall,
                       "parts": {p.name: p.to_json() for p in (mpart, fpart, kpart)
                                 if p is not None}}, f, indent=2, default=str)
        _log(f"wrote {args.json}")
    if args.output:
        machine.write_section(args.output, report, BEGIN_MARK, END_MARK, SECTION_TITLE)
        _log(f"wrote section into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
