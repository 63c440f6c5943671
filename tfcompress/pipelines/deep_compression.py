"""The Deep Compression pipeline: prune -> retrain -> cluster -> fine-tune -> code.

Han, Mao, Dally. "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016, arXiv:1510.00149.

    1. Pruning (sec. 2): small-magnitude weights are removed while the network
       retrains (`tfcompress.pruning`, a polynomial schedule from 0 to the
       per-layer target, then retraining at the target).
    2. Trained quantization (sec. 3): the surviving weights of each layer share
       k centroids found by k-means (linear initialization); the centroids are
       fine-tuned with the summed gradients of their members
       (`tfcompress.clustering`).
    3. Huffman coding (sec. 4): indices and sparse offsets are Huffman coded in
       the container of `tfcompress.coding`.

`run(model, train, test, config)` runs the three stages on a trained float
model and returns a `DeepCompressionResult` with the accuracy after every
stage, the compressed model and the per-layer compression report.
"""

import dataclasses
import numbers
import time

import keras
import numpy as np

from tfcompress import clustering, coding, datasets, pruning
from tfcompress.core.graph import ModelGraph
from tfcompress.core.traits import has_kernels, kernel_variables

__all__ = [
    "AUTO_SPARSITIES",
    "COSINE_ALPHA",
    "DEFAULT_CLUSTERS",
    "DEFAULT_SPARSITY",
    "LEARNING_RATE_DECAYS",
    "MODEL_CLUSTERS",
    "PAPER_SPARSITY",
    "DeepCompressionConfig",
    "DeepCompressionResult",
    "default_targets",
    "run",
    "train_classifier",
]

# Fraction of weights the paper prunes per layer (Table 4 and Table 5: weights
# kept 8% / 9% / 26% for LeNet-300-100, 66% / 12% / 8% / 19% for LeNet-5).
PAPER_SPARSITY = {
    "lenet_300_100": {"fc1": 0.92, "fc2": 0.91, "predictions": 0.74},
    "lenet5": {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "predictions": 0.81},
}
# Our targets: pruned harder where the paper's own numbers show slack (the
# 400k / 235k-weight first fully connected layers), which is where the size is.
DEFAULT_SPARSITY = {
    "lenet_300_100": {"fc1": 0.96, "fc2": 0.92, "predictions": 0.75},
    "lenet5": {"conv1": 0.40, "conv2": 0.90, "fc1": 0.97, "predictions": 0.85},
}
# Clusters per layer (the paper: 6 bits for LeNet's layers; 5 bits suffice here).
DEFAULT_CLUSTERS = 32
# Per model: 4 bits (16 clusters) for the 235k-weight fc1 of LeNet-300-100, where
# most of its bits are.
MODEL_CLUSTERS = {
    "lenet_300_100": {"fc1": 16, "fc2": 32, "predictions": 32},
    "lenet5": DEFAULT_CLUSTERS,
}
LEARNING_RATE_DECAYS = ("cosine", "constant")
# Sparsities a sparsity="auto" sensitivity analysis tries per layer.
AUTO_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
# Cosine decay ends at this fraction of the initial learning rate.
COSINE_ALPHA = 0.01


def default_targets(model_name):
    """(sparsity, clusters) this module uses for a model of tfcompress.models.

    Args:
        model_name: e.g. "lenet_300_100"; other names get 90% sparsity in every
            layer and `DEFAULT_CLUSTERS`.

    Returns:
        (a fraction or {layer name: fraction}, an int or {layer name: k}); the
        dicts are copies.

    Example:
        >>> default_targets("lenet5")[1]
        32
    """
    sparsity = DEFAULT_SPARSITY.get(model_name, 0.9)
    clusters = MODEL_CLUSTERS.get(model_name, DEFAULT_CLUSTERS)
    return tuple(dict(v) if isinstance(v, dict) else v for v in (sparsity, clusters))


@dataclasses.dataclass
class DeepCompressionConfig:
    """Settings of the pipeline.

    Attributes:
        sparsity: fraction of weights to prune, one float for every prunable
            layer or a dict {layer name: fraction}; each in [0, 1). Or "auto":
            per-layer targets from a weight sensitivity analysis of the trained
            model (`tfcompress.sensitivity_analysis`, measured on the last
            `sensitivity_examples` training examples): each layer's largest
            sparsity that costs at most `max_accuracy_drop` accuracy alone.
        max_accuracy_drop: with sparsity="auto", the accuracy a layer may lose
            (a fraction, 0.01 = one point).
        sensitivity_examples: with sparsity="auto", how many training examples
            (the last ones) the sensitivity analysis evaluates on.
        clusters: centroids per layer (int >= 2, or a dict {layer name: k}).
        cluster_init: "linear" (the paper's best), "density", "random" or "kmeans++".
        prune_epochs: epochs during which sparsity rises from 0 to the target.
        retrain_epochs: further epochs at the target sparsity.
        finetune_epochs: epochs of centroid fine-tuning.
        batch_size: training batch size.
        learning_rate: Adam learning rate of pruning and retraining.
        finetune_learning_rate: Adam learning rate of centroid fine-tuning.
        learning_rate_decay: "cosine" (each stage decays its rate to 1% of
            the start along a cosine, Loshchilov & Hutter 2017) or "constant".
        augment_shift: moves every training image by a random offset of up
            to this many pixels per axis in each epoch (`datasets.random_shift`;
            0: no augmentation; image inputs (N, H, W, C) only).
        index_bits: bits of a sparse offset (None: 8 for conv, 5 for dense, as
            in the paper).
        seed: seed of the clustering initialization.
    """

    sparsity: object = 0.9
    clusters: object = DEFAULT_CLUSTERS
    cluster_init: str = "linear"
    prune_epochs: int = 4
    retrain_epochs: int = 8
    finetune_epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    learning_rate_decay: str = "cosine"
    augment_shift: int = 0
    index_bits: object = None
    seed: int = 0
    max_accuracy_drop: float = 0.01
    sensitivity_examples: int = 2000

    def __post_init__(self):
        for name in ("prune_epochs", "retrain_epochs", "finetune_epochs", "augment_shift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(
            self.batch_size, numbers.Integral
        ) or self.batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive integer. Received: batch_size={self.batch_size!r}"
            )
        for name in ("learning_rate", "finetune_learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={value!r}")
        _check_decay(self.learning_rate_decay)
        if (isinstance(self.max_accuracy_drop, bool)
                or not isinstance(self.max_accuracy_drop, numbers.Real)
                or not self.max_accuracy_drop >= 0):
            raise ValueError(
                "`max_accuracy_drop` must be a number >= 0. "
                f"Received: max_accuracy_drop={self.max_accuracy_drop!r}"
            )
        if (isinstance(self.sensitivity_examples, bool)
                or not isinstance(self.sensitivity_examples, numbers.Integral)
                or self.sensitivity_examples < 1):
            raise ValueError(
                "`sensitivity_examples` must be a positive integer. "
                f"Received: sensitivity_examples={self.sensitivity_examples!r}"
            )
        if isinstance(self.sparsity, str):
            if self.sparsity != "auto":
                raise ValueError(
                    "`sparsity` must be a fraction in [0, 1), a dict {layer: fraction} or "
                    f"'auto'. Received: sparsity={self.sparsity!r}"
                )
            return
        fractions = self.sparsity.values() if isinstance(self.sparsity, dict) else [self.sparsity]
        for value in fractions:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                0.0 <= value < 1.0
            ):
                raise ValueError(
                    f"`sparsity` values must be in [0, 1). Received: sparsity={self.sparsity!r}"
                )


def _clusters_within_values(model, clusters, say):
    """`clusters`, with each layer's k lowered to the distinct non-zero values its
    kernels kept after pruning (k-means cannot have more clusters than values; with
    k equal to them each value is its own centroid, so sharing loses nothing there).

    Returns `clusters` itself when no layer needs it, else a dict {layer: k} of every
    layer it covers (a layer left with fewer than 2 distinct values is not clustered).
    """
    graph = ModelGraph(model)
    covered = {}
    for layer in graph.layers:
        name = graph.name_of(layer)
        if isinstance(layer, keras.Model) or not has_kernels(layer):
            continue
        k = clusters.get(name) if isinstance(clusters, dict) else clusters
        if k is not None:
            covered[name] = (k, min(int(np.unique(v[v != 0]).size) for v in (
                np.asarray(var) for var in kernel_variables(layer))))
    if all(k <= distinct for k, distinct in covered.values()):
        return clusters
    result = {}
    for name, (k, distinct) in covered.items():
        if k > distinct:
            say(f"  weight sharing: layer {name!r} kept {distinct} distinct non-zero "
                f"weights after pruning, fewer than {k} clusters: "
                + (f"{distinct} clusters (each value its own)" if distinct >= 2
                   else "not clustered"))
        if min(k, distinct) >= 2:
            result[name] = min(k, distinct)
    return result


@dataclasses.dataclass
class DeepCompressionResult:
    """What `run` produced.

    Attributes:
        model: the compressed float model (pruned weights exactly zero, at most
            `clusters` distinct non-zero values per kernel), no wrapper layers.
        pruned_model: the model after pruning and retraining (before clustering).
        accuracy: test accuracy after each stage: "float", "pruned", "clustered".
        report: `tfcompress.coding.CompressionReport` of `model`.
        sparsity: per-kernel sparsity of `model` (`pruning.sparsity_report`).
        seconds: wall time of each stage.
        sensitivity: with sparsity="auto", the `SensitivityResult` the per-layer
            targets came from (else None).
        histories: {stage: Keras history dict} of the training stages, in order
            ("pruning and retraining", "centroid fine-tuning").
    """

    model: keras.Model
    pruned_model: keras.Model
    accuracy: dict
    report: object
    sparsity: list
    seconds: dict
    sensitivity: object = None
    histories: dict = dataclasses.field(default_factory=dict)


def _evaluate(model, data, batch_size=512):
    x, y = data
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return float((np.asarray(probs).argmax(-1) == np.asarray(y)).mean())


def _check_decay(value):
    if value not in LEARNING_RATE_DECAYS:
        raise ValueError(
            "`learning_rate_decay` must be one of "
            f"{', '.join(repr(d) for d in LEARNING_RATE_DECAYS)}. "
            f"Received: learning_rate_decay={value!r}"
        )


def train_classifier(
    model, x, y, epochs, learning_rate=1e-3, *, batch_size=128, learning_rate_decay="cosine",
    augment_shift=0, seed=0, callbacks=(), verbose=0, distillation=None,
):
    """Compiles `model` (Adam, sparse categorical cross-entropy) and trains it.

    The training recipe of every stage of `run`, public so that the float model
    can be trained the same way. With `learning_rate_decay="cosine"` the rate
    follows `lr * (a + (1 - a) * (1 + cos(pi * t / T)) / 2)`, a = 0.01, over the
    T steps of these epochs. With `augment_shift > 0` every epoch trains on a
    fresh `datasets.random_shift(x, augment_shift)` copy (one `fit` call per
    epoch; optimizer and callback state carry over).

    Args:
        model: a Keras classifier with softmax outputs.
        x, y: training images and integer labels.
        epochs: number of epochs (0: compile only).
        learning_rate: initial Adam learning rate.
        batch_size: batch size.
        learning_rate_decay: "cosine" or "constant".
        augment_shift: largest random shift in pixels (0: none).
        seed: seed of the shifts (an int, or a sequence of ints, as for
            `numpy.random.default_rng`).
        callbacks: Keras callbacks for `fit`.
        verbose: `fit` verbosity.
        distillation: None, or the keyword arguments of a
            `keras.distillation.Distiller` other than the student ("teacher",
            "distillation_losses", optionally "distillation_loss_weights" and
            "student_loss_weight"): `model` is then trained as its student (e.g. with
            `tfcompress.distillation.LogitsDistillation`), with the same optimizer,
            schedule, shifts and callbacks, and compiled alone afterwards.

    Returns:
        The training history: {metric name: [value per epoch]}.

    Raises:
        ValueError: for an unknown decay, a negative number of epochs, or an
            invalid shift (from `datasets.random_shift`).

    Example:
        >>> history = train_classifier(models.lenet_300_100(), x, y, epochs=20,
        ...                            augment_shift=1)
    """
    _check_decay(learning_rate_decay)
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"`epochs` must be an integer >= 0. Received: epochs={epochs!r}")
    steps = int(np.ceil(len(x) / batch_size)) * int(epochs)
    schedule = learning_rate
    if learning_rate_decay == "cosine" and steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=steps, alpha=COSINE_ALPHA
        )
    optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    trained = model
    if distillation is not None and epochs:
        trained = keras.distillation.Distiller(student=model, **distillation)
        trained.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"])
    history = {}
    if not epochs:
        return history
    if not augment_shift:
        fitted = trained.fit(x, y, batch_size=batch_size, epochs=epochs,
                             callbacks=list(callbacks), verbose=verbose)
        history = dict(fitted.history)
    else:
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            shifted = datasets.random_shift(x, augment_shift, rng)
            fitted = trained.fit(shifted, y, batch_size=batch_size, epochs=epoch + 1,
                                 initial_epoch=epoch, callbacks=list(callbacks),
                                 verbose=verbose)
            for name, values in fitted.history.items():
                history.setdefault(name, []).extend(values)
    if trained is not model:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
    return history


def _schedules(model, sparsity, end_step, frequency):
    """{layer name: PolynomialDecay} for the prunable layers named by `sparsity`."""
    if isinstance(sparsity, dict):
        targets = dict(sparsity)
    else:
        graph = ModelGraph(model)  # nested models' layers by their flat names
        targets = {
            graph.name_of(layer): sparsity for layer in graph.layers if has_kernels(layer)
        }
    return {
        name: pruning.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(target), begin_step=0,
            end_step=end_step, frequency=frequency,
        )
        for name, target in targets.items()
        if target > 0.0
    }


def run(model, train, test, config=None, verbose=1, distillation=None):
    """Runs pruning, trained quantization and coding on a trained float model.

    Args:
        model: a trained functional or Sequential classifier with softmax
            outputs (it is not modified).
        train: (x, y) training data with integer labels.
        test: (x, y) held-out data for the accuracy after each stage.
        config: a `DeepCompressionConfig` (defaults if None).
        verbose: 0 silent, 1 stage lines and Keras progress bars, 2 one line per epoch.
        distillation: None, or `keras.distillation.Distiller` keyword arguments
            (see `train_classifier`): every training stage (pruning and retraining,
            centroid fine-tuning) then learns from that teacher too.

    Returns:
        A `DeepCompressionResult`.

    Raises:
        ValueError: for invalid settings (from `DeepCompressionConfig`, the
            pruning schedules or `cluster_weights`).

    Example:
        >>> result = run(model, (x_train, y_train), (x_test, y_test),
        ...              DeepCompressionConfig(sparsity={"fc1": 0.96, "fc2": 0.93}))
        >>> print(result.report)
    """
    config = config or DeepCompressionConfig()
    x_train, y_train = train
    say = print if verbose else (lambda *a, **k: None)
    training = {
        "batch_size": config.batch_size,
        "learning_rate_decay": config.learning_rate_decay,
        "augment_shift": config.augment_shift,
        "verbose": verbose if verbose in (0, 1, 2) else 1,
        "distillation": distillation,
    }
    seconds, accuracy = {}, {"float": _evaluate(model, test)}
    say(f"  float model: test accuracy {accuracy['float']:.4f}")

    # 1. Pruning with retraining.
    start = time.perf_counter()
    steps_per_epoch = int(np.ceil(len(x_train) / config.batch_size))
    end_step = max(1, steps_per_epoch * config.prune_epochs - 1)
    sparsity, sensitivity = config.sparsity, None
    if sparsity == "auto":
        held = slice(max(0, len(x_train) - config.sensitivity_examples), None)
        sensitivity = pruning.sensitivity_analysis(
            model, (x_train[held], y_train[held]), granularity="weight",
            sparsities=AUTO_SPARSITIES, verbose=1 if verbose == 1 else 0,
        )
        sparsity = sensitivity.sparsities_for(config.max_accuracy_drop)
        say("  per-layer sparsity from the sensitivity analysis (drop <= "
            f"{config.max_accuracy_drop}): " + ", ".join(f"{k} {v:.2f}" for k, v in sparsity.items()))
    schedules = _schedules(model, sparsity, end_step, max(1, steps_per_epoch // 4))
    epochs = config.prune_epochs + config.retrain_epochs if schedules else 0
    if schedules:
        pruned = pruning.prune_low_magnitude(model, pruning_schedule=schedules)
    else:  # every target is 0: nothing to prune
        pruned = keras.models.clone_model(model)
        pruned.set_weights(model.get_weights())
    if epochs:
        say(f"  pruning: {config.prune_epochs} epochs to the target sparsity, "
            f"{config.retrain_epochs} retraining")
    histories = {}
    histories["pruning and retraining"] = train_classifier(
        pruned, x_train, y_train, epochs, config.learning_rate, **training,
        seed=[config.seed, 1], callbacks=[pruning.UpdatePruningStep()] if schedules else (),
    )
    pruned_model = pruning.strip_pruning(pruned) if schedules else pruned
    accuracy["pruned"] = _evaluate(pruned_model, test)
    seconds["prune"] = time.perf_counter() - start
    say(f"  pruned: test accuracy {accuracy['pruned']:.4f}")

    # 2. Weight sharing with centroid fine-tuning.
    start = time.perf_counter()
    clusters = _clusters_within_values(pruned_model, config.clusters, say)
    clustered = clustering.cluster_weights(
        pruned_model, clusters, cluster_centroids_init=config.cluster_init,
        preserve_sparsity=True, seed=config.seed,
    )
    if config.finetune_epochs:
        say(f"  weight sharing: fine-tuning the centroids for {config.finetune_epochs} epochs")
    histories["centroid fine-tuning"] = train_classifier(
        clustered, x_train, y_train, config.finetune_epochs, config.finetune_learning_rate,
        **training, seed=[config.seed, 2],
    )
    compressed = clustering.strip_clustering(clustered)
    accuracy["clustered"] = _evaluate(compressed, test)
    seconds["cluster"] = time.perf_counter() - start
    say(f"  clustered: test accuracy {accuracy['clustered']:.4f}")

    # 3. Huffman coding (the report; `coding.save_compressed` writes the file).
    start = time.perf_counter()
    report = coding.compression_report(compressed, index_bits=config.index_bits)
    seconds["code"] = time.perf_counter() - start
    return DeepCompressionResult(
        model=compressed,
        pruned_model=pruned_model,
        accuracy=accuracy,
        report=report,
        sparsity=pruning.sparsity_report(compressed),
        seconds=seconds,
        sensitivity=sensitivity,
        histories=histories,
    )
