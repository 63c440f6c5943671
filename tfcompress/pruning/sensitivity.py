"""Sensitivity analysis: how much each layer (or channel group) can be pruned alone.

Han et al. (NeurIPS 2015, Figure 5) and Distiller's `perform_sensitivity_analysis`:
prune one layer at a time to each sparsity, without retraining, and evaluate; the
curves show which layers tolerate pruning. `SensitivityResult.sparsities_for(
max_drop)` turns them into per-layer targets (the largest sparsity whose metric
stays within `max_drop` of the baseline, as NNI's SensitivityPruner does), which
`prune_channels`, `prune_low_magnitude` and `DeepCompressionConfig(sparsity="auto")`
take.

Granularities:
- "channel": each prunable channel group loses that fraction of its channels by
  `criterion` (`tfcompress.pruning.prune_channels`); names are the groups' names.
- "weight": each layer's weight matrices lose that fraction of their weights by
  magnitude (`tfcompress.pruning.magnitude_mask`); names are the layer names.
"""

import csv
import dataclasses
import io
import numbers

import keras
import numpy as np

from tfcompress.core.graph import ModelGraph, check_model
from tfcompress.core.rewrite import rebuild
from tfcompress.core.traits import has_kernels, kernel_variables
from tfcompress.fileio import write_atomic
from tfcompress.pruning.channels import ChannelPruner
from tfcompress.pruning.masks import magnitude_mask

__all__ = ["GRANULARITIES", "SensitivityResult", "accuracy", "sensitivity_analysis"]

GRANULARITIES = ("channel", "weight")
DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def accuracy(model, data, batch_size=256):
    """Top-1 accuracy of a classifier on (x, y): argmax of the output equals the label."""
    x, y = data
    count = len(keras.tree.flatten(x)[0])
    correct = 0
    for start in range(0, count, batch_size):  # direct calls: no predict function to trace
        stop = start + batch_size
        chunk = keras.tree.map_structure(lambda a, a0=start, a1=stop: a[a0:a1], x)
        out = keras.tree.flatten(model(chunk, training=False))[0]
        labels = np.asarray(y[start:stop]).reshape(-1)
        correct += int(np.sum(np.argmax(np.asarray(out), axis=-1) == labels))
    return correct / count


@dataclasses.dataclass
class SensitivityResult:
    """The result of `sensitivity_analysis`.

    Attributes:
        model: the model's name.
        granularity: "channel" or "weight".
        metric: the metric's name.
        baseline: the metric of the unpruned model.
        curves: {name: [(sparsity, metric), ...]} in the order evaluated.
    """

    model: str
    granularity: str
    metric: str
    baseline: float
    curves: dict

    def sparsities_for(self, max_drop):
        """{name: the largest sparsity whose metric is at least baseline - max_drop}.

        A sparsity counts only when every smaller sparsity of the curve also stays
        within the drop (a curve that recovers after a large drop is not trusted).
        Names with no such sparsity get 0.0.

        Raises:
            ValueError: for a negative or non-numeric `max_drop`.
        """
        if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) or max_drop < 0:
            raise ValueError(f"`max_drop` must be a number >= 0. Received: max_drop={max_drop!r}")
        out = {}
        for name, points in self.curves.items():
            best = 0.0
            for sparsity, value in sorted(points):
                if value < self.baseline - max_drop - 1e-12:
                    break
                best = sparsity
            out[name] = float(best)
        return out

    def to_csv(self, path):
        """Writes Distiller's columns `name,sparsity,metric`, plus a baseline row."""
        rows = [("name", "sparsity", "metric"), ("(baseline)", 0.0, self.baseline)]
        rows += [(name, s, v) for name, points in self.curves.items() for s, v in points]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        write_atomic(path, buffer.getvalue())

    def to_dict(self):
        return dataclasses.asdict(self)

    def plot(self, path, title=None):
        """Writes a PNG: the metric against sparsity, one line per name, the baseline dashed.

        Args:
            path: the PNG file.
            title: the plot's title (default: the model, granularity and "no retraining").
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for name, points in self.curves.items():
            xs, ys = zip(*sorted(points)) if points else ((), ())
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.axhline(self.baseline, color="black", linestyle="--", linewidth=1, label="baseline")
        unit = "channels" if self.granularity == "channel" else "weights"
        ax.set_xlabel(f"sparsity (fraction of the {unit} removed)")
        ax.set_ylabel(self.metric)
        ax.set_title(title or f"{self.model}: {self.granularity} sensitivity (no retraining)")
        ax.grid(alpha=0.3)
        if len(self.curves) <= 24:
            ax.legend(fontsize=7, ncol=2 if len(self.curves) > 12 else 1)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        write_atomic(path, buffer.getvalue())


def _check_sparsities(sparsities):
    try:
        values = [float(s) for s in sparsities]
    except (TypeError, ValueError):
        values = None
    if not values or any(not 0.0 <= v < 1.0 for v in values) or any(
            isinstance(s, bool) for s in sparsities):
        raise ValueError(
            "`sparsities` must be a non-empty sequence of fractions in [0, 1). "
            f"Received: sparsities={sparsities!r}"
        )
    return values


def sensitivity_analysis(model, data, *, sparsities=DEFAULT_SPARSITIES, granularity="channel",
                         criterion="l1", metric=None, verbose=1):
    """Prunes one layer (or channel group) at a time and evaluates, without retraining.

    Args:
        model: a built functional or Sequential model (unchanged).
        data: (x, y) the metric is measured on (and "taylor" / "dcp" scores from).
        sparsities: the fractions to try, each in [0, 1) (0 gives the baseline).
        granularity: "channel" (groups of `prune_channels`, by `criterion`) or
            "weight" (each layer's weights, by magnitude).
        criterion: the channel criterion (granularity "channel").
        metric: None (top-1 accuracy, `accuracy`) or `fn(model, data) -> float`,
            higher is better.
        verbose: 1 for a progress bar.

    Returns:
        A `SensitivityResult` (`.baseline`, `.curves`, `.to_csv`, `.plot`,
        `.sparsities_for`).

    Raises:
        ValueError: for a bad granularity, sparsities or metric, data that is not
            (x, y), or a model the pruning functions refuse.

    Example:
        >>> result = sensitivity_analysis(model, (x_val, y_val))
        >>> smaller = prune_channels(model, result.sparsities_for(0.01))
    """
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"`granularity` must be one of {', '.join(map(repr, GRANULARITIES))}. "
            f"Received: granularity={granularity!r}"
        )
    sparsities = _check_sparsities(sparsities)
    if not (isinstance(data, tuple) and len(data) == 2):
        raise ValueError("`data` must be (x, y): the examples the metric is measured on.")
    if metric is not None and not callable(metric):
        raise ValueError(f"`metric` must be None or callable(model, data). Received: {metric!r}")
    check_model(model, "sensitivity_analysis")
    evaluate = metric or accuracy
    name = getattr(metric, "__name__", "metric") if metric is not None else "accuracy"
    baseline = float(evaluate(model, data))
    curves = {}
    if granularity == "channel":
        pruner = ChannelPruner(model, criterion, data, what="sensitivity_analysis")
        targets = [(i, g.name) for i, g in enumerate(pruner.groups) if g.prunable]
        bar = keras.utils.Progbar(len(targets) * len(sparsities), verbose=verbose)
        for i, group_name in targets:
            curves[group_name] = []
            for s in sparsities:
                removed = {i: pruner.removal({i: s})[i]}
                value = evaluate(pruner.build(removed), data)
                curves[group_name].append((s, float(value)))
                bar.add(1)
    else:
        working = rebuild(model)
        graph = ModelGraph(working)
        targets = [layer for layer in graph.layers
                   if not isinstance(layer, keras.Model) and has_kernels(layer)]
        bar = keras.utils.Progbar(len(targets) * len(sparsities), verbose=verbose)
        for layer in targets:
            kernels = kernel_variables(layer)
            saved = [k.numpy().copy() for k in kernels]
            curves[graph.name_of(layer)] = []
            for s in sparsities:
                for k, w in zip(kernels, saved):
                    k.assign(w * magnitude_mask(w, s))
                value = evaluate(working, data)
                curves[graph.name_of(layer)].append((s, float(value)))
                bar.add(1)
            for k, w in zip(kernels, saved):
                k.assign(w)
    return SensitivityResult(model=model.name, granularity=granularity, metric=name,
                             baseline=baseline, curves=curves)
