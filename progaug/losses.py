"""Soft-target losses and label conversions for classifiers trained on progressive samples.

Soft labels are dense ``(B, K)`` float rows summing to 1 (what torchvision's MixUp/CutMix and timm's
losses take). For ADD with two classes a progressive image of soft label ``L`` gets the row
``[1 - L, L]`` over (source class, target class).

Labels are checked wherever they enter (these losses, the batch transform, the dataset) by one
function, :func:`label_rows`: finite, >= 0, rows summing to 1, the classifier's ``K``. A soft label
becomes a row in one place too, :func:`soft_label_to_row`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from progaug.errors import check_int, check_number

__all__ = [
    "BinarySoftTargetLoss",
    "SoftLabelCrossEntropy",
    "indices_to_one_hot",
    "label_rows",
    "smooth_soft_targets",
    "soft_label_to_row",
    "soft_rows_to_indices",
]


_ROW_SUM_TOLERANCE = 1e-4  # |sum(row) - 1| allowed for float32/float64 rows (more for 16-bit floats)


def _check_indices(name: str, indices: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless every integer class index lies in ``[0, num_classes)``."""
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}), got {indices.tolist()} (a label outside the {num_classes} classes)"
        )


def _show_row(index: int, row: torch.Tensor) -> str:
    """``"row 3 = [0.7, 0.7]"`` for an error message."""
    return f"row {index} = {[round(v, 6) for v in row.tolist()]}"


def _check_probability_rows(name: str, rows: torch.Tensor) -> None:
    """Raise ``ValueError`` unless each row of ``(B, K)`` floats is finite, >= 0 and sums to 1.

    One device synchronisation when the rows are valid; the slow diagnosis runs only on failure.
    """
    if rows.numel() == 0:
        return
    r = rows.detach().double()
    tolerance = max(_ROW_SUM_TOLERANCE, rows.shape[-1] * torch.finfo(rows.dtype).eps)
    finite = torch.isfinite(r).all(dim=-1)
    sums = torch.where(torch.isfinite(r), r, 0.0).sum(dim=-1)
    if bool((finite & (r >= 0).all(dim=-1) & ((sums - 1).abs() <= tolerance)).all()):
        return
    r, finite, sums = r.cpu(), finite.cpu(), sums.cpu()
    for i in range(r.shape[0]):
        if not finite[i]:
            raise ValueError(f"`{name}` rows must be finite, got {_show_row(i, r[i])}")
        if bool((r[i] < 0).any()):
            raise ValueError(f"`{name}` rows must be >= 0, got {_show_row(i, r[i])}")
        if abs(float(sums[i]) - 1) > tolerance:
            raise ValueError(
                f"`{name}` rows must sum to 1 (within {tolerance:.2g}), got {_show_row(i, r[i])} "
                f"summing to {float(sums[i]):.6g}"
            )


def _binary_rows(name: str, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` floating shares of class 1 in [0, 1] -> ``(B, 2)`` rows ``[1 - L, L]``."""
    values = labels.detach().double()
    valid = torch.isfinite(values) & (values >= 0) & (values <= 1)
    if not bool(valid.all()):
        i = int((~valid).nonzero()[0, 0])
        raise ValueError(f"`{name}` labels must be finite and lie in [0, 1], got {float(values[i]):.6g} at index {i}")
    return soft_label_to_row(labels, 0, 1, 2)


def _index_rows(name: str, labels: torch.Tensor, num_classes: int, batch: int | None) -> torch.Tensor:
    """``(B,)`` integer class indices -> float32 one-hot ``(B, K)`` rows."""
    if labels.ndim != 1:
        raise TypeError(
            f"`{name}` rows must be floating point (integer labels are ({'B' if batch is None else batch},) class indices), "
            f"got dtype {labels.dtype} of shape {tuple(labels.shape)}"
        )
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"`{name}` must have shape ({batch},) or ({batch}, {num_classes}), got {tuple(labels.shape)}")
    _check_indices(name, labels, num_classes)
    return F.one_hot(labels.long(), num_classes).float()


def label_rows(
    labels: object,
    num_classes: int,
    *,
    batch: int | None = None,
    name: str = "target",
    binary: bool = False,
) -> torch.Tensor:
    """Check labels wherever they enter progaug and return them as ``(B, K)`` probability rows.

    The one check shared by the losses, the batch transform and the dataset. Accepted forms:

    - ``(B,)`` integer class indices in ``[0, K)`` -> float32 one-hot rows;
    - ``(B, K)`` floating rows, each finite, >= 0 and summing to 1 (within 1e-4, or ``K`` machine
      epsilons of a 16-bit dtype) -> returned as they are (same dtype);
    - with ``binary=True`` (and ``num_classes=2``), also ``(B,)`` or ``(B, 1)`` floating labels ``L`` in
      [0, 1] (the share of class 1) and ``(B, 1)`` integer indices -> rows ``[1 - L, L]``.

    Args:
        labels: The labels as given by the caller.
        num_classes: ``K``, the width the rows must have (a classifier's number of logits).
        batch: Required ``B`` (None: any).
        name: Argument name for the error messages.
        binary: Accept the binary forms above.

    Returns:
        ``(B, K)`` floating rows.

    Raises:
        TypeError: Not a tensor; a bool or complex dtype; integer labels that are not ``(B,)`` indices.
        ValueError: Wrong shape or ``K``; an index outside ``[0, K)``; a row that is not finite, has a
            negative entry or does not sum to 1; a binary label outside [0, 1].
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"`{name}` must hold integer class indices or floating rows, got dtype {labels.dtype}")
    width = "B" if batch is None else batch
    if binary and (labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1)):
        labels = labels.reshape(-1)
        if batch is not None and labels.shape[0] != batch:
            raise ValueError(f"`{name}` must hold one label per logit ({batch}), got {labels.shape[0]}")
        if labels.is_floating_point():
            return _binary_rows(name, labels)
    if not labels.is_floating_point():
        return _index_rows(name, labels, num_classes, batch)
    if labels.ndim != 2 or labels.shape[1] != num_classes or (batch is not None and labels.shape[0] != batch):
        forms = (f"({width},), ({width}, 1) or ({width}, 2)" if binary
                 else f"({width}, {num_classes}) (or ({width},) class indices)")
        raise ValueError(f"`{name}` must have shape {forms}, got {tuple(labels.shape)}")
    _check_probability_rows(name, labels)
    return labels




def indices_to_one_hot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` int64 class indices -> ``(B, K)`` float32 one-hot rows.

    Raises:
        TypeError: Floating-point indices.
        ValueError: Not ``(B,)``; an index outside ``[0, num_classes)``.
    """
    indices = torch.as_tensor(indices)
    if indices.is_floating_point() or indices.ndim != 1:
        error = TypeError if indices.is_floating_point() else ValueError
        raise error(f"`indices` must be a (B,) integer tensor, got {indices.dtype} of shape {tuple(indices.shape)}")
    _check_indices("indices", indices, num_classes)
    return F.one_hot(indices.long(), num_classes).float()


def soft_label_to_row(soft_label: object, source_index: int, target_index: int, num_classes: int) -> torch.Tensor:
    """Soft labels ``L`` (the share of the target class) -> ``(B, K)`` probability rows: ``1 - L`` on the
    source class, ``L`` on the target class, 0 elsewhere.

    The one place a soft label becomes a label row (the batch transform, the datasets, timm's dataset and
    the binary targets of :func:`label_rows` call it). The rows are computed in the labels' own floating
    dtype, so float64 labels (a cache's ``labels.csv``) give ``1 - L`` rounded once.

    Args:
        soft_label: ``(B,)`` labels in [0, 1] (other shapes are flattened): a tensor or a sequence of numbers.
        source_index: Index of class A in ``[0, num_classes)``.
        target_index: Index of class B in ``[0, num_classes)``, not ``source_index``.
        num_classes: ``K``, the width of the rows.

    Returns:
        ``(B, K)`` rows on the labels' device, of their floating dtype (float32 for integer labels).

    Raises:
        TypeError: An index or ``num_classes`` that is not an int.
        ValueError: A label outside [0, 1] (NaN included); an index outside ``[0, num_classes)``; equal
            indices.
    """
    check_int("num_classes", num_classes)
    for name, index in (("source_index", source_index), ("target_index", target_index)):
        if check_int(name, index, low=0) >= num_classes:
            raise ValueError(f"`{name}` must lie in [0, {num_classes}), got {index}")
    if source_index == target_index:
        raise ValueError(f"`source_index` and `target_index` must differ, both are {source_index}")
    label = torch.as_tensor(soft_label)
    label = (label if label.is_floating_point() else label.float()).reshape(-1)
    if not bool(((label >= 0) & (label <= 1)).all()):
        raise ValueError(f"`soft_label` must lie in [0, 1], got {label.tolist()}")
    rows = torch.zeros(label.shape[0], num_classes, dtype=label.dtype, device=label.device)
    rows[:, source_index] = 1 - label
    rows[:, target_index] = label
    return rows


def soft_rows_to_indices(rows: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` soft rows -> ``(B,)`` indices of their largest entry (ties: the lowest index)."""
    return rows.argmax(dim=-1)


def smooth_soft_targets(rows: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing applied to soft rows: ``rows * (1 - smoothing) + smoothing / K``.

    For hard one-hot rows this equals timm's / torch's label smoothing; for two classes and 0.1 it is
    ``row * 0.9 + 0.05``.

    Raises:
        TypeError: ``smoothing`` is not a number.
        ValueError: ``smoothing`` outside ``[0, 1)`` (NaN included).
    """
    if not 0.0 <= check_number("smoothing", smoothing) < 1.0:
        raise ValueError(f"`smoothing` must be in [0, 1), got {smoothing!r}")
    return rows * (1.0 - smoothing) + smoothing / rows.shape[-1]


class SoftLabelCrossEntropy(nn.Module):
    """Cross-entropy with probability targets, optionally smoothed: ``mean_b sum_k -y_bk log softmax(x)_bk``.

    Reuses ``timm.loss.SoftTargetCrossEntropy`` for the loss itself, but takes a ``smoothing`` argument
    and accepts ``(B,)`` index targets too (timm's class of that name takes neither).

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
        """Mean soft-target cross-entropy.

        Args:
            logits: ``(B, K)`` classifier outputs.
            target: ``(B, K)`` probability rows (finite, >= 0, each summing to 1) or ``(B,)`` class indices.

        Raises:
            TypeError: ``target`` is not a tensor, or integer but not ``(B,)``.
            ValueError: ``logits`` not ``(B, K)``; ``target`` of another shape, or rows that are not
                probabilities; an index outside ``[0, K)``.
        """
        if logits.ndim != 2:
            raise ValueError(f"`logits` must have shape (B, K), got {tuple(logits.shape)}")
        rows = label_rows(target, logits.shape[-1], batch=logits.shape[0], name="target")
        return self._loss(logits, smooth_soft_targets(rows.to(logits.dtype), self.smoothing))


class BinarySoftTargetLoss(nn.Module):
    """Binary form: one logit per sample, the target is the soft label ``L`` (share of the positive class).

    ``BCEWithLogits(logit, L')`` with ``L' = L (1 - smoothing) + smoothing / 2``. Accepts ``(B,)`` or
    ``(B, 1)`` logits and, as targets, ``(B,)`` or ``(B, 1)`` labels in [0, 1] (integer 0/1 too) or
    ``(B, 2)`` probability rows (column 1 is used). Anything else (``(B, 3)`` rows, a label of 1.7,
    rows that do not sum to 1) is refused.

    Args:
        smoothing: Label smoothing in [0, 1).
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        smooth_soft_targets(torch.zeros(1, 2), smoothing)
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy against the (smoothed) soft labels.

        Raises:
            TypeError: ``target`` is not a tensor, or of a bool/complex dtype.
            ValueError: ``logits`` not ``(B,)``/``(B, 1)``; ``target`` of another form or batch size; a
                label outside [0, 1]; rows that are not probabilities.
        """
        if logits.ndim not in (1, 2) or (logits.ndim == 2 and logits.shape[1] != 1):
            raise ValueError(f"`logits` must have shape (B,) or (B, 1), got {tuple(logits.shape)}")
        logits = logits.reshape(-1)
        rows = label_rows(target, 2, batch=logits.shape[0], name="target", binary=True)
        target = rows[:, 1].to(logits.dtype)
        target = target * (1 - self.smoothing) + self.smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target)
