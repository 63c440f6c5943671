"""Kept import path of `tfcompress.pipelines.deep_compression`."""

from tfcompress.pipelines.deep_compression import (
    AUTO_SPARSITIES,
    COSINE_ALPHA,
    DEFAULT_CLUSTERS,
    DEFAULT_SPARSITY,
    LEARNING_RATE_DECAYS,
    MODEL_CLUSTERS,
    PAPER_SPARSITY,
    DeepCompressionConfig,
    DeepCompressionResult,
    default_targets,
    run,
    train_classifier,
)

__all__ = [
    "AUTO_SPARSITIES",
    "COSINE_ALPHA",
    "DEFAULT_CLUSTERS",
    "DEFAULT_SPARSITY",
    "LEARNING_RATE_DECAYS",
    "MODEL_CLUSTERS",
    "PAPER_SPARSITY",
    "DeepCompressionConfig",
    "DeepCompressionResult",
    "default_targets",
    "run",
    "train_classifier",
]
