"""Training under `tf.distribute`: `fit`, a `model.fit` that also works with several workers.

Pruning (`prune_low_magnitude` + `UpdatePruningStep`), clustering (`cluster_weights`)
and quantization-aware training (`quantize_model`) train on several devices and
several machines with `tf.distribute.MirroredStrategy` and
`tf.distribute.MultiWorkerMirroredStrategy`: build and compile the model inside
`strategy.scope()`, then call `tfcompress.distribute.fit(model, dataset)` where you
would call `model.fit(dataset)`.

Why not `model.fit`:

* Under `MultiWorkerMirroredStrategy` with several workers, Keras 3's (3.15.1)
  `fit` fails at once (keras-team/keras#20585, tensorflow/tensorflow#72388): its
  TensorFlow trainer hands a whole distributed batch to `strategy.reduce` when it
  builds the model ("Attempt to convert a value (PerReplica...)"), and later
  reduces the scalar step results on axis 0 ("Invalid reduction dimension 0 for
  input with 0 dimensions").
* Under `MirroredStrategy`, `fit` runs, and for models without batch-dependent
  state it computes what one device computes on the same global batches. But
  state that a layer assigns in its `call` - BatchNormalization's moving
  statistics, a QAT `ActivationQuantizer`'s moving-average range - is created by
  Keras with `aggregation="none"`, and TensorFlow then updates only the copy of
  the replica that computed it: each replica keeps its own range and statistics
  (replica 0's are the ones saved) and later steps compute with different values
  on different replicas.

`fit` therefore runs its own loop under both strategies: every step is
`model.train_step` (the model's forward pass, `model.compute_loss` with the
losses of the layers, the loss scaled by 1 / replicas as Keras scales it, the
gradients all-reduced and applied by the model's optimizer, the compiled
metrics) inside `strategy.run`, followed, still inside the step, by an all-reduce
(mean over the replicas) of every floating-point non-trainable variable whose
aggregation is "none", so that every replica on every worker continues from the
same state. Variables that declare an aggregation ("mean", "sum",
"only_first_replica") are synchronized by TensorFlow itself and left alone;
integer state (a pruning step, cluster indices) is only assigned between steps,
by callbacks, identically on every replica. That all-reduce costs, per step,
as much traffic as the non-trainable state (for a pruned model its masks: as
much as the gradients). Under any other strategy (none, the default one,
`OneDeviceStrategy`, ...) `fit` simply calls `model.fit`.

What equals single-device training: every trainable and non-trainable weight,
after N steps on the same global batches, to float rounding, when the per-replica
batches have the batch statistics of the global batch or the model has none
(pruning and clustering of layers without BatchNormalization). Statistics of a
batch (BatchNormalization in training mode, QAT ranges from a batch's min / max)
are computed per replica, over the replica's part of the batch, as with
`model.fit` under `MirroredStrategy`; the replica state is their mean.
"""

import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfcompress.core.graph import optimizer_strategy, symbolic_build

__all__ = ["fit", "replica_state_variables", "uses_own_loop"]

_VERBOSE = (0, 1, 2, "auto")


def uses_own_loop(strategy):
    """Whether `fit` runs its own loop under `strategy` (else it calls `model.fit`).

    Args:
        strategy: a `tf.distribute.Strategy`.

    Returns:
        True for `MirroredStrategy` and `MultiWorkerMirroredStrategy`.

    Example:
        >>> uses_own_loop(tf.distribute.get_strategy())
        False
    """
    return isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    )


def replica_state_variables(model):
    """The variables `fit` averages over the replicas after every step.

    Every non-trainable floating-point variable of the model whose aggregation
    is "none" and that is mirrored (synchronization "auto" or "on_write"): what
    layers assign in `call` (BatchNormalization moving statistics, QAT ranges)
    and what callbacks assign between steps (pruning masks, which stay as they
    are since they are equal on every replica).

    Args:
        model: a `keras.Model`.

    Returns:
        A list of `keras.Variable`.

    Example:
        >>> [v.path for v in replica_state_variables(qat_model)][:2]
        ['quant_input/range_min', 'quant_input/range_max']
    """
    out = []
    for variable in model.non_trainable_variables:
        if (
            getattr(variable, "aggregation", "none") == "none"
            and getattr(variable, "synchronization", "auto") in ("auto", "on_write")
            and "float" in keras.backend.standardize_dtype(variable.dtype)
        ):
            out.append(variable)
    return out


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_arguments(model, dataset, epochs, steps_per_epoch, callbacks, verbose):
    if not isinstance(model, keras.Model):
        raise ValueError(  # noqa: TRY004
            f"`model` must be a keras.Model. Received: model={model!r} "
            f"(of type {type(model).__name__})"
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            f"`model` must be compiled before training: call model.compile(optimizer, loss, "
            f"metrics) inside strategy.scope(). Received: model {model.name!r}, which is "
            "not compiled."
        )
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(  # noqa: TRY004
            "`dataset` must be a tf.data.Dataset of global batches ((x, y) or (x, y, "
            f"sample_weight)). Received: dataset of type {type(dataset).__name__}"
        )
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}")
    if steps_per_epoch is not None and (not _is_int(steps_per_epoch) or steps_per_epoch < 1):
        raise ValueError(
            "`steps_per_epoch` must be None (the whole dataset every epoch) or an integer "
            f">= 1. Received: steps_per_epoch={steps_per_epoch!r}"
        )
    if not isinstance(callbacks, (list, tuple)):
        raise ValueError(  # noqa: TRY004
            "`callbacks` must be a list of keras.callbacks.Callback. "
            f"Received: callbacks={callbacks!r}"
        )
    wrong = [c for c in callbacks if not isinstance(c, keras.callbacks.Callback)]
    if wrong:
        raise ValueError(
            "`callbacks` must be a list of keras.callbacks.Callback. Received entries that "
            f"are not: {', '.join(f'{c!r} ({type(c).__name__})' for c in wrong)}"
        )
    if isinstance(verbose, (bool, np.bool_)) or verbose not in _VERBOSE:
        raise ValueError(
            f"`verbose` must be 0, 1, 2 or 'auto'. Received: verbose={verbose!r}"
        )
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY and steps_per_epoch is None:
        raise ValueError(
            "The dataset repeats forever: give `steps_per_epoch` (an integer >= 1). "
            "Received: steps_per_epoch=None"
        )


def _is_chief(strategy):
    """True on the worker that prints: worker 0 (or the chief), or without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id or 0) == 0


def _check_strategy(model, strategy):
    owner = optimizer_strategy(model.optimizer, default=strategy)
    if owner is not strategy:
        raise ValueError(
            f"The optimizer of model {model.name!r} was made outside the scope of its "
            f"strategy ({type(strategy).__name__}): compile the model inside "
            "strategy.scope(). Received: an optimizer made under "
            f"{type(owner).__name__}"
        )


def _make_train_function(model, strategy):
    """One training step on a distributed batch; returns the logs (cross-replica)."""
    state = replica_state_variables(model) if strategy.num_replicas_in_sync > 1 else []

    def replica_step(data):
        logs = model.train_step(data)
        if state:
            # Every replica continues from the mean of what the replicas computed.
            context = tf.distribute.get_replica_context()
            values = []
            for variable in state:
                # Read on the replica's device: the all-reduce sends each value from
                # there (under MultiWorkerMirroredStrategy the step has no device scope).
                local = variable.value
                with tf.device(local.device):
                    values.append(tf.identity(local))
            for variable, value in zip(
                state, context.all_reduce(tf.distribute.ReduceOp.MEAN, values)
            ):
                variable.assign(value)
        return logs

    def train_function(data):
        outputs = strategy.run(replica_step, args=(data,))
        # The compiled metrics (the loss tracker included) read across the replicas:
        # sums over every replica's examples, exact for any split of the batch.
        metrics = model.get_metrics_result()
        logs = dict(metrics)
        if isinstance(outputs, dict):
            for name, value in outputs.items():
                if name in metrics or value is None:
                    continue
                if isinstance(value, tf.distribute.DistributedValues):
                    value = strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                logs[name] = value
        return logs

    if model.run_eagerly:
        return train_function
    return tf.function(train_function, reduce_retracing=True, jit_compile=False)


def _pythonify(logs):
    out = {}
    for name, value in logs.items():
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        out[name] = value.item() if value.size == 1 else value
    return out


def _own_loop(model, strategy, dataset, epochs, steps_per_epoch, callbacks, verbose):
    _check_strategy(model, strategy)
    with strategy.scope():
        # What `fit` does before training (the step it fails on is the reduction of a
        # real batch for it, #20585): model, compiled loss / metrics and optimizer
        # built from the batch's shapes, no data.
        symbolic_build(model, dataset.element_spec)
    distributed = strategy.experimental_distribute_dataset(dataset)
    train_function = _make_train_function(model, strategy)
    cardinality = int(dataset.cardinality())
    known = cardinality if cardinality >= 0 else None
    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0 and _is_chief(strategy),
        model=model,
        verbose=1 if verbose == "auto" else verbose,
        epochs=epochs,
        steps=steps_per_epoch or known,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    training_logs = None
    iterator, seen = None, 0
    for epoch in range(epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        if iterator is None or steps_per_epoch is None:
            iterator, seen = iter(distributed), 0
        logs, step = {}, 0
        while steps_per_epoch is None or step < steps_per_epoch:
            # Agreed on by every worker: the iterator all-reduces whether any has data.
            batch = iterator.get_next_as_optional()
            if not bool(batch.has_value()):
                if steps_per_epoch is not None:
                    warnings.warn(
                        "Your input ran out of data; interrupting the epoch. Make sure that "
                        "your dataset can generate at least `steps_per_epoch * epochs` "
                        "batches (use `.repeat()`).",
                        stacklevel=3,
                    )
                iterator = None
                break
            callback_list.on_train_batch_begin(step)
            logs = _pythonify(train_function(batch.get_value()))
            callback_list.on_train_batch_end(step, logs)
            step += 1
            seen += 1
            if model.stop_training:
                break
        if known is not None and seen >= known:
            iterator = None
        epoch_logs = dict(logs) if logs else _pythonify(model.get_metrics_result())
        callback_list.on_epoch_end(epoch, epoch_logs)
        training_logs = epoch_logs
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=training_logs)
    return model.history


def fit(model, dataset, *, epochs=1, steps_per_epoch=None, callbacks=(), verbose=1):
    """Trains a compiled model as `model.fit` does, under any `tf.distribute` strategy.

    Under `MirroredStrategy` and `MultiWorkerMirroredStrategy` (the strategy the
    model was created under, `model.distribute_strategy`) it runs its own loop
    (see the module docstring for why): each step runs `model.train_step` on
    every replica (`strategy.run`), then averages the non-trainable state the
    layers assigned in `call` over the replicas; callbacks get
    `on_train_begin`, `on_epoch_begin`, `on_train_batch_begin`,
    `on_train_batch_end`, `on_epoch_end` and `on_train_end` with `model.fit`'s
    logs ("loss" and the compiled metrics, averaged over the whole epoch's
    examples so far), and `model.stop_training` ends training as in `fit`.
    Under any other strategy it calls `model.fit(dataset, epochs=...,
    steps_per_epoch=..., callbacks=..., verbose=...)`.

    Every worker of a `MultiWorkerMirroredStrategy` calls `fit` with the same
    arguments; the dataset is the same global-batch dataset on every worker
    (each worker trains on its share of every global batch: TensorFlow's
    auto-sharding). Callbacks run on every worker (`UpdatePruningStep` must, to
    keep the masks equal everywhere); the progress bar only on worker 0 (or the
    chief). Use global batches that divide evenly among the replicas
    (`drop_remainder=True`), as for `model.fit` under a strategy.

    Args:
        model: a `keras.Model` built and compiled (optimizer, loss, metrics)
            inside `strategy.scope()`.
        dataset: a `tf.data.Dataset` of global batches, `(x, y)` or
            `(x, y, sample_weight)`.
        epochs: number of epochs, an integer >= 1.
        steps_per_epoch: None (each epoch runs through the whole dataset) or an
            integer >= 1 (the dataset is then continued from epoch to epoch
            and restarted when it ends, as in `model.fit`).
        callbacks: a list of `keras.callbacks.Callback`.
        verbose: 0 (silent), 1 (a `keras.utils.Progbar` per epoch), 2 (one line
            per epoch) or "auto" (1); workers other than worker 0 stay silent.

    Returns:
        The `keras.callbacks.History` of the training (also `model.history`):
        `history.history["loss"]` holds each epoch's loss.

    Raises:
        ValueError: for a model that is not a compiled `keras.Model` (or whose
            optimizer was made outside the strategy's scope), a dataset that is
            not a `tf.data.Dataset`, `epochs` or `steps_per_epoch` not an integer
            >= 1, callbacks that are not `keras.callbacks.Callback`, an invalid
            `verbose`, or an infinite dataset without `steps_per_epoch`.

    Example:
        >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()  # TF_CONFIG set
        >>> with strategy.scope():
        ...     pruned = tfcompress.prune_low_magnitude(model, ConstantSparsity(0.8, 0, frequency=10))
        ...     pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> history = distribute.fit(pruned, dataset, epochs=2,
        ...                          callbacks=[tfcompress.pruning.UpdatePruningStep()])
        >>> len(history.history["loss"])
        2
    """
    _check_arguments(model, dataset, epochs, steps_per_epoch, callbacks, verbose)
    strategy = model.distribute_strategy
    if not uses_own_loop(strategy):
        # shuffle=False: a dataset comes shuffled or not (Keras would warn it ignores it).
        return model.fit(
            dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
            callbacks=list(callbacks), verbose=verbose, shuffle=False,
        )
    return _own_loop(model, strategy, dataset, epochs, steps_per_epoch, callbacks, verbose)
