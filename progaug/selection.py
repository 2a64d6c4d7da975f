"""Selective augmentation: drop generated images whose soft label a classifier of the real tiles clearly
contradicts, or blend the soft label with that classifier's opinion.

The pathology works that report gains from generated tiles filter them before adding them (HistoGAN's
selective augmentation, MedIA 2021: label confidence; HistoDiffusion, MICCAI 2023). Here the *teacher* is
a small CNN (:class:`progaug.evaluation.classifiers.SmallCNN`) trained on the same real training tiles the
downstream classifier sees, never on validation or test tiles. A progressive image with soft label ``s``
(share of the target class) is kept when the teacher's ``p(target)`` lies within ``margin`` of ``s``.
"""

from __future__ import annotations

import dataclasses

import torch

from progaug.config import JsonConfig
from progaug.errors import check_int
from progaug.replacement import check_probability

__all__ = ["DEFAULT_MARGIN", "SelectiveFilter", "agreement_mask", "calibrated_labels", "fit_teacher", "teacher_probability"]

DEFAULT_MARGIN = 0.5
"""Keep an image when ``|p_teacher(target) - soft label| <= 0.5``: only labels the teacher contradicts
outright (e.g. labelled 0.9 tumour, judged 0.2) are dropped."""


def fit_teacher(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 100, seed: int = 0,
                device: str = "cpu") -> torch.nn.Module:
    """Train the teacher CNN on real training tiles (flips/rotations, no validation: the last epoch).

    Args:
        images: ``(M, 3, S, S)`` uint8 real training tiles.
        labels: ``(M,)`` int64 class indices.
        num_classes: Number of classes.
        epochs: Passes over the tiles.
        seed: Initialisation and batch order.
        device: Where to train.

    Raises:
        ValueError: ``images`` is not uint8 ``(M, 3, S, S)``, or ``labels`` does not match it.
    """
    from progaug.evaluation.training import LabelledImages, Recipe, TrainSpec, train_classifier

    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must be (M, 3, S, S) uint8, got {tuple(images.shape)} {images.dtype}")
    if labels.shape != (len(images),):
        raise ValueError(f"`labels` must hold one class index per image ({len(images)}), got shape {tuple(labels.shape)}")
    rows = torch.nn.functional.one_hot(labels.long(), num_classes).float()
    model, _ = train_classifier(LabelledImages(images, rows), None, Recipe(), TrainSpec(classifier="cnn", epochs=epochs), seed,
                                device=device)
    return model.eval()


def teacher_probability(teacher: torch.nn.Module, images: torch.Tensor, target_index: int, device: str = "cpu") -> torch.Tensor:
    """The teacher's ``p(target class)`` ``(M,)`` of uint8 images ``(M, 3, S, S)``."""
    from progaug.evaluation.training import predict

    return predict(teacher, images, device)[:, target_index]


def agreement_mask(soft_labels: torch.Tensor, teacher_p: torch.Tensor, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """``(M,)`` bool: True where ``|teacher_p - soft_labels| <= margin`` (the image is kept).

    Raises:
        TypeError: ``margin`` is not a number.
        ValueError: ``margin`` outside ``[0, 1]``, or the two tensors differ in shape.
    """
    check_probability("margin", margin)
    if soft_labels.shape != teacher_p.shape:
        raise ValueError(f"`soft_labels` {tuple(soft_labels.shape)} and `teacher_p` {tuple(teacher_p.shape)} must have one shape")
    return (teacher_p.float() - soft_labels.float()).abs() <= margin


def calibrated_labels(soft_labels: torch.Tensor, teacher_p: torch.Tensor, weight: float) -> torch.Tensor:
    """Teacher-calibrated soft labels: ``(1 - weight) * soft_labels + weight * teacher_p``, in [0, 1].

    Raises:
        TypeError: ``weight`` is not a number.
        ValueError: ``weight`` outside ``[0, 1]``.
    """
    w = check_probability("weight", weight)
    return ((1 - w) * soft_labels.float() + w * teacher_p.float()).clamp(0, 1)


@dataclasses.dataclass(frozen=True)
class SelectiveFilter(JsonConfig):
    """Drop generated images whose soft label a teacher CNN of the real training tiles contradicts.

    Attributes:
        margin: Keep an image when ``|p_teacher(target) - soft label| <= margin``, in [0, 1].
        teacher_epochs: Passes of the teacher over the real tiles.
        seed: The teacher's initialisation and batch order.
    """

    margin: float = DEFAULT_MARGIN
    teacher_epochs: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_probability("margin", self.margin)
        check_int("teacher_epochs", self.teacher_epochs, low=1)
        check_int("seed", self.seed, low=0)

    def keep(self, images: torch.Tensor, soft_labels: torch.Tensor, real_images: torch.Tensor, real_labels: torch.Tensor,
             num_classes: int, target_index: int, device: str = "cpu") -> torch.Tensor:
        """``(M,)`` bool: the generated ``images`` (uint8) with ``soft_labels`` (share of class
        ``target_index``) to keep, judged by a teacher trained on ``real_images`` / ``real_labels``."""
        teacher = fit_teacher(real_images, real_labels, num_classes, epochs=self.teacher_epochs, seed=self.seed, device=device)
        return agreement_mask(soft_labels, teacher_probability(teacher, images, target_index, device), self.margin)
