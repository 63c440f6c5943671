"""The training runs that tests/test_distribute.py repeats under every strategy.

Imported by the test process (single-device references with `model.fit`) and by the
subprocess scripts `mirrored.py` and `worker.py` (with `tfcompress.distribute.fit`),
after they have set up their devices / strategy. Every run starts from the same
NumPy weights and sees the same global batches, so its results can be compared
across processes.

Cases:
    prune      Dense model, L2 regularizer on fc1, PolynomialDecay(0 -> 0.75 over
               steps 0..3, every step) with UpdatePruningStep, SGD + momentum.
    cluster    Conv2D + Dense, 4 clusters per layer, Adam, steps_per_epoch=2 over
               a 4-batch dataset for 3 epochs (continued, then restarted).
    qat        Conv2D + BatchNorm (folded) + ReLU + Dense softmax, QAT with ranges
               from the first batch (ema_decay 0.9). The two halves of every global
               batch hold the same examples in different orders, so every replica's
               batch statistics (BatchNorm, min / max of the ranges) are the global
               batch's: the result must equal single-device training.
    qat_split  the same QAT model on batches of different examples: the replicas'
               statistics differ; only the equality of all replicas is checked.
"""

import numpy as np

CASES = ("prune", "cluster", "qat", "qat_split")
GLOBAL_BATCH = 16
BATCHES = {"prune": 3, "cluster": 4, "qat": 3, "qat_split": 3}
EPOCHS = {"prune": 2, "cluster": 3, "qat": 2, "qat_split": 2}
STEPS_PER_EPOCH = {"prune": None, "cluster": 2, "qat": None, "qat_split": None}


def arrays(case):
    """(x, y) of the case, float32 / int32, `BATCHES[case] * GLOBAL_BATCH` examples."""
    rng = np.random.default_rng({"prune": 1, "cluster": 2, "qat": 3, "qat_split": 4}[case])
    n = BATCHES[case] * GLOBAL_BATCH
    shape = (8,) if case == "prune" else (6, 6, 2)
    if case != "qat":
        x = rng.normal(size=(n, *shape)).astype("float32")
        return x, rng.integers(0, 3, size=n).astype("int32")
    half = GLOBAL_BATCH // 2
    a = rng.normal(size=(BATCHES[case], half, *shape)).astype("float32")
    b = rng.integers(0, 3, size=(BATCHES[case], half)).astype("int32")
    perm = rng.permutation(half)
    x = np.concatenate([a, a[:, perm]], axis=1).reshape(n, *shape)
    y = np.concatenate([b, b[:, perm]], axis=1).reshape(n)
    return x, y


def dataset(case):
    import tensorflow as tf

    x, y = arrays(case)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)


def _base(case):
    import keras

    if case == "prune":
        inputs = keras.Input((8,))
        h = keras.layers.Dense(
            16, activation="relu", name="fc1", kernel_regularizer=keras.regularizers.L2(1e-2)
        )(inputs)
        outputs = keras.layers.Dense(3, activation="softmax", name="fc2")(h)
    else:
        inputs = keras.Input((6, 6, 2))
        h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        if case != "cluster":
            h = keras.layers.BatchNormalization(momentum=0.8, name="bn")(h)
        h = keras.layers.ReLU(name="relu")(h)
        h = keras.layers.Flatten(name="flat")(h)
        outputs = keras.layers.Dense(3, activation="softmax", name="fc")(h)
    model = keras.Model(inputs, outputs, name=f"{case}_base")
    rng = np.random.default_rng(10)
    model.set_weights([
        rng.normal(0.0, 0.5, w.shape).astype("float32")
        if w.path.endswith(("kernel", "bias")) else w.numpy()
        for w in model.weights
    ])
    return model


def build(case):
    """The compiled model of the case (call inside `strategy.scope()` for a strategy)."""
    import keras

    import tfcompress
    from tfcompress.pruning import PolynomialDecay

    base = _base(case)
    if case == "prune":
        model = tfcompress.prune_low_magnitude(base, PolynomialDecay(0.0, 0.75, 0, 3, frequency=1))
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    elif case == "cluster":
        model = tfcompress.cluster_weights(base, 4, seed=0)
        optimizer = keras.optimizers.Adam(0.01)
    else:
        model = tfcompress.quantize_model(base, init_range=None, ema_decay=0.9)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def callbacks(case):
    from tfcompress.pruning import UpdatePruningStep

    return [UpdatePruningStep()] if case == "prune" else []


def train(case, fit, strategy=None, verbose=0):
    """Builds (inside `strategy.scope()`, if given) and trains the case with
    `fit(model, dataset, epochs=..., steps_per_epoch=..., callbacks=..., verbose=...)`.

    Returns:
        (model, history dict).
    """
    import contextlib

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build(case)
    history = fit(
        model, dataset(case), epochs=EPOCHS[case], steps_per_epoch=STEPS_PER_EPOCH[case],
        callbacks=callbacks(case), verbose=verbose,
    )
    return model, history.history


def snapshot(model, history):
    """{"w00": first weight, ..., "names": their paths, "loss": per-epoch loss, ...}."""
    out = {f"w{i:02d}": np.asarray(w.numpy()) for i, w in enumerate(model.weights)}
    out["names"] = np.array([w.path for w in model.weights])
    for key, values in history.items():
        out[f"history_{key}"] = np.asarray(values, np.float64)
    return out


def save(path, runs):
    """Saves {case: snapshot} to one .npz ("<case>/<key>")."""
    flat = {f"{case}/{key}": value for case, snap in runs.items() for key, value in snap.items()}
    np.savez(path, **flat)


def load(path):
    """The inverse of `save`: {case: {key: array}}."""
    out = {}
    with np.load(path) as data:
        for name in data.files:
            case, key = name.split("/", 1)
            out.setdefault(case, {})[key] = data[name]
    return out
