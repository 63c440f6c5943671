"""Structured pruning: channels removed for real, in groups of coupled channels.

Modules: `handlers` (one ChannelHandler per layer type, in the layer-traits
registry), `groups` (the channel analysis: DepGraph's grouping on the model graph),
`importance` (the criteria), `cost` (MACs / energy as a function of the kept
channels), `api` (channel_groups, channel_importance, prune_channels).
"""

from tfcompress.pruning.channels.api import (
    ChannelPruner,
    ChannelPruningReport,
    channel_groups,
    channel_importance,
    prune_channels,
)
from tfcompress.pruning.channels.groups import ChannelAnalysis, ChannelGroup
from tfcompress.pruning.channels.handlers import ChannelHandler, Slice
from tfcompress.pruning.channels.importance import CRITERIA

__all__ = [
    "CRITERIA",
    "ChannelAnalysis",
    "ChannelGroup",
    "ChannelHandler",
    "ChannelPruner",
    "ChannelPruningReport",
    "Slice",
    "channel_groups",
    "channel_importance",
    "prune_channels",
]
