"""Training one classifier of the evaluation protocol: epochs over the real tiles, generated images by
per-draw replacement, flips/rotations, stain jitter, Mixup/CutMix, checkpoint chosen on validation.

One *epoch* is one pass over the real training tiles in batches; every recipe with the same budget takes
the same optimiser steps, whatever it adds. Generated images enter by replacement
(:func:`progaug.replacement.replace_draws`) or, for the old protocol kept for continuity, by drawing
batches uniformly from real + generated rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random

import numpy as np
import torch

from progaug.config import JsonConfig, config_to_dict_without_defaults, setting
from progaug.data.tiles import dihedral
from progaug.errors import check_int, check_number
from progaug.evaluation.classifiers import CLASSIFIERS, make_classifier, normalise
from progaug.evaluation.stain import hed_jitter
from progaug.losses import SoftLabelCrossEntropy
from progaug.replacement import check_probability, replace_draws
from progaug.runtime import autocast, autocast_dtype

__all__ = ["CHECKPOINTS", "LabelledImages", "Recipe", "TrainSpec", "predict", "score", "seed_everything", "train_classifier"]


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Images with probability rows.

    Attributes:
        images: ``(M, 3, S, S)`` uint8.
        rows: ``(M, K)`` float32 rows summing to 1 (one-hot for real tiles, soft for progressive images).
    """

    images: torch.Tensor
    rows: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True)
class Recipe(JsonConfig):
    """How the training batches are made (the arm's settings).

    Attributes:
        flips: Random flips / quarter turns of every image.
        stain_sigma: HED stain jitter strength (0: off; 0.05 is HED-light).
        mixup_alpha: Mixup alpha (CutMix alpha is 1.25x it, switch 0.5; 0: off).
        replace_prob: Probability that a real draw becomes a generated one.
        uniform: Draw batches uniformly from real + generated rows instead (the old protocol).
    """

    flips: bool = True
    stain_sigma: float = 0.0
    mixup_alpha: float = 0.0
    replace_prob: float = 0.0
    uniform: bool = False

    def __post_init__(self) -> None:
        check_probability("replace_prob", self.replace_prob)
        for name in ("stain_sigma", "mixup_alpha"):
            check_number(name, getattr(self, name), low=0)


CHECKPOINTS = ("best", "last")
"""What :func:`train_classifier` returns: the best checkpoint on validation, or the last one."""


@dataclasses.dataclass(frozen=True)
class TrainSpec(JsonConfig):
    """The optimisation, the same for every arm.

    Attributes:
        classifier: ``"cnn"``, ``"vit"`` or ``"probe"`` (:data:`progaug.evaluation.classifiers.CLASSIFIERS`).
        epochs: Passes over the real training tiles.
        batch_size: Images per step.
        lr: Peak AdamW learning rate (one-cycle: 10 % warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        eval_every: Validation every this many epochs (and after the last); the checkpoint with the best
            validation accuracy is kept (ties: the later one, trained further at a lower learning rate).
        checkpoint: Which checkpoint a training returns: ``"best"`` (as ``eval_every`` says) or ``"last"`` (the
            end of the one-cycle schedule, no selection; validation read once, after the last epoch). The
            best checkpoint's validation accuracy is a maximum over checkpoints and optimistic on the split that
            chose it; the last one's is a score.
        channels_last: Weights and training inputs channels-last (faster convolutions on CPUs and GPUs).
        bf16: bf16 autocast of the training passes (forward and loss; the weights, the optimiser and validation stay
            float32). Fast where the device computes bf16 natively, emulated and slower elsewhere.

    ``channels_last`` and ``bf16`` change the float rounding, so a run with either is another run: they enter
    :meth:`run_fields` only when on, so runs logged before they existed keep their keys.
    """

    classifier: str = setting("cnn", "classifier: cnn or vit (from scratch) or probe (linear, frozen ImageNet features)")
    epochs: int = setting(100, "passes over the real training tiles")
    batch_size: int = setting(32, "images per optimiser step")
    lr: float = setting(2e-3, "peak AdamW learning rate (one-cycle)")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    eval_every: int = setting(5, "validation every this many epochs")
    channels_last: bool = setting(False, "weights and training inputs channels-last")
    bf16: bool = setting(False, "bf16 autocast of the training passes")
    checkpoint: str = setting("best", "which checkpoint a training returns: best (validation) or last (no selection)")

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"`classifier` must be one of {CLASSIFIERS}, got {self.classifier!r}")
        for name in ("epochs", "batch_size", "eval_every"):
            check_int(name, getattr(self, name), low=1)
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        for name in ("channels_last", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"`checkpoint` must be one of {CHECKPOINTS}, got {self.checkpoint!r}")

    def run_fields(self) -> dict:
        """The settings as a run's key records them: ``channels_last``, ``bf16`` and ``checkpoint`` only when not
        at their defaults (so keys logged before they existed stay as they were)."""
        return config_to_dict_without_defaults(self, ("channels_last", "bf16", "checkpoint"))

    def steps(self, num_real: int) -> int:
        """Optimiser steps for ``num_real`` real tiles: ``epochs * ceil(num_real / batch_size)``."""
        return self.epochs * math.ceil(num_real / self.batch_size)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's, numpy's and Python's global generators (timm's Mixup draws from numpy) and return a
    generator for the run's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _batches(num_real: int, num_generated: int, recipe: Recipe, batch_size: int, gen: torch.Generator):
    """One epoch's batches as ``(from_generated (B,) bool, index (B,) int64)``."""
    if recipe.uniform and num_generated:
        total = num_real + num_generated
        for _ in range(math.ceil(num_real / batch_size)):
            idx = torch.randint(0, total, (batch_size,), generator=gen)
            yield idx >= num_real, torch.where(idx >= num_real, idx - num_real, idx)
        return
    order = torch.randperm(num_real, generator=gen)
    for real in order.split(batch_size):
        yield replace_draws(real, num_generated, recipe.replace_prob, gen)


def _make_batch(real: LabelledImages, generated: LabelledImages | None, mask: torch.Tensor, index: torch.Tensor, recipe: Recipe,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``[0, 1]`` images ``(B, 3, S, S)`` and rows ``(B, K)`` of one batch (before Mixup)."""
    images = real.images[index.masked_fill(mask, 0)]
    rows = real.rows[index.masked_fill(mask, 0)]
    if mask.any():
        images[mask], rows[mask] = generated.images[index[mask]], generated.rows[index[mask]]
    if recipe.flips:
        ops = torch.randint(0, 8, (len(index),), generator=gen).tolist()
        images = torch.stack([dihedral(img, op) for img, op in zip(images, ops)])
    batch = images.float() / 255
    if recipe.stain_sigma > 0:
        batch = hed_jitter(batch, recipe.stain_sigma, gen)
    return batch, rows


def predict(model: torch.nn.Module, images: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Class probabilities ``(M, K)`` of uint8 images ``(M, 3, S, S)`` (eval mode, no flips)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(normalise(c.float() / 255).to(device)).softmax(-1).cpu() for c in images.split(256)])


def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str = "cpu") -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class recall, error count and a short hash of the predictions;
    with two classes also the AUROC of p(class 1), a score no decision threshold moves.

    Args:
        model: The classifier.
        images: uint8 ``(M, 3, S, S)``.
        labels: int64 ``(M,)`` in ``[0, K)``.
        device: Where the model runs.

    Returns:
        ``{"accuracy", "balanced_accuracy", "f1_macro", "recall": [K values in [0, 1]], "errors",
        "predictions_sha"}`` and, for K = 2 with both classes present, ``"auroc"`` in [0, 1].
    """
    probs = predict(model, images, device)
    pred = probs.argmax(-1)
    f1s, recalls = [], []
    for c in range(int(labels.max()) + 1):
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
        recalls.append(tp / max(1, tp + fn))
    out = {"accuracy": float((pred == labels).float().mean()), "balanced_accuracy": float(np.mean(recalls)),
           "f1_macro": float(np.mean(f1s)), "recall": recalls, "errors": int((pred != labels).sum()),
           "predictions_sha": hashlib.sha256(pred.to(torch.uint8).numpy().tobytes()).hexdigest()[:12]}
    if probs.shape[1] == 2 and 0 < int(labels.sum()) < len(labels):
        out["auroc"] = auroc(probs[:, 1], labels)
    return out


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``(M,)`` for binary ``labels`` ``(M,)`` (1 positive): the chance that
    a random positive scores above a random negative, ties counted half (the Mann-Whitney statistic, from average
    ranks: O(M log M) time and O(M) memory, for held-out sets of any size).

    Raises:
        ValueError: ``labels`` holds only one class.
    """
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"`labels` must hold both classes, got {n_pos} positives and {n_neg} negatives")
    order = scores.double().argsort()
    _, tie, counts = torch.unique(scores.double()[order], return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = (last - (counts.double() - 1) / 2)[tie]  # the group's average rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_classifier(real: LabelledImages, generated: LabelledImages | None, recipe: Recipe, spec: TrainSpec, seed: int,
                     val: tuple[torch.Tensor, torch.Tensor] | None = None, device: str = "cpu") -> tuple[torch.nn.Module, float | None]:
    """Train one classifier from scratch.

    Args:
        real: The real training tiles with one-hot rows.
        generated: Generated images with their rows (None or empty: none; ``recipe.replace_prob`` or
            ``recipe.uniform`` decide how they enter).
        recipe: How batches are made.
        spec: Optimisation settings; ``spec.steps(len(real))`` steps.
        seed: Sets the initialisation (the same for every recipe: differences are paired), the batch
            order and every draw.
        val: ``(images uint8, class indices)`` of the validation split: the checkpoint with the best
            validation accuracy is returned (``spec.checkpoint == "best"``), or the last one with its validation
            accuracy (``"last"``); None: the last one, unscored.
        device: Where to train.

    Returns:
        ``(model, the returned checkpoint's validation accuracy or None)``.
    """
    gen = seed_everything(seed)
    k = real.rows.shape[1]
    model = make_classifier(spec.classifier, k, real.images.shape[-1]).to(device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = spec.steps(len(real))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    loss_fn = SoftLabelCrossEntropy()
    mix = _mixup(recipe, k)
    n_gen = 0 if generated is None else len(generated)
    best, best_state = None, None
    for epoch in range(spec.epochs):
        model.train()
        for mask, index in _batches(len(real), n_gen, recipe, spec.batch_size, gen):
            batch, rows = _make_batch(real, generated, mask, index, recipe, gen)
            inputs, target = normalise(batch).to(device), rows.to(device)
            if mix is not None and len(inputs) > 1:
                inputs, target = _apply_mixup(mix, inputs, target)
            if spec.channels_last:  # otherwise the inputs keep their layout, as before the setting existed (stain jitter's
                inputs = inputs.contiguous(memory_format=torch.channels_last)  # output is not contiguous: other conv kernels)
            with autocast(device, autocast_dtype(spec.bf16)):
                loss = loss_fn(model(inputs), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if val is not None and _validates_after(epoch, spec):
            acc = score(model, val[0], val[1], device)["accuracy"]
            if spec.checkpoint == "last":
                best = acc
            elif best is None or acc >= best:  # ties: the later checkpoint, further down the one-cycle schedule
                best, best_state = acc, {name: v.detach().clone() for name, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, best


def _validates_after(epoch: int, spec: TrainSpec) -> bool:
    """Whether validation runs after ``epoch`` (0-based): always after the last; every ``eval_every`` epochs
    when the best checkpoint is kept."""
    last = epoch + 1 == spec.epochs
    return last or (spec.checkpoint == "best" and (epoch + 1) % spec.eval_every == 0)


def _mixup(recipe: Recipe, num_classes: int):
    if recipe.mixup_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=1.25 * recipe.mixup_alpha, switch_prob=0.5, num_classes=num_classes,
                 label_smoothing=0.0)


def _apply_mixup(mix, inputs: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's batch-mode Mixup / CutMix on images with probability rows: timm mixes the images and returns
    its (area-corrected) lambda, the rows are mixed here with the same lambda and flip, so soft rows stay
    soft (timm's own ``__call__`` would one-hot them)."""
    if len(inputs) % 2:  # timm's Mixup needs an even batch
        inputs, rows = inputs[:-1], rows[:-1]
    mixed = inputs.clone()
    lam = float(mix._mix_batch(mixed))
    return mixed, lam * rows + (1 - lam) * rows.flip(0)
