"""Low-rank decomposition: layers replaced by chains of smaller layers.

`decompose_model(model, method="auto" | "svd" | "tucker2", rank=..., energy=...,
ratio=..., rank_selection="vbmf")` replaces Dense and 1x1 Conv2D layers by a truncated
SVD (two Dense / 1x1 layers) and k x k Conv2D layers by Tucker-2 (1x1 -> k x k -> 1x1),
with ranks given, chosen by energy or parameter ratio, or by EVBMF (`vbmf`).
"""

from tfcompress.decomposition.api import METHODS, DecompositionReport, decompose_model
from tfcompress.decomposition.factor import svd_factors, tucker2_factors

__all__ = ["METHODS", "DecompositionReport", "decompose_model", "svd_factors",
           "tucker2_factors"]
