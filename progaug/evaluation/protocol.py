"""The evaluation protocol: does adding a pair's generated images make a better classifier of a user's
classes than the augmentations pathology users already use?

The same for every arm, seed and N (docs/benchmarks.md, "The downstream protocol"):

1. **Subsets.** For each seed a fixed random order of each class's training tiles; N tiles per class =
   the first N (nested). Generated images come only from the N class-A tiles of that subset. With
   ``subset_seed`` every run trains on that one seed's subset (the seeds vary initialisation and batch
   order only): the design for a pair trained on exactly those tiles, whose images then hold no
   information from tiles the real arms never see.
2. **Budget.** In epochs over the real tiles, chosen per N at the plateau of a real-only validation
   learning curve (by default the *longest* budget within ``plateau_tolerance`` of the best mean
   validation accuracy: train as long as validation does not get worse, since a small validation split
   saturates long before the test split does; ``plateau_pick="shortest"`` is the rule before session 13);
   every arm gets the same optimiser steps. The standard arms run first: if one of them
   (Mixup/CutMix, stain, flips) loses to its baseline beyond its interval at that budget, the budget is
   too short for regularised training at that N and doubles (at most ``budget_doublings`` times) before
   any generated arm is trained.
3. **Adding generated images.** Per-draw replacement with probability ``p`` (a real draw becomes a
   generated one, :mod:`progaug.replacement`), so every arm sees the same real tiles equally often; the
   old uniform concatenation stays as one arm for continuity.
4. **Tuning.** Every tuned arm gets the same budget: each value of its grid (``p``, Mixup/CutMix alpha,
   stain sigma) trained on the tuning seeds, chosen by mean validation accuracy. The test split decides
   nothing: it is scored once per evaluation seed with the last checkpoint (``checkpoint="last"``, the
   default since session 35: no selection, so the validation split's accuracy of an evaluation run is a
   score of a second held-out region as well), or with the checkpoint the validation split picked
   (``checkpoint="best"``, the default before: its validation accuracy is a maximum over checkpoints,
   optimistic for tuning, and at N = 100 it cost every arm 4-6 test points, docs/benchmarks.md).
5. **Figures.** Accuracy, macro-F1 and balanced accuracy over seeds with 95 % t-intervals, paired
   differences per seed; a sanity block (flips/rotations vs none, Mixup/CutMix and stain vs real only at
   the largest N) says whether the protocol is converged before any generated arm is judged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from progaug.config import JsonConfig, setting
from progaug.errors import check_int, device_setting
from progaug.data.tiles import TileSet
from progaug.evaluation.arms import MARGIN_SUFFIX, Arm, all_arms, arm_named  # re-exported: the protocol's public names
from progaug.evaluation.classifiers import CLASSIFIERS
from progaug.evaluation.report import STANDARD_ARMS
from progaug.evaluation.stats import interval, paired_runs
from progaug.evaluation.training import CHECKPOINTS, LabelledImages, Recipe, TrainSpec, score, train_classifier
from progaug.losses import soft_label_to_row

__all__ = ["MARGIN_SUFFIX", "PLATEAU_PICKS", "Arm", "GeneratedSets", "ProtocolConfig", "all_arms", "arm_named", "class_orders", "held_out_roles", "needed_positions", "parse_n", "planned_runs", "plateau", "real_subset", "run_protocol", "sanity", "write_subset"]

PLATEAU_PICKS = ("longest", "shortest")
"""How :func:`plateau` picks among the budgets within tolerance of the best validation accuracy."""

LR = {"cnn": 2e-3, "vit": 1e-3, "probe": 1e-2}
"""Peak learning rate per classifier (AdamW, one-cycle). The probe's: the best mean validation accuracy
over N = 25 and all of 1e-3, 3e-3, 1e-2 (benchmarks/results/probe_backbone.md)."""


@dataclasses.dataclass(frozen=True)
class ProtocolConfig(JsonConfig):
    """Settings of one protocol run (one classifier).

    Attributes: see each field's help text.
    """

    classifier: str = setting("cnn", "classifier: cnn or vit (from scratch) or probe (linear, frozen ImageNet features; progaug[probe])")
    n: tuple[str, ...] = setting(("25", "50", "100", "all"), "labelled real tiles per class ('all' or integers)")
    seeds: tuple[int, ...] = setting((0, 1, 2, 3, 4), "evaluation seeds (subset, initialisation, batch order)")
    tune_seeds: tuple[int, ...] = setting((100, 101), "seeds of the tuning runs and of the learning curve (scored on validation only)")
    subset_seed: int | None = setting(None, "one real subset for every run: this seed's first N tiles per class (the seeds then "
                                            "vary initialisation and batch order only), for a pair trained on exactly those tiles "
                                            "(no leak). Default: each seed draws its own subset")
    swap_held_out: bool = setting(False, "exchange the held-out splits' roles: settings (and best checkpoints) chosen on test/, the "
                                         "scores read on val/ (the second fold of a two-region check; a gain that holds on one "
                                         "held-out region only is that region's)")
    checkpoint: str = setting("last", "which checkpoint every training returns: last (the end of the schedule, no selection: "
                                      "the choosing split's accuracy is then a score too) or best (the best accuracy on the "
                                      "choosing split, checked every 5 epochs; a maximum, optimistic; the default before "
                                      "session 35, so add it to rerun older reports from their logs)")
    epochs: int | None = setting(None, "fixed budget in real-image epochs (default: chosen per N from the learning curve)")
    curve_epochs: tuple[int, ...] = setting((20, 40, 80, 160), "budgets of the real-only learning curve")
    plateau_tolerance: float = setting(0.01, "budget = a curve budget within this of the best mean validation accuracy")
    plateau_pick: str = setting("longest", "which budget within the tolerance: longest (train while validation does not get worse) or shortest")
    batch_size: int = setting(32, "images per optimiser step")
    p_grid: tuple[float, ...] = setting((0.1, 0.3, 0.5), "replacement probabilities tried for each generated arm")
    mixup_grid: tuple[float, ...] = setting((0.2, 0.5, 1.0), "Mixup alphas tried (CutMix alpha 1.25x)")
    stain_grid: tuple[float, ...] = setting((0.02, 0.05, 0.1), "HED stain jitter sigmas tried")
    filter_margin: float = setting(0.5, "filtered arm: keep images whose teacher p(B) is within this of the soft label")
    train_channels_last: bool | None = setting(None, "classifiers and their training inputs channels-last (CNN on CPU: about 1.4x "
                                                      "faster; other float rounding, so these runs are logged apart). Default: on "
                                                      "for the CNN")
    train_bf16: bool | None = setting(None, "bf16 autocast of the classifiers' training passes (about 2x with channels-last on an "
                                             "AVX512-BF16 CPU; logged apart). Default: on for the CNN where the device computes bf16 "
                                             "natively (checked against float32 on 20 seeds, docs/benchmarks.md)")
    budget_doublings: int = setting(2, "times the budget may double at an N where a standard regulariser loses at the curve's budget")
    device: str = setting("cpu", "where the classifiers train and the generated sets are made: cpu, cuda, cuda:1 ...")
    workers: int = setting(1, "processes that train classifiers side by side, each with threads // workers threads: for "
                              "machines with more cores than one small training can fill (on a 2-core CPU 1.1x, measured); "
                              "the same figures, not part of a run's identity")

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"`classifier` must be one of {CLASSIFIERS}, got {self.classifier!r}")
        for value in self.n:
            parse_n(value)
        for name in ("seeds", "tune_seeds", "curve_epochs", "p_grid", "mixup_grid", "stain_grid"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"`{name}` must hold at least one value, each once, got {values}")
        if set(self.seeds) & set(self.tune_seeds):
            raise ValueError(f"`tune_seeds` {self.tune_seeds} must differ from `seeds` {self.seeds}")
        if any(not 0 < p <= 1 for p in self.p_grid):
            raise ValueError(f"`p_grid` values must lie in (0, 1], got {self.p_grid}")
        check_int("subset_seed", self.subset_seed, low=0, allow_none=True)
        if not isinstance(self.swap_held_out, bool):
            raise TypeError(f"`swap_held_out` must be True or False, got {self.swap_held_out!r}")
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"`checkpoint` must be one of {CHECKPOINTS}, got {self.checkpoint!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {self.epochs}")
        if self.plateau_pick not in PLATEAU_PICKS:
            raise ValueError(f"`plateau_pick` must be one of {PLATEAU_PICKS}, got {self.plateau_pick!r}")
        if self.budget_doublings < 0:
            raise ValueError(f"`budget_doublings` must be >= 0, got {self.budget_doublings}")
        check_int("workers", self.workers, low=1)
        object.__setattr__(self, "device", device_setting("device", self.device, required=True))
        object.__setattr__(self, "train_channels_last", self.resolved_channels_last())
        object.__setattr__(self, "train_bf16", self.resolved_bf16())

    def resolved_channels_last(self) -> bool:
        """``train_channels_last`` made concrete: None means on for the CNN (its convolutions gain; the ViT's
        one patch convolution does not)."""
        return self.classifier == "cnn" if self.train_channels_last is None else _checked_bool("train_channels_last", self.train_channels_last)

    def resolved_bf16(self) -> bool:
        """``train_bf16`` made concrete: None means on for the CNN where ``device`` computes bf16 natively
        (:func:`progaug.runtime.native_bf16`). The ViT stays float32: bf16 made its training 1.5x *slower* on a CPU
        with AMX (``benchmarks/results/train_speed_vit_amx.md``); the probe gains 1.6x with both settings there, but its
        verdicts were never checked under them, so it stays float32 too."""
        if self.train_bf16 is None:
            from progaug.runtime import native_bf16

            return self.classifier == "cnn" and native_bf16(self.device)
        return _checked_bool("train_bf16", self.train_bf16)

    def subset_of(self, seed: int) -> int:
        """The seed whose real subset a run of ``seed`` trains on: ``subset_seed`` where set, else ``seed``."""
        return seed if self.subset_seed is None else self.subset_seed

    def spec(self, epochs: int) -> TrainSpec:
        """The optimisation of every arm at ``epochs``."""
        return TrainSpec(classifier=self.classifier, epochs=epochs, batch_size=self.batch_size, lr=LR[self.classifier],
                         channels_last=self.train_channels_last, bf16=self.train_bf16, checkpoint=self.checkpoint)


def _checked_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False, else a TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True, False or None (automatic), got {value!r}")
    return value


def parse_n(value: str) -> int | None:
    """``'all'`` -> None, a positive integer string -> int.

    Raises:
        ValueError: Anything else.
    """
    if value == "all":
        return None
    if not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"N takes positive integers or 'all', got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class GeneratedSets:
    """Generated images of a pair for every class-A training tile, indexed by the tile's position among the
    class-A training tiles.

    Attributes:
        pro: :attr:`Arm.set_key` (a measure, or ``MEASURE+margin``) -> ``(images (A, L, 3, S, S) uint8, soft labels
            (A, L) float32)``.
        final: ``(A, 3, S, S)`` uint8 full-depth translations (or None).
        iddpm: ``(P, 3, S, S)`` uint8 unconditional samples (or None).
    """

    pro: dict[str, tuple[torch.Tensor, torch.Tensor]]
    final: torch.Tensor | None = None
    iddpm: torch.Tensor | None = None


# ------------------------------------------------------------------------------ data of one subset


@dataclasses.dataclass
class _Subset:
    """The real tiles of one (seed, N) and the class-A positions their generated images come from."""

    real: LabelledImages
    labels: torch.Tensor
    a_positions: torch.Tensor


def class_orders(train: TileSet, seed: int) -> dict[str, torch.Tensor]:
    """A fixed random order of each class's training-tile indices for ``seed`` (indices into ``train``)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return {c: torch.nonzero(train.labels == i).flatten()[torch.randperm(int((train.labels == i).sum()), generator=gen)]
            for i, c in enumerate(train.classes)}


def needed_positions(train: TileSet, a_class: str, config: ProtocolConfig) -> torch.Tensor:
    """Sorted positions (among the class-A training tiles) of every class-A tile some subset of the run uses:
    the only tiles whose generated images are needed."""
    a_all = torch.nonzero(train.labels == train.classes.index(a_class)).flatten()
    position = {int(g): i for i, g in enumerate(a_all)}
    used = set()
    for seed in {config.subset_of(s) for s in (*config.seeds, *config.tune_seeds)}:
        order = class_orders(train, seed)[a_class]
        for key in config.n:
            n = parse_n(key)
            used.update(position[int(g)] for g in (order if n is None else order[:n]))
    return torch.tensor(sorted(used), dtype=torch.long)


def real_subset(train: TileSet, seed: int, n: int | None) -> tuple[LabelledImages, dict[str, torch.Tensor]]:
    """The real training tiles of one seed and N: the first ``n`` of each class in :func:`class_orders`'s order.

    Args:
        train: The training split.
        seed: The evaluation or tuning seed (it fixes the order).
        n: Tiles per class (None: every tile).

    Returns:
        ``(tiles with one-hot rows, {class: chosen indices into train})``, the classes in ``train.classes`` order.
    """
    chosen = {c: (o if n is None else o[:n]) for c, o in class_orders(train, seed).items()}
    index = torch.cat(list(chosen.values()))
    return LabelledImages(train.images[index], F.one_hot(train.labels[index], len(train.classes)).float()), chosen


def write_subset(train: TileSet, seed: int, n: int | None, folder: str | os.PathLike[str]) -> dict[str, int]:
    """Write :func:`real_subset`'s tiles as ``folder/<class>/NNNN.png``, in the subset's order: the data to train a
    pair on exactly the tiles that runs with ``subset_seed=seed`` train on (``progaug train --data folder``).

    Args:
        train: The training split (uint8 ``(M, 3, S, S)`` tiles).
        seed: The subset's seed.
        n: Tiles per class (None: every tile).
        folder: Where to write; must not hold any of the class folders yet.

    Returns:
        Tiles written per class.

    Raises:
        FileExistsError: A class folder already exists (nothing is overwritten; the message names it).
    """
    from PIL import Image

    from progaug.fileio import atomic_write_bytes

    _, chosen = real_subset(train, seed, n)
    root = Path(folder)
    for name in chosen:
        if (root / name).exists():
            raise FileExistsError(f"{root / name} already exists; write_subset writes into new class folders only")
    for name, index in chosen.items():
        (root / name).mkdir(parents=True)
        for j, g in enumerate(index.tolist()):
            buf = io.BytesIO()
            Image.fromarray(train.images[g].permute(1, 2, 0).numpy()).save(buf, format="PNG")
            atomic_write_bytes(root / name / f"{j:04d}.png", buf.getvalue())
    return {name: len(index) for name, index in chosen.items()}


def _subset(train: TileSet, seed: int, n: int | None, a_class: str) -> _Subset:
    real, chosen = real_subset(train, seed, n)
    a_all = torch.nonzero(train.labels == train.classes.index(a_class)).flatten()
    position = {int(g): i for i, g in enumerate(a_all)}
    a_pos = torch.tensor([position[int(g)] for g in chosen[a_class]], dtype=torch.long)
    return _Subset(real, real.rows.argmax(-1), a_pos)  # one-hot rows: their argmax is each tile's class index


def _hard_rows(count: int, index: int, k: int) -> torch.Tensor:
    return F.one_hot(torch.full((count,), index), k).float()


# ------------------------------------------------------------------------------------ the runner


class _Runner:
    """Holds the data of one protocol run and trains its classifiers."""

    def __init__(self, splits: dict[str, TileSet], classes: tuple[str, str], sets: GeneratedSets, config: ProtocolConfig,
                 device: str, on_run: Callable[[str], None] | None, memo: MutableMapping[str, dict] | None = None) -> None:
        self.train, self.config, self.sets, self.device = splits["train"], config, sets, device
        chooses, scored = held_out_roles(config.swap_held_out)
        self.val = (splits[chooses].images, splits[chooses].labels)
        self.test = splits[scored]
        self.k = len(self.train.classes)
        self.a, self.b = (self.train.classes.index(c) for c in classes)
        self.a_class = classes[0]
        self.on_run = on_run or (lambda _: None)
        self.on_teacher: Callable[[tuple, str], None] = self._report_teacher
        """Called with a teacher's key and progress line when one is trained (a worker collects them instead)."""
        self._teachers: dict[tuple, torch.Tensor] = {}
        self.memo = {} if memo is None else memo
        self._digests: dict[str, str] = {}
        self._runner_args = (splits, classes, sets, config, device)
        self._pool = None
        self._teachers_reported: set[tuple] = set()

    def sets_digest(self, arm: Arm) -> str | None:
        """sha256 (16 hex) of the generated images ``arm`` draws from (None for real-only arms)."""
        tensors = {"final": (self.sets.final,), "iddpm": (self.sets.iddpm,)}.get(arm.generated) or self.sets.pro.get(arm.set_key)
        if arm.generated is None or tensors is None:
            return None
        name = f"{arm.generated}:{arm.set_key}"
        if name not in self._digests:
            h = hashlib.sha256()
            for t in tensors:
                h.update(t.contiguous().numpy().tobytes())
            self._digests[name] = h.hexdigest()[:16]
        return self._digests[name]

    def generated(self, arm: Arm, sub: _Subset, seed: int, n_key: str, epochs: int) -> LabelledImages | None:
        """The generated images of ``arm`` for one subset (None for real-only arms)."""
        if arm.generated is None:
            return None
        if arm.generated == "final":
            images = self.sets.final[sub.a_positions]
            return LabelledImages(images, _hard_rows(len(images), self.b, self.k))
        if arm.generated == "iddpm":
            pick = torch.randperm(len(self.sets.iddpm), generator=torch.Generator().manual_seed(20_000 + seed))[:len(sub.a_positions)]
            return LabelledImages(self.sets.iddpm[pick], _hard_rows(len(pick), self.b, self.k))
        images, soft = self.sets.pro[arm.set_key]
        images, soft = images[sub.a_positions].flatten(0, 1), soft[sub.a_positions].flatten()
        if arm.filtered:
            keep = self._keep(images, soft, sub, seed, n_key, epochs)
            images, soft = images[keep], soft[keep]
        return LabelledImages(images, soft_label_to_row(soft.float(), self.a, self.b, self.k))

    def _keep(self, images: torch.Tensor, soft: torch.Tensor, sub: _Subset, seed: int, n_key: str, epochs: int) -> torch.Tensor:
        from progaug.selection import agreement_mask, fit_teacher, teacher_probability

        key, new = (seed, n_key, len(images)), (seed, n_key, len(images)) not in self._teachers
        if new:
            teacher = fit_teacher(sub.real.images, sub.labels, self.k, epochs=epochs, seed=seed, device=self.device)
            self._teachers[key] = teacher_probability(teacher, images, self.b, self.device)
        keep = agreement_mask(soft, self._teachers[key], self.config.filter_margin)
        if new:
            self.on_teacher(key, f"teacher N={n_key} seed {seed}: keeps {int(keep.sum())} of {len(soft)} generated images")
        return keep

    def key(self, arm: Arm, recipe: Recipe, seed: int, n_key: str, epochs: int, test: bool) -> str:
        """What decides a training's result (its entry in ``memo`` and the run log); a fixed ``subset_seed`` and a
        device other than the CPU are appended, so keys of CPU runs that draw a subset per seed stay as they were.

        The device is part of the key because the same seed trains differently on another device (the ViT at
        N = 100: up to 19 test errors of 183 apart, docs/benchmarks.md, session 31): a log shared between a GPU
        and a CPU run must not pair one device's real runs with the other's generated arms."""
        fields = [arm.name, arm.run_fields(), recipe.to_dict(), seed, n_key, epochs, test, self.config.spec(epochs).run_fields(),
                  self.config.filter_margin if arm.filtered else None, self.sets_digest(arm)]
        if self.config.subset_seed is not None:
            fields.append({"subset_seed": self.config.subset_seed})
        if self.config.swap_held_out:
            fields.append({"swap_held_out": True})
        device_type = torch.device(self.device).type
        if device_type != "cpu":
            fields.append({"device": device_type})
        return json.dumps(fields, sort_keys=True)

    def fit_all(self, requests: Sequence[tuple]) -> list[dict]:
        """:meth:`fit` for each request (its arguments), in order; with ``config.workers > 1`` the trainings not
        in ``memo`` run side by side in worker processes (:mod:`progaug.evaluation.workers`), their progress lines
        reported as each finishes."""
        if self.config.workers == 1:
            return [self.fit(*r) for r in requests]
        keys = [self.key(arm, recipe, seed, n_key, epochs, test) for arm, recipe, seed, _, n_key, epochs, test in requests]
        todo = {}
        for request, key in zip(requests, keys):
            if key in self.memo:
                self.fit(*request)  # reports it as kept, as in one process
            elif key not in todo:
                todo[key] = request
        if todo:
            from concurrent.futures import as_completed

            from progaug.evaluation.workers import fit_in_worker

            running = {self._workers().submit(fit_in_worker, request): key for key, request in todo.items()}
            for done in as_completed(running):
                out, teachers, messages = done.result()
                self.memo[running[done]] = out
                for key, message in teachers:  # another worker may have trained the same (seeded) teacher
                    self._report_teacher(tuple(key), message)
                for message in messages:
                    self.on_run(message)
        return [dict(self.memo[key]) for key in keys]

    def _report_teacher(self, key: tuple, message: str) -> None:
        """Report a trained teacher once per key, as one process trains each once."""
        if key not in self._teachers_reported:
            self._teachers_reported.add(key)
            self.on_run(message)

    def _workers(self):
        if self._pool is None:
            from progaug.evaluation.workers import start_pool, threads_per_worker

            self._pool = start_pool(self.config.workers, self._runner_args, threads_per_worker(self.config.workers))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def fit(self, arm: Arm, recipe: Recipe, seed: int, n: int | None, n_key: str, epochs: int, test: bool) -> dict:
        """Train one classifier; its validation accuracy, and test metrics when ``test`` (else a tuning or
        learning-curve run). A run already in ``memo`` (same arm, recipe, seed, N, budget, settings) is not
        trained again."""
        key = self.key(arm, recipe, seed, n_key, epochs, test)
        if key in self.memo:
            self.on_run(f"N={n_key} {arm.name} seed {seed}: kept from an earlier run")
            return dict(self.memo[key])
        began = time.time()
        sub = _subset(self.train, self.config.subset_of(seed), n, self.a_class)
        gen = self.generated(arm, sub, seed, n_key, epochs)
        model, val = train_classifier(sub.real, gen, recipe, self.config.spec(epochs), seed, self.val, self.device)
        out = {"seed": seed, "epochs": epochs, "val_accuracy": val, "real_images": len(sub.real), "generated_images": 0 if gen is None else len(gen)}
        if test:
            out.update(score(model, self.test.images, self.test.labels, self.device))
            if self.config.checkpoint == "last":  # no checkpoint was chosen: the choosing split's figures are scores too
                held = score(model, *self.val, self.device)
                out.update({f"val_{k}": held[k] for k in ("f1_macro", "recall", "auroc") if k in held})
        out["seconds"] = round(time.time() - began, 1)
        self.memo[key] = out
        chooses, scored = held_out_roles(self.config.swap_held_out)
        what = f"{scored} acc {out['accuracy']:.3f}" if test else f"{chooses} acc {val:.3f} ({epochs} epochs, {_show(recipe)})"
        self.on_run(f"N={n_key} {arm.name} seed {seed}: {what}")
        return out


def held_out_roles(swapped: bool) -> tuple[str, str]:
    """``(split that chooses, split that is scored)``: checkpoints, budgets and tuned settings are chosen on the
    first, the reported accuracy is read on the second; ``("val", "test")`` unless ``swapped``
    (:attr:`ProtocolConfig.swap_held_out`)."""
    return ("test", "val") if swapped else ("val", "test")


def _show(recipe: Recipe) -> str:
    changed = {k: v for k, v in recipe.to_dict().items() if v != getattr(Recipe(), k)}
    return ", ".join(f"{k} {v}" for k, v in changed.items()) or "defaults"


CARRIED_DEFAULTS = {"stain_sigma": 0.05, "mixup_alpha": 0.5}
"""Settings a generated arm with stain or Mixup/CutMix on top takes where the run has no ``+stain`` /
``+Mixup/CutMix`` arm to tune them (the middle values of the default ``stain_grid`` and ``mixup_grid``, fixed
whatever grids a run passes); with that arm, its tuned choice."""


def _recipe(arm: Arm, value: float | None, carried: dict[str, float]) -> Recipe:
    settings = {"flips": arm.flips, "uniform": arm.uniform}
    if arm.generated is not None and arm.stain:
        settings["stain_sigma"] = carried["stain_sigma"]
    if arm.generated is not None and arm.mixup:
        settings["mixup_alpha"] = carried["mixup_alpha"]
    if arm.knob is not None:
        settings[arm.knob] = value
    return Recipe(**settings)


def _grid(arm: Arm, config: ProtocolConfig) -> tuple[float, ...]:
    return {"replace_prob": config.p_grid, "mixup_alpha": config.mixup_grid, "stain_sigma": config.stain_grid}.get(arm.knob, (None,))


def planned_runs(config: ProtocolConfig, arms: Sequence[Arm]) -> int:
    """Classifier trainings one :func:`run_protocol` call makes (for a progress bar; teachers included)."""
    per_n = len(config.curve_epochs) * len(config.tune_seeds) if config.epochs is None else 0
    per_n += sum(_arm_runs(arm, config) for arm in arms)
    if any(a.filtered for a in arms):
        per_n += len(config.seeds) + len(config.tune_seeds)
    return per_n * len(config.n)


def _arm_runs(arm: Arm, config: ProtocolConfig) -> int:
    """Trainings of one arm at one N and budget: its grid on the tuning seeds (tuned arms), then the seeds."""
    return (len(_grid(arm, config)) * len(config.tune_seeds) if arm.knob is not None else 0) + len(config.seeds)


def _budget(runner: _Runner, config: ProtocolConfig, n: int | None, n_key: str) -> dict:
    """The real-only validation learning curve at one N and the budget read from it."""
    if config.epochs is not None:
        return {"epochs": config.epochs, "curve": None}
    runs = iter(runner.fit_all([(Arm("real"), Recipe(), s, n, n_key, epochs, False) for epochs in config.curve_epochs for s in config.tune_seeds]))
    curve = {str(epochs): interval([next(runs)["val_accuracy"] for _ in config.tune_seeds]) for epochs in config.curve_epochs}
    means = {int(e): c["mean"] for e, c in curve.items()}
    return {"epochs": plateau(means, config.plateau_tolerance, config.plateau_pick), "curve": curve, "pick": config.plateau_pick}


def plateau(means: dict[int, float], tolerance: float, pick: str = "longest") -> int:
    """A budget on the plateau of a validation learning curve.

    Args:
        means: Mean validation accuracy per budget (epochs).
        tolerance: A budget is on the plateau when its mean is within this of the best one.
        pick: ``"longest"``: the longest such budget (train as long as validation does not get worse; a
            small validation split that saturates cannot show the gains a longer budget still makes on
            harder tiles); ``"shortest"``: the shortest (the rule before session 13).

    Raises:
        ValueError: Unknown ``pick`` or no budgets.
    """
    if pick not in PLATEAU_PICKS:
        raise ValueError(f"`pick` must be one of {PLATEAU_PICKS}, got {pick!r}")
    if not means:
        raise ValueError("`means` holds no budgets")
    best = max(means.values())
    on_plateau = [e for e, m in means.items() if m >= best - tolerance]
    return max(on_plateau) if pick == "longest" else min(on_plateau)


def _tune(runner: _Runner, arm: Arm, config: ProtocolConfig, n: int | None, n_key: str, epochs: int, carried: dict[str, float]) -> dict:
    """Each value of the arm's grid on the tuning seeds; the one with the best mean validation accuracy."""
    if arm.knob is None:
        return {"knob": None, "chosen": None, "values": {}}
    grid = _grid(arm, config)
    runs = iter(runner.fit_all([(arm, _recipe(arm, value, carried), s, n, n_key, epochs, False) for value in grid for s in config.tune_seeds]))
    values = {str(value): sum(next(runs)["val_accuracy"] for _ in config.tune_seeds) / len(config.tune_seeds) for value in grid}
    chosen = max(values, key=lambda v: values[v])  # ties: the first (smallest) value
    return {"knob": arm.knob, "chosen": float(chosen), "values": values}


def _summarise(runs: list[dict]) -> dict:
    return {"runs": runs, **{m: interval([r[m] for r in runs]) for m in ("accuracy", "f1_macro", "balanced_accuracy")}}


def run_protocol(splits: dict[str, TileSet], classes: tuple[str, str], sets: GeneratedSets, arms: Sequence[Arm], config: ProtocolConfig,
                 *, on_run: Callable[[str], None] | None = None, memo: MutableMapping[str, dict] | None = None,
                 on_n: Callable[[dict], None] | None = None, on_plan: Callable[[int], None] | None = None) -> dict:
    """Run the protocol for one classifier.

    Args:
        splits: ``train``, ``val`` and ``test`` tiles (uint8).
        classes: ``(A, B)``: the pair's source and target classes, both among the splits' classes.
        sets: The pair's generated images for every class-A training tile.
        arms: Arms to run; ``real`` is always needed (paired differences), and is added first when missing.
        config: The protocol's settings (``config.device``: where to train).
        on_run: Called after each classifier training with a short description (progress).
        on_plan: Called with the number of trainings added to :func:`planned_runs`'s count when the budget
            doubles at an N (the standard arms run again at the longer budget).
        memo: Results of earlier trainings by a key of everything that decides them; new ones are added
            (a stopped run resumes: see :class:`progaug.evaluation.pipeline.RunLog`). The caller makes sure
            that the data and generated sets are the same.
        on_n: Called with the result so far after each N (partial reports).

    Returns:
        ``{"config", "classes", "arms", "curve": {N: {"budget", "tuning", "arms": {name: {"runs",
        "accuracy", "f1_macro", "balanced_accuracy", "paired"}}}}, "sanity"}`` (docs/benchmarks.md).

    Raises:
        ValueError: Missing splits or classes, or an arm whose generated images ``sets`` does not hold.
    """
    _check_inputs(splits, classes, sets, arms)
    arms = list(arms) if any(a.name == "real" for a in arms) else [Arm("real"), *arms]
    runner = _Runner(splits, classes, sets, config, config.device, on_run, memo)
    try:
        return _run_ns(runner, splits, classes, arms, config, on_n, on_plan)
    finally:
        runner.close()


def _run_ns(runner: _Runner, splits: dict[str, TileSet], classes: tuple[str, str], arms: list[Arm], config: ProtocolConfig,
            on_n: Callable[[dict], None] | None, on_plan: Callable[[int], None] | None) -> dict:
    """The body of :func:`run_protocol`: every N in turn."""
    out = {"config": config.to_dict(), "classes": list(splits["train"].classes), "direction": list(classes),
           "arms": {a.name: dataclasses.asdict(a) for a in arms}, "curve": {}}
    for n_key in config.n:
        n = parse_n(n_key)
        budget = _budget(runner, config, n, n_key)
        standard = [a for a in arms if a.generated is None]
        entry = {"budget": budget, "tuning": {}, "arms": {}}
        growth = []
        for doubling in range(config.budget_doublings + 1):
            epochs = budget["epochs"] * 2 ** doubling
            entry.update(tuning={}, arms={})
            carried = _run_arms(runner, standard, config, n, n_key, epochs, CARRIED_DEFAULTS, entry)
            _add_paired(entry)
            losing = _losing(_sanity_checks(entry["arms"]))
            growth.append({"epochs": epochs, "losing": losing})
            if not losing or config.epochs is not None or doubling == config.budget_doublings:
                break
            if on_plan is not None:
                on_plan(sum(_arm_runs(arm, config) for arm in standard))
        budget.update(epochs=epochs, growth=growth)
        _run_arms(runner, [a for a in arms if a.generated is not None], config, n, n_key, epochs, carried, entry)
        entry["arms"] = {a.name: entry["arms"][a.name] for a in arms}
        entry["tuning"] = {a.name: entry["tuning"][a.name] for a in arms}
        _add_paired(entry)
        out["curve"][n_key] = entry
        out["sanity"] = sanity(out)
        if on_n is not None:
            on_n(out)
    return out


def _run_arms(runner: _Runner, arms: Sequence[Arm], config: ProtocolConfig, n: int | None, n_key: str, epochs: int,
              carried: dict[str, float], entry: dict) -> dict[str, float]:
    """Tune and evaluate ``arms`` at one N and budget into ``entry``; returns ``carried`` (the stain sigma and
    Mixup alpha: the ``+stain`` / ``+Mixup/CutMix`` arm's choice once it has run, used by the generated arms that
    add stain or Mixup/CutMix on top; a new dict, ``carried`` itself is not changed)."""
    carried = dict(carried)
    for arm in arms:
        tuning = _tune(runner, arm, config, n, n_key, epochs, carried)
        if arm.generated is None and arm.knob in carried:
            carried[arm.knob] = tuning["chosen"]
        entry["tuning"][arm.name] = tuning
        recipe = _recipe(arm, tuning["chosen"], carried)
        runs = runner.fit_all([(arm, recipe, s, n, n_key, epochs, True) for s in config.seeds])
        entry["arms"][arm.name] = {**_summarise(runs), "recipe": recipe.to_dict()}
    return carried


def _check_inputs(splits: dict[str, TileSet], classes: tuple[str, str], sets: GeneratedSets, arms: Sequence[Arm]) -> None:
    missing = [s for s in ("train", "val", "test") if s not in splits]
    if missing:
        raise ValueError(f"the protocol needs train, val and test splits; missing {missing}")
    for c in classes:
        for split in ("train", "val", "test"):
            if c not in splits[split].classes:
                raise ValueError(f"class {c!r} of the pair is not among the {split} classes {list(splits[split].classes)}")
    for arm in arms:
        if arm.generated == "pro" and arm.set_key not in sets.pro:
            raise ValueError(f"arm {arm.name!r} needs progressive images made with measure {arm.measure!r}"
                             + ("" if arm.labels == "measure" else f" and their {arm.labels} labels"))
        if arm.generated in ("final", "iddpm") and getattr(sets, arm.generated) is None:
            raise ValueError(f"arm {arm.name!r} needs the {arm.generated!r} generated set")


COMPARED_WITH = ("real", *STANDARD_ARMS, "+ADD-Pro[paper]", "+ADD-final")
"""Arms every arm is compared with, per seed."""


def _add_paired(entry: dict) -> None:
    """Paired accuracy and macro-F1 differences of every arm to each compared arm, and to the better (by
    mean accuracy) of ``+stain`` and ``+Mixup/CutMix``; where every run of the arm and of real only logged per-class
    recall and AUROC (runs since session 53), their paired differences to real only (``paired_recall``, one per class,
    and ``paired_auroc``)."""
    arms = entry["arms"]
    standard = [a for a in STANDARD_ARMS if a in arms]
    best_standard = max(standard, key=lambda a: arms[a]["accuracy"]["mean"]) if standard else None
    entry["best_standard"] = best_standard
    for name, arm in arms.items():
        arm["paired"], arm["paired_f1"] = {}, {}
        for other in (*COMPARED_WITH, "best standard"):
            target = best_standard if other == "best standard" else other
            if target is None or target == name or target not in arms:
                continue
            for metric, key in (("accuracy", "paired"), ("f1_macro", "paired_f1")):
                arm[key][other] = paired_runs(arm["runs"], arms[target]["runs"], metric)
        for key in ("paired_recall", "paired_auroc"):  # recomputed, like the pairs above
            arm.pop(key, None)
        real = arms.get("real")
        if name != "real" and real and all("recall" in r and "auroc" in r for r in (*arm["runs"], *real["runs"])):
            classes = range(len(real["runs"][0]["recall"]))
            arm["paired_recall"] = [paired_runs(arm["runs"], real["runs"], "recall", k) for k in classes]
            arm["paired_auroc"] = paired_runs(arm["runs"], real["runs"], "auroc")


def sanity(res: dict) -> dict:
    """Do the standard regularisers hold their own at each N? (flips/rotations vs none; Mixup/CutMix and
    stain vs real only). One that loses beyond its interval means the budget is too short for regularised
    training at that N: the generated arms are not judged there. ``n`` names the largest N.

    An N where none of the standard arms ran (``real, no flips``, ``+stain``, ``+Mixup/CutMix``) is *unchecked*:
    ``converged_n`` is None there, and ``converged`` is None unless some checked N loses (then False)."""
    per_n = {key: _sanity_checks(entry["arms"]) for key, entry in res["curve"].items()}
    key = "all" if "all" in per_n else list(per_n)[-1]
    losing = {k: _losing(checks) for k, checks in per_n.items()}
    failed = {k: v for k, v in losing.items() if v}
    unchecked = [k for k, checks in per_n.items() if not checks]
    if failed:
        message = ("UNDER-TRAINED at " + "; ".join(f"N = {k} ({', '.join(v)} loses beyond its interval)" for k, v in failed.items())
                   + ": grow the budget there before judging ADD")
    elif len(unchecked) == len(per_n):
        message = ("NOT CHECKED: no standard arm (real, no flips; +stain; +Mixup/CutMix) in this run, so it does not show "
                   "that the budget suits regularised training; run one beside the generated arms before judging ADD")
    elif unchecked:
        message = (f"converged where checked; NOT CHECKED at N = {', '.join(unchecked)} (no standard arm there)")
    else:
        message = "converged: no standard regulariser loses beyond its interval at any N"
    converged_n = {k: None if k in unchecked else not v for k, v in losing.items()}
    return {"n": key, "checks": per_n[key], "per_n": per_n, "converged": False if failed else (None if unchecked else True),
            "converged_n": converged_n, "message": message}


def _losing(checks: dict) -> list[str]:
    """The sanity checks whose regulariser loses beyond its interval."""
    return [name for name, d in checks.items() if d["verdict"] == "worse"]


def _sanity_checks(arms: dict) -> dict:
    checks = {}
    if "real, no flips" in arms:
        checks["flips/rotations vs none"] = paired_runs(arms["real"]["runs"], arms["real, no flips"]["runs"], "accuracy")
    for name in ("+Mixup/CutMix", "+stain"):
        if name in arms:
            checks[f"{name} vs real"] = arms[name]["paired"]["real"]
    return checks
