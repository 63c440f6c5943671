"""Recipes that chain techniques: `deep_compression` (prune -> cluster -> code)."""

from tfcompress.pipelines import deep_compression

__all__ = ["deep_compression"]
