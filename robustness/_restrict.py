"""The logit restriction module behind :func:`robustness.labels.restrict_to_classes` (imports torch,
so :mod:`robustness.labels` imports it only when a model is restricted)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["RestrictedLogits"]


class RestrictedLogits(torch.nn.Module):
    """``inner(x)[:, indices]``: a classifier's logits ``(N, C)`` at a subset of its classes, ``(N, len(indices))``.

    Args:
        inner: the full classifier (a :class:`robustness.Classifier`, so a background class is
            already dropped).
        indices: the class indices to keep, in the output order.
    """

    def __init__(self, inner: torch.nn.Module, indices: Sequence[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("indices", torch.as_tensor(list(indices), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).index_select(1, self.indices)
