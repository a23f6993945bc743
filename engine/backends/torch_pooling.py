"""Pooling on the torch backend's device: the embedding head's numerics, in torch.

On a GPU, copying the whole hidden state [rows, width, dim] to the host costs
more than the model; pooling where it was computed sends back [rows, dim].
The numerics are engine/heads.py's, in float32: the mean divides by the token
count clamped at 1e-9, max pooling fills padding with -1e9, and L2
normalisation divides by the norm clamped at 1e-12. Imported only by the
torch backend, which has torch.
"""

from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(torch.float32)
    # [rows, 1, width] @ [rows, width, dim], as heads.mean_pool.
    sums = torch.bmm(weights[:, None, :], hidden)[:, 0, :]
    return sums / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0, :]


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    padding = ~mask.to(torch.bool)[:, :, None]
    return hidden.masked_fill(padding, -1e9).amax(dim=1)


POOLING = {"mean": mean_pool, "cls": cls_pool, "max": max_pool}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """float32 [rows, dim] on hidden's device, from hidden [rows, width, dim] (any float
    dtype) and mask [rows, width] (1 for real tokens)."""
    pooled = POOLING[pooling](hidden.to(torch.float32), mask)
    if normalize:
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return pooled
