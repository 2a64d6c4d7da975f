"""Soft-target losses and label conversions for classifiers trained on progressive samples.

Soft labels are dense ``(B, K)`` float rows summing to 1 (what torchvision's MixUp/CutMix and timm's
losses take). For ADD with two classes a progressive image of soft label ``L`` gets the row
``[1 - L, L]`` over (source class, target class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BinarySoftTargetLoss",
    "SoftTargetCrossEntropy",
    "indices_to_one_hot",
    "smooth_soft_targets",
    "soft_label_to_row",
    "soft_rows_to_indices",
]


def indices_to_one_hot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` int64 class indices -> ``(B, K)`` float32 one-hot rows.

    Raises:
        ValueError: An index outside ``[0, num_classes)``.
    """
    indices = torch.as_tensor(indices)
    if indices.is_floating_point() or indices.ndim != 1:
        raise ValueError(f"`indices` must be a (B,) integer tensor, got {indices.dtype} of shape {tuple(indices.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        raise ValueError(f"`indices` must lie in [0, {num_classes}), got {indices.tolist()}")
    return F.one_hot(indices.long(), num_classes).float()


def soft_label_to_row(soft_label: torch.Tensor, source_index: int, target_index: int, num_classes: int) -> torch.Tensor:
    """``(B,)`` soft labels in [0, 1] (share of the target class) -> ``(B, K)`` rows with ``1 - L`` on the
    source class and ``L`` on the target class."""
    label = torch.as_tensor(soft_label, dtype=torch.float32).reshape(-1)
    if not bool(((label >= 0) & (label <= 1)).all()):
        raise ValueError(f"`soft_label` must lie in [0, 1], got {label.tolist()}")
    rows = torch.zeros(label.shape[0], num_classes)
    rows[:, source_index] = 1 - label
    rows[:, target_index] += label
    return rows


def soft_rows_to_indices(rows: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` soft rows -> ``(B,)`` indices of their largest entry (ties: the lowest index)."""
    return rows.argmax(dim=-1)


def smooth_soft_targets(rows: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing applied to soft rows: ``rows * (1 - smoothing) + smoothing / K``.

    For hard one-hot rows this equals timm's / torch's label smoothing; for two classes and 0.1 it is
    ``row * 0.9 + 0.05``.
    """
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"`smoothing` must be in [0, 1), got {smoothing!r}")
    return rows * (1.0 - smoothing) + smoothing / rows.shape[-1]


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy with probability targets, optionally smoothed: ``mean_b sum_k -y_bk log softmax(x)_bk``.

    Reuses ``timm.loss.SoftTargetCrossEntropy`` for the loss itself; accepts ``(B,)`` index targets too.

    Args:
        smoothing: Label smoothing applied to the target rows (see :func:`smooth_soft_targets`).
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        smooth_soft_targets(torch.zeros(1, 2), smoothing)  # validates
        from timm.loss import SoftTargetCrossEntropy as _TimmSoftCE

        self.smoothing = float(smoothing)
        self._loss = _TimmSoftCE()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not target.is_floating_point():
            target = indices_to_one_hot(target, logits.shape[-1])
        if target.shape != logits.shape:
            raise ValueError(f"`target` must have shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        return self._loss(logits, smooth_soft_targets(target.to(logits.dtype), self.smoothing))


class BinarySoftTargetLoss(nn.Module):
    """Binary form: one logit per sample, the target is the soft label ``L`` (share of the positive class).

    ``BCEWithLogits(logit, L')`` with ``L' = L (1 - smoothing) + smoothing / 2``. Accepts ``(B,)`` or
    ``(B, 1)`` logits and ``(B,)`` labels in [0, 1] or ``(B, 2)`` rows (column 1 is used).
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        smooth_soft_targets(torch.zeros(1, 2), smoothing)
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1)
        target = target[:, 1] if target.ndim == 2 else target
        target = target.to(logits.dtype).reshape(-1)
        if target.shape != logits.shape:
            raise ValueError(f"`target` must hold one label per logit ({logits.shape[0]}), got {target.shape[0]}")
        target = target * (1 - self.smoothing) + self.smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target)
