"""What a model's outputs are: logits, or probabilities from a final softmax.

Keras classifiers usually end in `softmax` (every model of `tfcompress.models` does),
while distillation works on logits. A probability vector p gives back logits up to an
additive constant, z = log p, and softmax is shift-invariant, so softmax(log(p) / T) is
exactly the tempered distribution of the logits. `as_logits` uses that identity, so
every loss of this package takes either kind of model.
"""

import keras
from keras import ops

__all__ = ["EPSILON", "as_logits", "outputs_probabilities"]

# Smallest probability kept before the log: float32's smallest normal number, so
# log(p) keeps logit gaps up to ~87, as far as a float32 softmax resolves them (beyond,
# exp underflows). A larger floor (1e-7: gaps capped at 16.1) would flatten soft targets
# at high temperatures.
EPSILON = 1.1754944e-38


def _ends_in_softmax(layer):
    while True:
        if isinstance(layer, keras.layers.Softmax):
            return True
        activation = getattr(layer, "activation", None)
        if activation is not None and getattr(activation, "__name__", "") == "softmax":
            return True
        inner = getattr(layer, "layer", None)  # wrappers (pruning, clustering, QAT)
        if not isinstance(inner, keras.layers.Layer):
            return False
        layer = inner


def outputs_probabilities(model):
    """Per model output, whether it comes from a softmax (True) or is logits (False).

    The layer computing each output is found in the model's graph (nested models
    and wrapper layers looked through). A subclassed model has no graph: its
    outputs are taken as logits.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of bools, one per output (one entry for a single output).

    Example:
        >>> outputs_probabilities(tfcompress.models.small_cnn())
        [True]
    """
    from tfcompress.core.graph import ModelGraph, is_graph_model

    if not is_graph_model(model):
        return [False]
    graph = ModelGraph(model)
    flags = []
    for tensor in graph.outputs:
        node = graph.producer(tensor)
        flags.append(node is not None and _ends_in_softmax(node.layer))
    return flags


def as_logits(outputs, probabilities):
    """`outputs` as logits: log(max(p, EPSILON)) where `probabilities` is True.

    Args:
        outputs: a tensor.
        probabilities: whether it holds probabilities.

    Returns:
        A tensor of logits (up to a constant per row for probabilities).
    """
    if not probabilities:
        return outputs
    return ops.log(ops.maximum(outputs, EPSILON))
