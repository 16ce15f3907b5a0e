"""Masked statistics over per-token tensors: padding never reaches a mean, even when it holds inf or NaN.

Per-token tensors are (B, A) with `mask` 1 on real response tokens, 0 on padding; an all-zero mask gives
0, never NaN.
"""

from __future__ import annotations

import torch


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with padded entries replaced by 0 (where, not multiply: padding may hold inf or NaN)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1; 0 where there are none.

    Args:
        x: (B, A) or any shape.
        mask: same shape as x, 1 on valid entries.
        dim: reduce this dimension only ((B, A), dim=1 -> (B,)); None reduces everything to a scalar.
    """
    mask = mask.to(x.dtype)
    total = zero_padding(x, mask).sum() if dim is None else zero_padding(x, mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all entries where mask is 1 -> scalar (0 for fewer than two entries).

    Args:
        x: (B, A). mask: (B, A).
        unbiased: Bessel's correction n / (n − 1), as TRL and torch.var do.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((zero_padding(x - mean, mask)) ** 2, mask)
    n = mask.to(x.dtype).sum()
    if unbiased:
        var = var * n / (n - 1).clamp(min=1.0)  # no host sync; var is already 0 when n <= 1
    return var
