"""Structured pruning that removes channels for real: a new, smaller model.

`channel_groups(model)` lists the groups of coupled channels (`groups`),
`channel_importance(model, criterion)` scores every channel (`importance`), and
`prune_channels(model, ...)` removes the lowest-scored channels of each group and
rebuilds the model with smaller plain layers, the kept weights copied: fewer
parameters, fewer multiply-adds, a smaller and faster TFLite file, ready for `fit`,
`.keras` save and int8 export. The input model is never modified.

Channels that are exactly zero everywhere (a zero filter and bias, passed through
layers that keep zeros, into consumers that ignore an all-zero input channel) are
removed first and always: removing them changes no output. With neither
`sparsity` nor `target`, only they are removed.
"""

import dataclasses
import math
import numbers

import numpy as np

from tfcompress.analysis.profile import profile
from tfcompress.core.args import check_positive_int
from tfcompress.core.graph import all_layers, check_model
from tfcompress.core.rewrite import rebuild
from tfcompress.core.traits import layer_traits
from tfcompress.core.wrapper import KernelWrapper, strip_wrappers, wrappers_in
from tfcompress.lowering import lower_model
from tfcompress.pruning.channels.cost import METRICS, CostModel
from tfcompress.pruning.channels.groups import ChannelAnalysis
from tfcompress.pruning.channels.handlers import handler_for
from tfcompress.pruning.channels.importance import check_criterion, scores_by_class

__all__ = [
    "ChannelPruner",
    "ChannelPruningReport",
    "analyze_channels",
    "channel_groups",
    "channel_importance",
    "prune_channels",
]


def analyze_channels(model, what="channel_groups"):
    """The `ChannelAnalysis` of a copy of `model` made of plain layers.

    Pruning and clustering wrappers are stripped and composite tfcompress layers
    lowered first (on a copy).

    Raises:
        ValueError: for a subclassed or unbuilt model, or a QAT model (prune the float
            model, then quantize it).
    """
    check_model(model, what)
    from tfcompress.quantization import ActivationQuantizer

    if any(isinstance(layer, ActivationQuantizer) for layer in all_layers(model)):
        raise ValueError(
            f"{what} needs a float model; {model.name!r} is quantization-aware (it holds "
            "ActivationQuantizer layers). Prune the float model, then quantize_model() it."
        )
    if wrappers_in(model, KernelWrapper):
        model = strip_wrappers(model, KernelWrapper)
    composite = any(layer_traits(layer).lowering is not None for layer in all_layers(model))
    return ChannelAnalysis(lower_model(model) if composite else rebuild(model))


def channel_groups(model):
    """The groups of coupled channels of a model (see `groups`).

    Args:
        model: a built functional or Sequential model (nested models, shared layers,
            tfcompress layers included; composite layers are analysed lowered, their
            layers named `<layer>_<sublayer>`).

    Returns:
        A list of `ChannelGroup`, in graph order: name, channels, producers, members
        ((layer, role) pairs), prunable, reason.

    Raises:
        ValueError: for a subclassed, unbuilt or quantization-aware model.

    Example:
        >>> for group in channel_groups(models.resnet20()):
        ...     print(group)
        stem_conv: 16 channels, producers ['stem_conv', 'stage1_block1_conv2', ...]
    """
    return analyze_channels(model).groups


def _group_scores(analysis, scores):
    out = {}
    for group in analysis.groups:
        values = [scores.get(root) for root in group.units]
        out[group.name] = None if any(v is None for v in values) else np.asarray(values, float)
    return out


def channel_importance(model, criterion, data=None, *, loss=None, batch_size=64,
                       max_batches=8, dcp_rounds=4, seed=0):
    """One score per channel of every group (low = prune first).

    Args:
        model: a built functional or Sequential model.
        criterion: "l1", "l2", "fpgm", "bn_scale", "taylor", "dcp" or "random"
            (`tfcompress.pruning.channels.importance`).
        data: labelled examples (x, y), arrays or a tf.data.Dataset of (x, y)
            batches; needed by "taylor" and "dcp".
        loss: the loss for "taylor" (default: the model's compiled loss, else sparse
            categorical cross-entropy).
        batch_size, max_batches: how much of `data` is used.
        dcp_rounds: rounds of DCP's greedy channel choice.
        seed: seed of "random" and of DCP's auxiliary classifiers.

    Returns:
        {group name: float array of the group's channel count} (None for a group the
        criterion cannot score: "bn_scale" without a BatchNormalization).

    Raises:
        ValueError: for an unknown criterion, a data criterion without data, or a
            model `channel_groups` refuses.
    """
    pruner = ChannelPruner(model, criterion, data, loss=loss, batch_size=batch_size,
                           max_batches=max_batches, dcp_rounds=dcp_rounds, seed=seed,
                           what="channel_importance")
    return _group_scores(pruner.analysis, pruner.scores)


@dataclasses.dataclass
class ChannelPruningReport:
    """What `prune_channels` removed.

    Attributes:
        criterion: the criterion used.
        groups: one dict per group: "name", "channels", "kept", "removed" (indices in
            the group's channel order), "zero_removed" (how many of them were all-zero
            channels), "prunable", "reason".
        params, macs: (before, after) of the whole model (`tfcompress.profile`).
        target: the target asked for ({"macs": f} / {"energy": f}) and the fraction
            reached, or None.
    """

    criterion: str
    groups: list
    params: tuple
    macs: tuple
    target: dict | None = None

    def __str__(self):
        lines = [f"{'group':<40} {'kept':>10}  removed"]
        for g in self.groups:
            if not g["prunable"]:
                continue
            lines.append(f"{g['name']:<40} {g['kept']:>4}/{g['channels']:<5} "
                         f"{len(g['removed'])} ({g['zero_removed']} all-zero)")
        lines.append(f"params {self.params[0]:,} -> {self.params[1]:,}; "
                     f"MACs {self.macs[0]:,} -> {self.macs[1]:,}")
        return "\n".join(lines)


def _check_fraction(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0.0 <= float(value) < 1.0):
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_target(target):
    if target is None:
        return None
    if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in METRICS:
        raise ValueError(
            "`target` must be {'macs': f} or {'energy': f}: keep that fraction of the "
            f"model's multiply-adds or estimated energy. Received: target={target!r}"
        )
    ((metric, value),) = target.items()
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0.0 < float(value) <= 1.0):
        raise ValueError(
            f"The fraction to keep must be in (0, 1]. Received: target={target!r}"
        )
    return metric, float(value)


def _groups_named(analysis, name):
    """Indices of the groups a layer name refers to (as producer, or a composite layer
    whose lowered producers are named `<name>_...`)."""
    return [i for i, g in enumerate(analysis.groups)
            if any(p == name or p.startswith(f"{name}_") for p in g.producers)]


def _resolve(analysis, names, what):
    indices = {}
    for name in names:
        found = _groups_named(analysis, name)
        if not found:
            known = sorted({p for g in analysis.groups for p in g.producers})
            raise ValueError(
                f"No layer named {name!r} produces channels in model "
                f"{analysis.model.name!r} ({what}). Layers with output channels: "
                f"{', '.join(known)}."
            )
        indices[name] = found
    return indices


def _order(group, scores, zero):
    """The group's classes, first to remove first: all-zero ones, then by score."""
    def key(item):
        j, root = item
        return (root not in zero, scores.get(root, 0.0), j)
    return [root for _, root in sorted(enumerate(group.units), key=key)]


def _kept_count(n, kept, round_to, up=True):
    if round_to > 1:
        kept = math.ceil(kept / round_to) * round_to if up else kept // round_to * round_to
        kept = max(kept, round_to)
    return int(min(n, max(1, kept)))


class ChannelPruner:
    """Channel scores computed once, for pruning a model to many sparsities.

    `prune_channels` and the channel sensitivity analysis use it.

    Args:
        model: a built functional or Sequential model.
        criterion, data, loss, batch_size, max_batches, dcp_rounds, seed: as in
            `channel_importance`.

    Attributes:
        analysis: the `ChannelAnalysis` of the model's plain-layer copy.
        scores: {class: score}; zero: the all-zero classes.
    """

    def __init__(self, model, criterion="l1", data=None, *, loss=None, batch_size=64,
                 max_batches=8, dcp_rounds=4, seed=0, what="prune_channels"):
        self.criterion = check_criterion(criterion, data)
        self.model = model
        self.analysis = analyze_channels(model, what)
        if loss is None and not isinstance(getattr(model, "loss", None), (list, dict)):
            loss = getattr(model, "loss", None)  # the copy analysed is not compiled
        self.scores = scores_by_class(
            self.analysis, criterion, data, loss=loss, batch_size=batch_size,
            max_batches=max_batches, dcp_rounds=dcp_rounds, seed=seed,
        )
        self.zero = self.analysis.zero_classes()
        self._before = None  # the model's profile totals, once

    @property
    def groups(self):
        return self.analysis.groups

    def removal(self, fractions, round_to=1, named=()):
        """{group index: classes to remove} for {group index: fraction}; the all-zero
        classes of every prunable group go too. A group the criterion cannot score
        loses only those, or is an error if its index is in `named`."""
        removed = {}
        for i, group in enumerate(self.groups):
            if not group.prunable:
                continue
            fraction = fractions.get(i, 0.0)
            scored = all(root in self.scores for root in group.units)
            if not scored and fraction > 0 and i in named:
                raise ValueError(
                    f"criterion={self.criterion!r} has no score for the channels of group "
                    f"{group.name!r} (e.g. bn_scale without a BatchNormalization)."
                )
            zeros = sum(root in self.zero for root in group.units)
            count = max(round(fraction * group.channels) if scored else 0, zeros)
            kept = _kept_count(group.channels, group.channels - count, round_to)
            removed[i] = _order(group, self.scores, self.zero)[: group.channels - kept]
        return removed

    def build(self, removed, target=None):
        """The pruned model for a `removal` result, with its `channel_pruning_report`."""
        analysis = self.analysis
        gone = {root for roots in removed.values() for root in roots}
        pruned = _surgery(analysis, gone)
        if self._before is None:
            self._before = profile(self.model)["total"]
        before, after = self._before, profile(pruned)["total"]
        rows = []
        for i, group in enumerate(analysis.groups):
            roots = removed.get(i, [])
            position = {root: j for j, root in enumerate(group.units)}
            rows.append({
                "name": group.name, "channels": group.channels,
                "kept": group.channels - len(roots),
                "removed": sorted(position[r] for r in roots),
                "zero_removed": sum(r in self.zero for r in roots),
                "prunable": group.prunable, "reason": group.reason,
            })
        reached = None
        if target is not None:
            cost = CostModel(analysis, target[0])
            counts = {t.index: len(analysis.kept(t, gone)) for t in analysis.graph.tensors}
            reached = {target[0]: target[1], "reached": cost.total(counts) / cost.total()}
        pruned.channel_pruning_report = ChannelPruningReport(
            criterion=self.criterion, groups=rows, params=(before["params"], after["params"]),
            macs=(before["macs"], after["macs"]), target=reached,
        )
        return pruned


def prune_channels(model, sparsity=None, *, criterion="l1", target=None, data=None,
                   round_to=1, exclude=(), max_sparsity=0.9, loss=None, batch_size=64,
                   max_batches=8, dcp_rounds=4, seed=0):
    """A new, smaller model with the lowest-scored channels of each group removed.

    Args:
        model: a built functional or Sequential model (any kind: nested models,
            shared layers, several inputs/outputs, tfcompress layers).
        sparsity: the fraction of channels to remove, in [0, 1): one for every
            prunable group, or {layer name: fraction} for the groups those layers
            produce (a sensitivity analysis' `sparsities_for(...)` fits here).
        criterion: how channels are scored ("l1", "l2", "fpgm", "bn_scale",
            "taylor", "dcp", "random"; see `channel_importance`).
        target: instead of `sparsity`, {"macs": f} or {"energy": f}: keep the
            fraction f of the model's multiply-adds or estimated energy (energy-aware
            pruning, Yang et al. 2017), removing channels greedily where the score
            lost per unit of cost saved is smallest: a channel's score against its
            group's mean score per layer the group spans (Taylor scores as they are),
            divided by the square of the fraction of channels the group still keeps,
            so that no layer is emptied.
        data: labelled examples (x, y) for "taylor" and "dcp".
        round_to: keep a multiple of this many channels in every pruned group (SIMD
            widths like 4 or 8 run faster).
        exclude: layer names whose output channels are left alone.
        max_sparsity: with `target`, the largest fraction of any group's channels
            that may go (all-zero channels aside), in (0, 1).
        loss, batch_size, max_batches, dcp_rounds, seed: as in `channel_importance`.

    Returns:
        A new, uncompiled `keras.Model` of plain layers (composite layers lowered)
        with the kept weights copied; its `channel_pruning_report` attribute is a
        `ChannelPruningReport`.

    Raises:
        ValueError: for a sparsity outside [0, 1), both `sparsity` and `target`, a
            target that is malformed or cannot be reached, an unknown criterion, a
            data criterion without data, a layer name that produces no channels, a
            bad `round_to`, or a model `channel_groups` refuses.

    Example:
        >>> smaller = prune_channels(model, 0.5, criterion="fpgm")
        >>> smaller = prune_channels(model, target={"macs": 0.5}, criterion="taylor",
        ...                          data=(x, y))
    """
    if sparsity is not None and target is not None:
        raise ValueError(
            "Give `sparsity` or `target`, not both. "
            f"Received: sparsity={sparsity!r}, target={target!r}"
        )
    if isinstance(sparsity, dict):
        sparsity = {name: _check_fraction(f"sparsity[{name!r}]", v) for name, v in sparsity.items()}
    elif sparsity is not None:
        sparsity = _check_fraction("sparsity", sparsity)
    goal = _check_target(target)
    check_criterion(criterion, data)
    round_to = check_positive_int("round_to", round_to)
    if (isinstance(max_sparsity, bool) or not isinstance(max_sparsity, numbers.Real)
            or not 0.0 < max_sparsity < 1.0):
        raise ValueError(
            f"`max_sparsity` must be in (0, 1). Received: max_sparsity={max_sparsity!r}"
        )
    if isinstance(exclude, str):
        exclude = (exclude,)
    pruner = ChannelPruner(model, criterion, data, loss=loss, batch_size=batch_size,
                           max_batches=max_batches, dcp_rounds=dcp_rounds, seed=seed)
    analysis = pruner.analysis
    excluded = {i for found in _resolve(analysis, exclude, "exclude").values() for i in found}
    fractions = {}
    if isinstance(sparsity, dict):
        names = {}
        for name, found in _resolve(analysis, sparsity, "sparsity").items():
            for i in found:
                if i in fractions and fractions[i] != sparsity[name]:
                    raise ValueError(
                        f"Layers {names[i]!r} and {name!r} are in one channel group "
                        f"({analysis.groups[i].name!r}) but got different sparsities "
                        f"({fractions[i]} and {sparsity[name]}): a group loses its channels "
                        "together."
                    )
                if not analysis.groups[i].prunable:
                    raise ValueError(
                        f"Layer {name!r} cannot be pruned: its channel group "
                        f"{analysis.groups[i].name!r} is not prunable "
                        f"({analysis.groups[i].reason})."
                    )
                fractions[i], names[i] = sparsity[name], name
    elif sparsity is not None:
        fractions = {i: sparsity for i, g in enumerate(analysis.groups) if g.prunable}
    for i in excluded:
        fractions.pop(i, None)
    candidates = [i for i, g in enumerate(analysis.groups) if g.prunable and i not in excluded]
    if goal is None:
        named = set(fractions) if isinstance(sparsity, dict) else ()
        removed = {i: roots for i, roots in pruner.removal(fractions, round_to, named).items()
                   if i not in excluded}
    else:
        removed = _greedy(analysis, candidates, pruner.scores, pruner.zero, goal, round_to,
                          max_sparsity, criterion)
    return pruner.build(removed, goal)


# How the MACs / energy greedy weighs a channel: its normalized score, divided by
# (kept fraction of its group) ** _KEPT_EXPONENT and by (cost saved) ** _COST_POWER.
_KEPT_EXPONENT = 2
_COST_POWER = 1.0


def _weighted_members(analysis, group):
    """How many layers with channel weights (kernels, BatchNorm) the group's channels span."""
    graph = analysis.graph
    names = {name for name, _ in group.members}
    return max(1, sum(1 for name in names if handler_for(graph.layer_named(name)).slices(
        graph.layer_named(name))))


def _greedy(analysis, candidates, scores, zero, goal, round_to, max_sparsity, criterion):
    """Per group, the classes to remove so that the cost falls to `goal` of the total."""
    metric, fraction = goal
    cost = CostModel(analysis, metric)
    total = full = cost.total()
    limit = fraction * full
    tensors = {}
    for index, keys in analysis.maps.items():
        for key in keys:
            root = analysis.find(key)
            tensors.setdefault(root, {}).setdefault(index, 0)
            tensors[root][index] += 1
    counts, removed, order, norm = {}, {}, {}, {}
    for i in candidates:
        group = analysis.groups[i]
        if not all(root in scores for root in group.units):
            order[i] = [r for r in _order(group, {}, zero) if r in zero]
        else:
            order[i] = _order(group, scores, zero)
        finite = [abs(scores[r]) for r in group.units if r in scores]
        mean = (sum(finite) / len(finite)) if finite and sum(finite) > 0 else 1.0
        # Scores comparable across groups: per weighted layer the group spans (a
        # residual trunk channel lives in many layers and matters in each), except
        # Taylor's, which already estimate the loss itself.
        norm[i] = 1.0 if criterion == "taylor" else mean / _weighted_members(analysis, group)
        removed[i] = []

    def remove(i, root):
        change = tensors[root]
        saved = cost.saving(counts, change)
        for index, n in change.items():
            counts[index] = counts.get(index, cost.full[index]) - n
        removed[i].append(root)
        return saved

    for i in candidates:  # all-zero channels first: they cost nothing to remove
        group = analysis.groups[i]
        zeros = [root for root in order[i] if root in zero]
        kept = _kept_count(group.channels, group.channels - len(zeros), round_to)
        for root in zeros[: group.channels - kept]:
            total -= remove(i, root)
    minimum = max(1, round_to)

    def next_step(i):
        """The classes group i loses next (down to the next multiple of round_to)."""
        group = analysis.groups[i]
        kept = group.channels - len(removed[i])
        floor = max(minimum, math.ceil((1.0 - max_sparsity) * group.channels))
        target_kept = (kept - 1) // round_to * round_to
        if target_kept < floor:
            return None
        step = order[i][len(removed[i]): len(removed[i]) + kept - target_kept]
        return step if len(step) == kept - target_kept else None

    while total > limit + 1e-9:
        best = None
        for i in candidates:
            group = analysis.groups[i]
            step = next_step(i)
            if step is None:
                continue
            change = {}
            for root in step:
                for index, n in tensors[root].items():
                    change[index] = change.get(index, 0) + n
            saving = cost.saving(counts, change)
            if saving <= 0:
                continue
            # A channel's loss is its score against its group's mean, weighed by how
            # few channels the group keeps (the last channels of a layer matter most),
            # per unit of cost saved.
            kept_fraction = (group.channels - len(removed[i])) / group.channels
            lost = sum(scores.get(root, 0.0) for root in step) / norm[i]
            priority = lost / kept_fraction**_KEPT_EXPONENT / saving**_COST_POWER
            if best is None or priority < best[0]:
                best = (priority, i, step)
        if best is None:
            reachable = total / full
            raise ValueError(
                f"target={{{metric!r}: {fraction}}} cannot be reached: with every prunable "
                f"group at max_sparsity={max_sparsity} (and at least {minimum} channel(s)) "
                f"the model keeps {reachable:.3f} of its {metric}; the rest is in layers "
                "whose channels cannot be removed. Raise max_sparsity or the target."
            )
        _, i, step = best
        for root in step:
            total -= remove(i, root)
    return removed


def _surgery(analysis, gone):
    """The analysed model rebuilt with the classes in `gone` removed."""
    graph = analysis.graph

    def layer_fn(layer, name):
        node = graph.nodes_of(layer)[0]
        keep_in = [analysis.kept(t, gone) for t in node.inputs]
        keep_out = [analysis.kept(t, gone) for t in node.outputs]
        tensors = node.inputs + node.outputs
        if all(len(k) == len(analysis.maps[t.index]) for k, t in zip(keep_in + keep_out, tensors)):
            return None
        config, weights = handler_for(layer).prune(layer, node, keep_in, keep_out)
        config["name"] = name
        new = type(layer).from_config(config)
        if weights is not None:
            shapes = [tuple(t.shape[:-1]) + (len(k),) for t, k in zip(node.inputs, keep_in)]
            new.build(shapes[0] if len(shapes) == 1 else shapes)
            new.set_weights(weights)
        return new

    return rebuild(analysis.model, layer_fn=layer_fn)
