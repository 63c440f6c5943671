"""Pruning for Keras 3 models: magnitude pruning with retraining, schedules, N:M.

Modules: `schedules` (ConstantSparsity, PolynomialDecay), `masks` (the NumPy
masks), `wrapper` (PruneLowMagnitude), `api` (prune_low_magnitude,
strip_pruning, reports), `callbacks` (UpdatePruningStep, PruningSummaries,
Pruner); structured pruning that removes channels for real in `channels`
(channel_groups, channel_importance, prune_channels), sparsity training in
`regularizers` (GroupLasso, with_regularizer) and `sensitivity`
(sensitivity_analysis: each layer or channel group pruned alone).

Han, Pool, Tran, Dally. "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015: train, remove the connections whose weights have
the smallest magnitude, retrain the remaining ones; repeated, this removes most
weights of LeNet and AlexNet without loss of accuracy. Han, Mao, Dally. "Deep
Compression", ICLR 2016, arXiv:1510.00149, sec. 2, makes it the first stage of
the compression pipeline (`tfcompress.deep_compression`).

For a weight matrix W with |W| = N entries and a target sparsity s in [0, 1),
the mask keeps the N - round(s * N) entries of largest |w| and zeroes the rest:

    mask_ij = 1  if |w_ij| is among the N - round(s * N) largest magnitudes
              0  otherwise                                      (ties: see below)

The layer computes with `W * mask`, so a pruned weight gets an exactly zero
gradient, and after every optimizer step the weight itself is multiplied by the
mask (a variable constraint), so it stays exactly zero even under Adam, whose
momentum would otherwise move it.

The sparsity rises during training following a schedule:

* `ConstantSparsity`: the target from `begin_step` on.
* `PolynomialDecay`: the gradual schedule of Zhu and Gupta, "To prune, or not
  to prune: exploring the efficacy of pruning for model compression",
  arXiv:1710.01878, eq. 1:

      s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power,
      t clamped to [t_0, t_end].

Structured N:M sparsity (`sparsity_m_by_n=(2, 4)`: 2 zeros in every 4
consecutive weights along the input-channel axis) is the pattern of NVIDIA's
sparse tensor cores: Mishra et al., "Accelerating Sparse Deep Neural Networks",
arXiv:2104.08378 (2021).

The names mirror `tensorflow_model_optimization.sparsity.keras` (tfmot), so that
porting means changing an import: `prune_low_magnitude`, `ConstantSparsity`,
`PolynomialDecay`, `UpdatePruningStep`, `PruningSummaries`, `strip_pruning`.
The step counting follows tfmot: each `PruneLowMagnitude` holds a
`pruning_step` variable that starts at -1 and that `UpdatePruningStep` (or
`Pruner.step()` in a custom loop) increments before every training batch, so
the first batch is step 0. The masks are updated eagerly, between batches, when
the schedule says so. Step and masks are model state: a checkpoint or `.keras`
file resumes where it stopped.

Example:
    >>> schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    >>> pruned = prune_low_magnitude(model, pruning_schedule=schedule)
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, epochs=10, callbacks=[UpdatePruningStep()])
    >>> final = strip_pruning(pruned)      # plain layers, 90% exact zeros
"""

from tfcompress.pruning.api import (
    get_pruning_masks,
    prune_low_magnitude,
    sparsity_report,
    strip_pruning,
)
from tfcompress.pruning.callbacks import Pruner, PruningSummaries, UpdatePruningStep
from tfcompress.pruning.channels import (
    ChannelGroup,
    ChannelPruningReport,
    channel_groups,
    channel_importance,
    prune_channels,
)
from tfcompress.pruning.masks import m_by_n_mask, magnitude_mask
from tfcompress.pruning.regularizers import GroupLasso, with_regularizer
from tfcompress.pruning.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
)
from tfcompress.pruning.sensitivity import SensitivityResult, sensitivity_analysis
from tfcompress.pruning.wrapper import PruneLowMagnitude

__all__ = [
    "ChannelGroup",
    "ChannelPruningReport",
    "ConstantSparsity",
    "GroupLasso",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "Pruner",
    "PruningSchedule",
    "PruningSummaries",
    "SensitivityResult",
    "UpdatePruningStep",
    "channel_groups",
    "channel_importance",
    "get_pruning_masks",
    "m_by_n_mask",
    "magnitude_mask",
    "prune_channels",
    "prune_low_magnitude",
    "sensitivity_analysis",
    "sparsity_report",
    "strip_pruning",
    "with_regularizer",
]
