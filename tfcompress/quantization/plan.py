"""Where `quantize_model` fuses layers and where it quantizes, read off the model graph.

TFLite fuses conv + bias + activation into one operator and requantizes only after
it; a BatchNormalization after a conv folds into its weights; a tensor that feeds a
concatenation takes the concatenation's scale. `plan_fusions` finds those places
in the `ModelGraph` of the lowered model.
"""

import dataclasses

from keras import layers

from tfcompress.quantization.quantizers import FIXED_RANGE_ACTIVATIONS, activation_name
from tfcompress.quantization.roles import is_scale_preserving, quantization_role

__all__ = ["FusionPlan", "activation_of", "plan_fusions"]


def activation_of(layer):
    """Activation name a standalone activation layer applies, or None."""
    if isinstance(layer, layers.ReLU):
        cfg = layer.get_config()
        if cfg.get("negative_slope", 0.0) == 0.0 and cfg.get("threshold", 0.0) == 0.0:
            if cfg.get("max_value") is None:
                return "relu"
            if float(cfg["max_value"]) == 6.0:
                return "relu6"
        return None
    if isinstance(layer, layers.Activation):
        name = activation_name(layer.activation)
        return name if name in ("relu", "relu6", "softmax", "sigmoid") else None
    if isinstance(layer, layers.Softmax):
        return "softmax" if layer.axis in (-1, [-1]) else None
    return None


@dataclasses.dataclass
class FusionPlan:
    """What `plan_fusions` found, by layer name.

    Attributes:
        fused: a weighted layer's name -> (its BatchNormalization or None, the
            activation it fuses, whether it quantizes its own output).
        absorbed: names of the BatchNormalization and activation layers merged
            into the layer before them.
        concat_fed: names of the layers whose only consumer is a Concatenate,
            directly or through scale-preserving layers (a MaxPooling, a Reshape).
            TFLite gives a concatenation's inputs the output's scale, and those
            layers pass it back to their input, so such a tensor is quantized
            once, by the concatenation, not twice.
        concat_shared: names of the layers whose output feeds a Concatenate and
            other layers too (GhostConv's primary convolution) -> that
            Concatenate: they are quantized with the concatenation's quantizer
            (same range, so the same int8 scale), which spares TFLite a
            requantization (QUANTIZE) that LiteRT's XNNPACK rounds differently
            from Keras.
        batchnorm_activations: a BatchNormalization left standing (nothing to
            fold into) -> the ReLU / ReLU6 it fuses (TFLite's MUL does).
        floated: names of the layers kept float: a weighted layer or
            BatchNormalization annotated "float", with the BatchNormalization and
            activation that would have fused into it (they run in its float op).
        float_outputs: the floated layers whose output is quantized again (it
            feeds a quantized layer or is a model output): the last layer of each
            float chain, unless a Concatenate quantizes it.
        wide: names of the weighted layers annotated 16 (int16 activations, int8
            weights: TFLite's 16x8 operators inside an int8 file); they are in
            `fused` too.
        wide_outputs: the `wide` layers whose output is requantized to int8 (a
            consumer is neither a 16-bit nor a float layer, or it is a model
            output); between 16-bit layers the values stay int16.
    """

    fused: dict
    absorbed: set
    concat_fed: set
    concat_shared: dict
    batchnorm_activations: dict
    floated: set = dataclasses.field(default_factory=set)
    float_outputs: set = dataclasses.field(default_factory=set)
    wide: set = dataclasses.field(default_factory=set)
    wide_outputs: set = dataclasses.field(default_factory=set)


def plan_fusions(graph, fold_batchnorm, schemes):
    """Finds weighted layer -> [BatchNormalization] -> [activation] chains to fuse.

    Only layers called once take part in a fusion: a shared layer keeps its own
    quantizer on every call.

    Args:
        graph: the `ModelGraph` of the lowered model.
        fold_batchnorm: fold a BatchNormalization into the weighted layer before it.
        schemes: {layer name: "per_channel" | "per_tensor" | "float" | 16} annotations.

    Returns:
        A `FusionPlan`.

    Raises:
        ValueError: for a layer annotated 16 that TFLite cannot run in 16x8 inside
            an int8 file (not a Conv2D / DepthwiseConv2D / Dense, called more than
            once, a softmax / sigmoid output, or feeding a Concatenate).
    """
    def single_node(layer):
        nodes = graph.nodes_of(layer)
        return nodes[0] if len(nodes) == 1 else None

    def consumers(layer):
        """The layers taking the layer's only output (one entry per use), or None."""
        node = single_node(layer)
        if node is None or node.output is None or graph.is_output(node.output):
            return None
        return [c.layer for c in node.output.consumers]

    def sole_consumer(layer):
        users = consumers(layer)
        if not users or len(users) != 1 or single_node(users[0]) is None:
            return None
        return users[0]

    def concat_behind(layer):
        """The Concatenate that is the layer's sole consumer, directly or through
        scale-preserving pass-through layers (MaxPooling, Reshape, ...), or None."""
        nxt = sole_consumer(layer)
        while nxt is not None and is_scale_preserving(nxt):
            nxt = sole_consumer(nxt)
        return nxt if isinstance(nxt, layers.Concatenate) else None

    def chain(layer, node):
        """The BatchNormalization and activation after a weighted layer that fuse into it."""
        bn, act, tail = None, "linear", layer
        if node is not None and activation_name(getattr(layer, "activation", None)) == "linear":
            nxt = sole_consumer(tail)
            if fold_batchnorm and isinstance(nxt, layers.BatchNormalization) and (
                nxt.axis in (-1, [-1], len(node.output.shape) - 1)
            ):
                bn, tail = nxt, nxt
                nxt = sole_consumer(tail)
            if nxt is not None and activation_of(nxt) is not None:
                act, tail = activation_of(nxt), nxt
        return bn, act, tail

    fused, absorbed, concat_fed, concat_shared = {}, set(), set(), {}
    floated, float_outputs, float_tails = set(), set(), {}
    wide, wide_outputs = {}, set()  # 16-bit layer -> the last layer of its fused chain
    for layer in graph.layers:
        if concat_behind(layer) is not None:
            concat_fed.add(layer.name)
            continue
        users = consumers(layer) or []
        concats = [c for c in users if isinstance(c, layers.Concatenate)]
        if len(concats) == 1:
            concat_shared[layer.name] = concats[0].name
    for layer in graph.layers:
        role = quantization_role(layer)
        if role in ("weights", "batchnorm") and schemes.get(layer.name) == "float":
            node = single_node(layer)
            if node is None or node.input is None:
                continue  # shared or several inputs: its own calls stay as annotated
            if role == "weights":
                bn, _, tail = chain(layer, node)
            else:
                nxt = sole_consumer(layer)
                bn, tail = None, nxt if nxt is not None and activation_of(nxt) else layer
            floated.update(m.name for m in (layer, bn, tail) if m is not None)
            if tail.name not in concat_fed:
                float_tails[tail.name] = tail
    for name, tail in float_tails.items():
        users = consumers(tail)  # float into float only: no requantization between them
        if users is None or any(u.name not in floated for u in users):
            float_outputs.add(name)
    for layer in graph.layers:
        if _is_wide(schemes.get(layer.name)) and quantization_role(layer) != "weights":
            _check_wide(layer, single_node(layer), None, False)
        if quantization_role(layer) != "weights" or layer.name in floated or (
                schemes.get(layer.name) == "float"):
            continue
        node = single_node(layer)
        if node is not None and node.input is None:
            continue
        bn, act, tail = chain(layer, node)
        if tail.name in concat_shared:
            concat = concat_shared.pop(tail.name)
            if act not in FIXED_RANGE_ACTIVATIONS:  # softmax / sigmoid keep their fixed range
                concat_shared[layer.name] = concat
        shared = layer.name in concat_shared
        fused[layer.name] = (bn, act, tail.name not in concat_fed and not shared)
        absorbed.update(x.name for x in (bn, tail) if x is not None and x is not layer)
        if _is_wide(schemes.get(layer.name)):
            own = activation_name(getattr(layer, "activation", None))
            _check_wide(layer, node, own if act == "linear" else act,
                        tail.name in concat_fed or shared)
            wide[layer.name] = tail
    for name, tail in wide.items():
        users = consumers(tail)
        if users is None or any(u.name not in wide and u.name not in floated for u in users):
            wide_outputs.add(name)
    batchnorm_activations = {}
    for layer in graph.layers:
        if (not isinstance(layer, layers.BatchNormalization) or layer.name in absorbed
                or layer.name in floated or schemes.get(layer.name) == "float"):
            continue
        nxt = sole_consumer(layer)
        act = None if nxt is None else activation_of(nxt)
        if act not in ("relu", "relu6") or nxt.name in floated or (
                schemes.get(nxt.name) == "float"):
            continue
        batchnorm_activations[layer.name] = act
        absorbed.add(nxt.name)
        if nxt.name in concat_fed:
            concat_fed.add(layer.name)
        if nxt.name in concat_shared:
            concat_shared[layer.name] = concat_shared.pop(nxt.name)
    return FusionPlan(fused, absorbed, concat_fed, concat_shared, batchnorm_activations,
                      floated, float_outputs, set(wide), wide_outputs)


def _is_wide(scheme):
    return scheme == 16  # quantize_annotate_layer never stores a bool


def _check_wide(layer, node, activation, concatenated):
    """Raises a ValueError unless `layer` can run as a 16x8 operator in an int8 file."""
    why = None
    if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)) or (
            type(layer).__module__.startswith("tfcompress")):
        why = (f"it is a {type(layer).__name__}; 16 bits takes Conv2D, DepthwiseConv2D "
               "and Dense")
    elif node is None:
        why = "it is called more than once"
    elif activation in FIXED_RANGE_ACTIVATIONS:
        why = (f"its {activation} output has TFLite's fixed int8 range; put the 16-bit "
               "layer before it")
    elif concatenated:
        why = "it feeds a Concatenate, which quantizes its inputs at the concatenation's int8 scale"
    if why:
        raise ValueError(
            f"Layer {layer.name!r} cannot be annotated 16 (int16 activations, int8 "
            f"weights): {why}. Keep it float with quantize_annotate_layer(layer, 'float') "
            "or at 8 bits."
        )
