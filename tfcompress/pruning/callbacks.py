"""Driving pruning in training: `Pruner` for custom loops, `UpdatePruningStep` and
`PruningSummaries` for `fit` (tfmot's callbacks, same names and step rule).

Each `PruneLowMagnitude` holds a `pruning_step` variable that starts at -1 and that
`UpdatePruningStep` (or `Pruner.step()`) increments before every training batch, so
the first batch is step 0; the masks are updated eagerly, between batches, when the
schedule says so.
"""

import numbers
import os

import keras
import numpy as np

from tfcompress.core.wrapper import to_numpy, wrappers_in
from tfcompress.pruning.wrapper import PruneLowMagnitude

__all__ = ["Pruner", "PruningSummaries", "UpdatePruningStep"]


class Pruner:
    """Drives the pruning of a model in a custom training loop.

    Call `step()` before each training batch (it does what `UpdatePruningStep`
    does in `fit`): each wrapper's `pruning_step` is incremented (the first
    batch is step 0) and, where `pruning_schedule(step)` says so, its masks are
    recomputed (`PruneLowMagnitude.update_masks`). The optimizer keeps pruned
    weights at zero through the mask constraint (Keras 3 optimizers apply
    `variable.constraint` after each `apply_gradients`).

    Args:
        model: a model (or layer) containing `PruneLowMagnitude` layers, also
            inside nested models, and in a subclassed model every wrapper its
            `__init__` (or a custom layer's in it) set as an attribute.

    Raises:
        ValueError: if it contains none.

    Example:
        >>> pruner = Pruner(pruned)
        >>> for x, y in dataset:
        ...     pruner.step()
        ...     with tf.GradientTape() as tape:
        ...         loss = loss_fn(y, pruned(x, training=True))
        ...     grads = tape.gradient(loss, pruned.trainable_variables)
        ...     optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        >>> pruner.apply_masks()
        >>> pruner.sparsity()
        {'fc1/kernel': 0.9, 'fc2/kernel': 0.9, 'predictions/kernel': 0.9}
    """

    def __init__(self, model):
        wrappers = wrappers_in(model, PruneLowMagnitude)
        if not wrappers:
            name = getattr(model, "name", repr(model))
            raise ValueError(
                f"{name!r} has no PruneLowMagnitude layer: nothing to prune. Wrap layers with "
                "prune_low_magnitude first."
            )
        unbuilt = [w.name for w in wrappers if not w.built]
        if unbuilt:
            raise ValueError(
                f"Pruning wrapper(s) {', '.join(unbuilt)} are not built; call the model on "
                "data (or give it an input shape) first."
            )
        self.model = model
        self.wrappers = wrappers

    def step(self):
        """Advances every wrapper by one step; updates the masks that are due.

        Returns:
            The names of the wrapped layers whose masks were updated.
        """
        updated = []
        for wrapper in self.wrappers:
            step = int(to_numpy(wrapper.pruning_step)) + 1
            wrapper.pruning_step.assign(step)
            if wrapper.pruning_schedule(step)[0]:
                wrapper.update_masks()
                updated.append(wrapper.layer.name)
        return updated

    def apply_masks(self):
        """Sets every pruned weight to exactly zero."""
        for wrapper in self.wrappers:
            wrapper.apply_masks()

    def sparsity(self):
        """{"layer/weight": fraction of exact zeros of `W * mask`} (the wrapped layer's name)."""
        out = {}
        for wrapper in self.wrappers:
            for kernel, value in zip(wrapper.kernel_variables(), wrapper.current_sparsity()):
                out[f"{wrapper.layer.name}/{kernel.name}"] = value
        return out

    def targets(self):
        """{wrapped layer name: the schedule's `sparsity_at(step)`} at the current steps."""
        return {
            w.layer.name: w.pruning_schedule.sparsity_at(int(to_numpy(w.pruning_step)))
            for w in self.wrappers
        }


def _pruner_once_built(model):
    """`Pruner(model)`, or None while `fit` has yet to build a subclassed model.

    A subclassed model never called on data is built by the first training step
    (Keras defers building to it), after the callbacks' `on_train_begin`.
    """
    wrappers = wrappers_in(model, PruneLowMagnitude)
    if wrappers and not model.built and not all(w.built for w in wrappers):
        return None
    return Pruner(model)


class UpdatePruningStep(keras.callbacks.Callback):
    """Advances the pruning step before each batch and updates the masks when due.

    Required when training a pruned model with `fit` (as in tfmot). Before each
    training batch it calls `Pruner.step()`: every `pruning_step` is incremented
    (the first batch of a fresh model is step 0; a loaded model continues from
    its saved step) and the masks the schedule marks are recomputed. At the end
    of every epoch and of training, `W <- W * mask` once more (belt and braces,
    e.g. after an optimizer's EMA swap). With `steps_per_execution > 1` the
    step counts executions, not batches. The wrappers are found as `Pruner`
    finds them: in nested models and anywhere inside a subclassed model. A
    subclassed model that `fit` itself builds (never called on data before)
    runs its first batch unpruned, as it is built, and the count starts at the
    second batch; call it on a batch first (`model(x[:1])`) for the rule above.

    Raises:
        ValueError: (at the start of training) if the model has no
            `PruneLowMagnitude` layer.

    Example:
        >>> pruned.fit(x, y, epochs=4, callbacks=[UpdatePruningStep()])
    """

    def __init__(self):
        super().__init__()
        self.pruner = None

    def on_train_begin(self, logs=None):
        self.pruner = _pruner_once_built(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        if self.pruner is None:
            self.pruner = _pruner_once_built(self.model)
        if self.pruner is not None:
            self.pruner.step()

    def on_epoch_end(self, epoch, logs=None):
        if self.pruner is not None:
            self.pruner.apply_masks()

    def on_train_end(self, logs=None):
        if self.pruner is not None:
            self.pruner.apply_masks()


class PruningSummaries(keras.callbacks.Callback):
    """Writes per-layer sparsity to TensorBoard.

    For every pruned weight matrix, the scalar "<layer>/<weight>/sparsity" (the
    fraction of exact zeros of `W * mask`), and per wrapped layer
    "<layer>/target_sparsity" (`schedule.sparsity_at(step)`), at the pruning
    step of the model, to `log_dir + "/metrics"` (tfmot's layout).

    Args:
        log_dir: directory of the event files (str or path-like, not empty).
        update_freq: "epoch" (at the end of every epoch) or an integer N >= 1
            (every N batches, and at the end of every epoch).

    Raises:
        ValueError: for an invalid `log_dir` or `update_freq`, or (at the start
            of training) a model without `PruneLowMagnitude` layers.

    Example:
        >>> pruned.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries("logs")])
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        if isinstance(log_dir, os.PathLike):
            log_dir = os.fspath(log_dir)
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(
                f"`log_dir` must be a non-empty string or path. Received: log_dir={log_dir!r}"
            )
        if update_freq != "epoch":
            if (
                not isinstance(update_freq, numbers.Integral)
                or isinstance(update_freq, (bool, np.bool_))
                or update_freq < 1
            ):
                raise ValueError(
                    '`update_freq` must be "epoch" or an integer >= 1. '
                    f"Received: update_freq={update_freq!r}"
                )
            update_freq = int(update_freq)
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._writer = None
        self._wrappers = []
        self._batches = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        pruner = _pruner_once_built(self.model)  # None: fit builds the model first
        self._wrappers = [] if pruner is None else pruner.wrappers
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        self._batches = 0

    def _write(self):
        import tensorflow as tf

        if not self._wrappers:
            self._wrappers = Pruner(self.model).wrappers
        # What `tf.summary.scalar` writes (a float32 tensor tagged for TensorBoard's
        # "scalars" plugin), without needing the tensorboard package installed.
        metadata = tf.compat.v1.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"

        def scalar(tag, value, step):
            tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)

        step = max(int(to_numpy(w.pruning_step)) for w in self._wrappers)
        with self._writer.as_default():
            for wrapper in self._wrappers:
                name = wrapper.layer.name
                for kernel, value in zip(wrapper.kernel_variables(), wrapper.current_sparsity()):
                    scalar(f"{name}/{kernel.name}/sparsity", value, step)
                target = wrapper.pruning_schedule.sparsity_at(
                    int(to_numpy(wrapper.pruning_step))
                )
                scalar(f"{name}/target_sparsity", target, step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
