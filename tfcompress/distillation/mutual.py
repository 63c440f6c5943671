"""`MutualLearning`: k peers trained together, each also matching the others.

Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning", CVPR 2018. Peer k minimises

    L_k = L_sup(y, p_k) + kl_weight * 1/(K-1) * sum_{j != k} KL(p_j || p_k),

p_j the peers' predicted distributions (softmax of the logits; a peer that ends in
softmax gives p directly). All peers are updated in the same step (the paper's
Algorithm 1 updates them in turn; with several peers its extension averages the KL
terms, as here). The step minimises sum_k L_k with p_j held constant inside L_k
(`stop_gradient`), so each peer's gradient is exactly that of its own L_k: the KL term
of another peer never reaches it.
"""

import keras
from keras import ops

from tfcompress.distillation.outputs import EPSILON, outputs_probabilities

__all__ = ["MutualLearning"]


def _log_probs(outputs, probabilities):
    if probabilities:
        return ops.log(ops.maximum(outputs, EPSILON))
    return ops.log_softmax(outputs, axis=-1)


def _peer_metric(metric, prefix):
    """A fresh metric object for one peer, named "<prefix>_<name>"."""
    if metric in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}_accuracy")
    resolved = keras.metrics.get(metric)
    if isinstance(resolved, keras.metrics.Metric):
        return type(resolved).from_config({**resolved.get_config(),
                                           "name": f"{prefix}_{resolved.name}"})
    name = getattr(resolved, "__name__", str(metric))
    return keras.metrics.MeanMetricWrapper(resolved, name=f"{prefix}_{name}")


class MutualLearning(keras.Model):
    """Trains k peers at once by deep mutual learning (module docstring).

    `compile(optimizer, loss, metrics)` takes the supervised loss and metrics of one
    peer (e.g. "sparse_categorical_crossentropy", ["accuracy"]); `fit` reports
    "loss" (the sum over peers) and, per peer k, "peer{k}_loss" (L_k),
    "peer{k}_kl" and each metric as "peer{k}_<metric>". Calling the model returns
    the list of the peers' outputs; `.models` the peers themselves (trained in place:
    save, strip or export each alone).

    Args:
        models: a list of at least two built models with the same input and output
            shapes, one output each.
        kl_weight: the weight of the KL term, a number >= 0.
        **kwargs: `keras.Model` arguments (name).

    Raises:
        ValueError: for fewer than two models, something that is not a model, a model
            given twice, different input or output shapes, a negative kl_weight.

    Example:
        >>> dml = MutualLearning([small_cnn(), small_cnn()], kl_weight=1.0)
        >>> dml.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        >>> dml.fit(x, y, epochs=5)
        >>> peer_a, peer_b = dml.models
    """

    def __init__(self, models, kl_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        models = list(models) if isinstance(models, (list, tuple)) else models
        if not isinstance(models, list) or len(models) < 2:
            raise ValueError(f"`models` must be a list of at least two Keras models. "
                             f"Received: models={models!r}")
        for i, model in enumerate(models):
            if not isinstance(model, keras.Model):
                raise ValueError(f"models[{i}] must be a Keras model. Received: {model!r}")  # noqa: TRY004
            if any(model is other for other in models[:i]):
                raise ValueError(f"models[{i}] ({model.name!r}) is given twice; peers are "
                                 "separate models.")
        if (isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float))
                or not kl_weight >= 0):
            raise ValueError(f"`kl_weight` must be a number >= 0. Received: "
                             f"kl_weight={kl_weight!r}")
        shapes = []
        for model in models:
            if getattr(model, "inputs", None) is not None:
                shapes.append(([tuple(t.shape[1:]) for t in model.inputs],
                               [tuple(t.shape[1:]) for t in model.outputs]))
        for i, shape in enumerate(shapes[1:], 1):
            if shape != shapes[0]:
                raise ValueError(
                    f"Peers must take and give the same shapes: models[{i}] has inputs "
                    f"{shape[0]} and outputs {shape[1]}, models[0] inputs {shapes[0][0]} "
                    f"and outputs {shapes[0][1]}.")
        self.peers = models
        self.kl_weight = float(kl_weight)
        self._probabilities = [outputs_probabilities(m)[0] for m in models]
        self._supervised = None
        self._peer_metrics = []
        self._trackers = []

    @property
    def models(self):
        """The peers (a list of the models given), trained in place."""
        return list(self.peers)

    def call(self, inputs, training=None):
        return [peer(inputs, training=training) for peer in self.peers]

    def compile(self, optimizer="adam", loss="sparse_categorical_crossentropy", metrics=None,
                **kwargs):
        """Args: the optimizer, one peer's supervised loss and metrics (a list)."""
        if loss is None:
            raise ValueError("`loss` (each peer's supervised loss) cannot be None.")
        self._supervised = keras.losses.get(loss)
        metrics = list(metrics or [])
        self._peer_metrics = []
        self._trackers = []
        for k in range(len(self.peers)):
            self._trackers.append((keras.metrics.Mean(name=f"peer{k}_loss"),
                                   keras.metrics.Mean(name=f"peer{k}_kl")))
            built = [_peer_metric(m, f"peer{k}") for m in metrics]
            self._peer_metrics.append(built)
        super().compile(optimizer=optimizer, loss=None, metrics=None, **kwargs)

    def _per_peer(self, y, y_pred, sample_weight=None):
        """(L_k, KL_k) for every peer k, the others' distributions held constant.

        With `sample_weight`, both terms are weighted means over the batch."""
        log_p = [_log_probs(o, p) for o, p in zip(y_pred, self._probabilities)]
        probs = [ops.exp(lp) for lp in log_p]
        count = len(self.peers)
        if sample_weight is None:
            mean = ops.mean
        else:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))

            def mean(values):
                return ops.sum(values * weight) / ops.maximum(ops.sum(weight), 1e-12)
        out = []
        for k in range(count):
            values = self._supervised(y, y_pred[k])  # per example, or reduced by a Loss
            supervised = mean(ops.reshape(values, (-1,))) if len(values.shape) else values
            kl = 0.0
            for j in range(count):
                if j != k:
                    p_j = ops.stop_gradient(probs[j])
                    log_p_j = ops.stop_gradient(log_p[j])
                    kl = kl + mean(ops.sum(p_j * (log_p_j - log_p[k]), axis=-1))
            kl = kl / (count - 1)
            out.append((supervised + self.kl_weight * kl, kl))
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._supervised is None:
            raise ValueError("Call compile() before fit() / evaluate().")
        if y_pred is None:
            y_pred = self(x, training=training)
        terms = self._per_peer(y, y_pred, sample_weight)
        for (loss_tracker, kl_tracker), (loss_k, kl_k) in zip(self._trackers, terms):
            loss_tracker.update_state(loss_k)
            kl_tracker.update_state(kl_k)
        return ops.sum(ops.stack([loss_k for loss_k, _ in terms]))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for metrics, pred in zip(self._peer_metrics, y_pred):
            for metric in metrics:
                metric.update_state(y, pred)
        return self.get_metrics_result()

    @property
    def metrics(self):
        tracked = list(super().metrics)
        for (loss_tracker, kl_tracker), metrics in zip(self._trackers, self._peer_metrics):
            tracked += [loss_tracker, kl_tracker, *metrics]
        return tracked
