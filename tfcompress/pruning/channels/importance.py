"""How much each channel matters: one score per channel of every group (low = prune).

Criteria (the score of one channel of a group combines every member it spans):

- "l1", "l2": the norms of the kernel slices removed with the channel, summed over
  the group's members (a producer's filter, a consumer's input slice, a depthwise
  filter): Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017,
  `||W[..., c]||_1`.
- "fpgm": He et al., "Filter Pruning via Geometric Median", CVPR 2019: for each
  producer, `sum_j ||F_c - F_j||_2` over its filters; a small sum is near the
  geometric median, the most replaceable. Summed over the group's producers.
- "bn_scale": Liu et al., "Network Slimming", ICCV 2017: `|gamma_c|` of the
  BatchNormalizations the channel passes through (train with an L1 penalty on
  gamma first: `with_regularizer(model, keras.regularizers.L1(1e-4), "gamma")`).
  A group without BatchNormalization has no score (None).
- "taylor": Molchanov et al., "Importance Estimation for Neural Network Pruning",
  CVPR 2019: per batch `(sum over the channel's weights of g * w)^2`, g the gradient
  of the loss (every weight removed with the channel: kernels, biases, gamma, beta),
  averaged over the batches. Needs data.
- "dcp": Zhuang et al., "Discrimination-aware Channel Pruning", NeurIPS 2018: an
  auxiliary classifier (global pooling + Dense) is trained at the end of the stage
  each group belongs to (the last feature map of its spatial size); channels are
  then chosen greedily, in `dcp_rounds` rounds, by the gradient of the auxiliary
  loss plus the reconstruction loss of the stage's features, with the not yet
  chosen channels switched (almost: a gate of 0.05) off. Here the gradient is taken
  with respect to a gate on each channel (the first-order effect of switching it
  back on) rather than the consumer's weights, and the kept weights are not
  re-optimized between rounds. The score is the order of choice (chosen first =
  highest). Needs labelled data.
- "random": uniform random scores (seeded), the control.
"""

import math

import keras
import numpy as np
from keras import ops

from tfcompress.core.rewrite import rebuild
from tfcompress.pruning.channels.handlers import handler_for

__all__ = ["CRITERIA", "DATA_CRITERIA", "batches", "check_criterion", "classification_loss",
           "scores_by_class"]

CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "taylor", "dcp", "random")
DATA_CRITERIA = ("taylor", "dcp")


def check_criterion(criterion, data):
    """Validates a criterion name (and that data comes with the criteria that need it)."""
    if criterion not in CRITERIA:
        raise ValueError(
            f"`criterion` must be one of {', '.join(map(repr, CRITERIA))}. "
            f"Received: criterion={criterion!r}"
        )
    if criterion in DATA_CRITERIA and data is None:
        raise ValueError(
            f"criterion={criterion!r} needs `data`: labelled examples (x, y) "
            "(arrays, or a tf.data.Dataset of (x, y) batches)."
        )
    return criterion


def batches(data, batch_size=64, limit=None):
    """(x, y) batches from (x, y) arrays (x may be a list or dict) or an iterable of batches."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        count = len(keras.tree.flatten(x)[0])
        for i, start in enumerate(range(0, count, batch_size)):
            if limit is not None and i >= limit:
                return
            stop = start + batch_size
            yield keras.tree.map_structure(lambda a, a0=start, a1=stop: a[a0:a1], x), y[start:stop]
        return
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        yield batch[0], batch[1]


def classification_loss(model, loss=None):
    """`loss` as a callable, the model's compiled loss, or sparse cross-entropy on its
    output (from logits unless the output layer applies a softmax)."""
    if loss is not None:
        return keras.losses.get(loss) if isinstance(loss, str) else loss
    compiled = getattr(model, "loss", None)
    if compiled is not None and not isinstance(compiled, (list, dict)):
        return keras.losses.get(compiled) if isinstance(compiled, str) else compiled
    return _SparseCE()


class _SparseCE:
    """Sparse categorical cross-entropy that reads probabilities or logits (outputs that
    are non-negative and sum to 1 per row are probabilities). Called eagerly."""

    def __call__(self, y_true, y_pred):
        values = np.asarray(y_pred)
        probabilities = bool(np.all(values >= 0) and np.allclose(values.sum(-1), 1.0, atol=1e-3))
        return ops.mean(keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=not probabilities))


def _per_channel(array, axis, length, block, reduce):
    """`reduce` of the slices of `array` along `axis`, one per channel (block entries each)."""
    moved = np.moveaxis(np.asarray(array, np.float64), axis, 0)
    return reduce(moved.reshape(length, -1))


def _slice_tensor(node, s):
    return node.outputs[0] if s.role == "out" else node.inputs[0]


def _layer_slices(analysis):
    """(node, slice, unit keys) for every channel weight slice, each layer once (its
    first call): a slice of role "in" follows the layer's input channels, "out" its
    output channels."""
    seen = set()
    for node, _, _ in analysis.roles:
        if id(node.layer) in seen:
            continue
        seen.add(id(node.layer))
        for s in handler_for(node.layer).slices(node.layer):
            if s.variable(node.layer) is not None:
                yield node, s, analysis.maps[_slice_tensor(node, s).index]


def _accumulate(analysis, tags, reduce):
    """{class: sum over every weight slice with one of `tags` of reduce(slice)}."""
    scores = {}
    for node, s, keys in _layer_slices(analysis):
        if s.tag not in tags:
            continue
        values = _per_channel(s.variable(node.layer).numpy(), s.axis, len(keys), s.block, reduce)
        for key, value in zip(keys, values):
            root = analysis.find(key)
            scores[root] = scores.get(root, 0.0) + float(value)
    return scores


def _fpgm(analysis):
    scores = {}
    for node, s, keys in _layer_slices(analysis):
        if s.role != "out" or s.tag != "kernel":
            continue
        filters = np.moveaxis(np.asarray(s.variable(node.layer).numpy(), np.float64), s.axis, 0)
        filters = filters.reshape(len(keys), -1)
        squared = np.sum(filters**2, axis=1)
        d2 = np.maximum(squared[:, None] + squared[None, :] - 2.0 * filters @ filters.T, 0)
        for key, value in zip(keys, np.sqrt(d2).sum(axis=1)):
            root = analysis.find(key)
            scores[root] = scores.get(root, 0.0) + float(value)
    return scores


def _taylor(analysis, data, loss, batch_size, max_batches):
    import tensorflow as tf

    model = analysis.model
    loss_fn = classification_loss(model, loss)
    entries = [(s.variable(node.layer), s, keys) for node, s, keys in _layer_slices(analysis)
               if s.tag != "stat" and s.variable(node.layer).trainable]
    variables = list({id(v): v for v, _, _ in entries}.values())
    total, count = {}, 0
    for x, y in batches(data, batch_size, max_batches):
        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=False))
        grads = dict(zip(map(id, variables), tape.gradient(value, [v.value for v in variables])))
        per_batch = {}
        for var, s, keys in entries:
            g = grads[id(var)]
            if g is None:
                continue
            gw = np.asarray(g) * np.asarray(var.numpy())
            sums = _per_channel(gw, s.axis, len(keys), s.block, lambda m: m.sum(axis=1))
            for key, v in zip(keys, sums):
                root = analysis.find(key)
                per_batch[root] = per_batch.get(root, 0.0) + float(v)
        for root, v in per_batch.items():
            total[root] = total.get(root, 0.0) + v * v
        count += 1
    if not count:
        raise ValueError("`data` gave no batch: Taylor importance needs at least one.")
    return {root: v / count for root, v in total.items()}


class _Gate(keras.layers.Layer):
    """Multiplies each channel by one entry of the concatenated gate vectors (or by 1):
    `x[..., c] * concat(gates + [1])[index[c]]`, for DCP's channel selection."""

    def __init__(self, gates, index, **kwargs):
        super().__init__(**kwargs)
        self.gates = list(gates)
        self.index = np.asarray(index, np.int32)

    def call(self, inputs):
        vector = ops.concatenate([ops.convert_to_tensor(g) for g in self.gates]
                                 + [ops.ones((1,), "float32")])
        return inputs * ops.cast(ops.take(vector, self.index), inputs.dtype)


def _gate_for(analysis, tensor, gates, position, name):
    """A `_Gate` for the channels of `tensor` that belong to gated groups, or None."""
    roots = analysis.roots(tensor)
    present = sorted({position[r][0] for r in roots if r in position})
    if not present:
        return None
    offsets, total = {}, 0
    for group in present:
        offsets[group] = total
        total += int(gates[group].shape[0])
    index = [offsets[position[r][0]] + position[r][1] if r in position else total
             for r in roots]
    return _Gate([gates[g] for g in present], index, name=name)


def _stage_end(analysis, group):
    """The last non-output tensor with the spatial size of the group's first producer."""
    graph = analysis.graph
    first = graph.nodes_of(graph.layer_named(group.producers[0]))[0]
    shape = first.outputs[0].shape
    best = None
    for node in graph.nodes[first.index:]:
        for tensor in node.outputs:
            if not graph.is_output(tensor) and len(tensor.shape) == len(shape) and (
                    tensor.shape[1:-1] == shape[1:-1]):
                best = tensor
    return best


def _pool(features):
    if len(features.shape) <= 2:
        return features
    return ops.mean(features, axis=tuple(range(1, len(features.shape) - 1)))


_OFF = 0.05  # DCP: the gate of a channel not chosen yet


def _dcp(analysis, data, batch_size, max_batches, rounds, seed):
    import tensorflow as tf

    targets = [g for g in analysis.groups if g.prunable and g.channels > 1]
    if not targets:
        return {}
    gates = {g.name: keras.Variable(np.ones(g.channels, np.float32), trainable=False,
                                    name=f"gate_{g.name}") for g in targets}
    position = {root: (g.name, j) for g in targets for j, root in enumerate(g.units)}
    consumers = {id(node) for node, _ in analysis.consumer_nodes}

    def node_fn(node, args, kwargs, state):
        # A consumer sees the gated channels: a channel switched off is removed for
        # everything behind it.
        if id(node) not in consumers:
            return None
        gate = _gate_for(analysis, node.inputs[0], gates, position, f"{node.name}_gate")
        if gate is None:
            return None
        return state.call(node, (gate(args[0]),) + tuple(args[1:]), kwargs)

    # The analysis's own graph: its nodes are the ones `consumers` holds.
    gated = rebuild(analysis.graph, node_fn=node_fn, keep_sequential=False)
    by_name = {layer.name: layer for layer in gated.layers}
    ends = {g.name: _stage_end(analysis, g) for g in targets}
    features = {}  # stage-end tensor index -> model of its (gated) features
    for end in ends.values():
        if end is None or end.index in features:
            continue
        out = by_name[end.producer.name].output
        gate = _gate_for(analysis, end, gates, position, f"stage_end_{end.index}_gate")
        features[end.index] = keras.Model(gated.inputs, out if gate is None else gate(out))
    data_batches = list(batches(data, batch_size, max_batches))
    if not data_batches:
        raise ValueError("`data` gave no batch: DCP needs labelled examples.")
    classes = int(analysis.graph.outputs[0].shape[-1])
    labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in data_batches])
    rng = np.random.default_rng(seed)
    heads = {}
    for index, model in features.items():
        pooled = np.concatenate([np.asarray(_pool(model(x))) for x, _ in data_batches])
        head = keras.Sequential([keras.Input(pooled.shape[1:]),
                                 keras.layers.Dense(classes, activation="softmax")])
        head.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
        order = rng.permutation(len(pooled))
        head.fit(pooled[order], labels[order], epochs=20, batch_size=64, verbose=0)
        heads[index] = head
    scores = {}
    for g in targets:
        end = ends[g.name]
        if end is None:
            continue
        model, head, gate = features[end.index], heads[end.index], gates[g.name]
        gate.assign(np.ones(g.channels, np.float32))
        references = [model(x) for x, _ in data_batches]
        # Channels not chosen yet are nearly off: at exactly 0 a ReLU behind them has no
        # gradient (TensorFlow's relu'(0) = 0) and every channel would look alike.
        chosen, mask = [], np.full(g.channels, _OFF, np.float32)
        step = max(1, math.ceil(g.channels / rounds))
        while len(chosen) < g.channels:
            gate.assign(mask)
            grad = np.zeros(g.channels)
            for (x, y), reference in zip(data_batches, references):
                with tf.GradientTape() as tape:
                    tape.watch(gate.value)
                    feats = model(x)
                    aux = keras.losses.sparse_categorical_crossentropy(y, head(_pool(feats)))
                    rec = ops.mean((feats - reference) ** 2) / (ops.mean(reference**2) + 1e-12)
                    value = ops.mean(aux) + rec
                grad += np.abs(np.asarray(tape.gradient(value, gate.value)))
            grad[chosen] = -np.inf
            best = [int(i) for i in np.argsort(-grad, kind="stable")[:step] if grad[i] > -np.inf]
            chosen.extend(best)
            mask[best] = 1.0
        gate.assign(np.ones(g.channels, np.float32))
        for rank, j in enumerate(chosen):
            scores[g.units[j]] = float(g.channels - rank)
    return scores


def scores_by_class(analysis, criterion, data=None, *, loss=None, batch_size=64,
                    max_batches=8, dcp_rounds=4, seed=0):
    """{class root: score} for a criterion (module docstring), on `analysis.model`."""
    if criterion == "l1":
        return _accumulate(analysis, ("kernel",), lambda m: np.abs(m).sum(axis=1))
    if criterion == "l2":
        return _accumulate(analysis, ("kernel",), lambda m: np.sqrt((m**2).sum(axis=1)))
    if criterion == "fpgm":
        return _fpgm(analysis)
    if criterion == "bn_scale":
        return _accumulate(analysis, ("gamma",), lambda m: np.abs(m).sum(axis=1))
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {root: float(rng.random()) for g in analysis.groups for root in g.units}
    if criterion == "taylor":
        return _taylor(analysis, data, loss, batch_size, max_batches)
    return _dcp(analysis, data, batch_size, max_batches, dcp_rounds, seed)
