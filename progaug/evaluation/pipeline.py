"""From a pair and a user's split folders to the protocol's result: make (or reuse) the generated sets for
the class-A training tiles the run's subsets use, run :func:`progaug.evaluation.protocol.run_protocol`, and describe the run.

Used by ``progaug evaluate`` and ``benchmarks/downstream.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from progaug.config import JsonConfig, setting
from progaug.data.orientation import orientation_summary
from progaug.data.tiles import TileSet
from progaug.errors import check_int
from progaug.evaluation import generated
from progaug.generator import GenerationConfig, parse_variant
from progaug.evaluation.arms import Arm
from progaug.evaluation.protocol import GeneratedSets, ProtocolConfig, needed_positions, parse_n, run_protocol
from progaug.labels import DEFAULT_MEASURE
from progaug.runtime import CPU_MAX_BATCH, check_bf16, machine_description, resolve_bf16

CHUNK = 32
"""Needed source tiles per generated chunk (the unit kept on disk)."""

__all__ = ["CHUNK", "EvaluationData", "GenerationSettings", "RunLog", "evaluate_pair", "leak", "make_sets", "pair_sha256", "pair_training", "scope_of"]


@dataclasses.dataclass(frozen=True)
class GenerationSettings(JsonConfig):
    """How the generated sets are made (the pair's images for every class-A training tile).

    Attributes: see each field's help text.
    """

    steps: int = setting(50, "DDIM steps of the generated sets")
    num_levels: int = setting(10, "progressive images per class-A tile")
    bf16: bool | None = setting(None, "decode under bf16 autocast (default: where the device computes bf16 natively, "
                                      "1.6-2x faster there; emulated bf16 on other CPUs is several times slower)")
    max_batch: int = setting(CPU_MAX_BATCH, "rows per U-Net call when generating")
    cache_dir: str | None = setting(None, "folder where the generated sets are kept and reused (default: none kept)")

    def __post_init__(self) -> None:
        for name in ("steps", "num_levels", "max_batch"):
            check_int(name, getattr(self, name), low=1)
        check_bf16(self.bf16)

    def resolved(self, device: str) -> GenerationSettings:
        """These settings with ``bf16`` made concrete for ``device`` (what a run records)."""
        return dataclasses.replace(self, bf16=resolve_bf16(self.bf16, device))

    def generation(self, variant: str, device: str) -> GenerationConfig:
        """The :class:`progaug.generator.GenerationConfig` of the sets of ``variant`` on ``device``: a label
        measure, or ``MEASURE/S`` / ``MEASURE/S:F`` for decodes at stride ``S`` with the last ``F`` states one per
        move (:func:`progaug.generator.parse_variant`)."""
        measure, stride, fine = parse_variant(variant)
        return GenerationConfig(steps=self.steps, measure=measure, max_batch=self.max_batch, bf16=self.bf16, device=device,
                                decode_stride=stride, decode_fine=fine, labels="measure")


def _scatter(values: torch.Tensor, needed: torch.Tensor, total: int) -> torch.Tensor:
    """``values`` for the positions ``needed`` placed in a zero tensor of ``total`` rows."""
    out = torch.zeros((total, *values.shape[1:]), dtype=values.dtype)
    out[needed] = values
    return out


def make_sets(pair, sources: torch.Tensor, arms: Sequence[Arm], settings: GenerationSettings, *, needed: torch.Tensor | None = None,
              device: str = "cpu", progress: Callable[[int], None] | None = None) -> tuple[GeneratedSets, dict]:
    """The generated images the ``arms`` need for the uint8 class-A training tiles ``sources``.

    Only the ``needed`` tiles are generated (at N = 25 with 7 seeds, 142 of the demo's 288), in chunks of
    :data:`CHUNK` of them (the unit kept in ``settings.cache_dir``, named by its tiles' content: a rerun with the same
    N and seeds reuses every chunk; the full grid needs every tile). Where the cache already holds every set for
    *all* tiles (a run at N = all came first), those are read instead of making chunks of the needed ones.

    Args:
        needed: Positions in ``sources`` that some subset uses (default: all); the sets still have one row per
            source tile, zero where nothing was made.

    Returns:
        ``(sets, cost)``; ``cost`` per set: seconds, U-Net evaluations per image and mean depth.
    """
    total = len(sources)
    kinds = {a.generated for a in arms} - {None}
    measures = sorted({a.measure for a in arms if a.generated == "pro"})
    margin = {a.measure: a.set_key for a in arms if a.generated == "pro" and a.labels == "margin"}
    if "final" in kinds and not measures:
        measures = [DEFAULT_MEASURE]  # level 1.0 of any measure's set is the full eq. 4 translation
    requested = needed
    widened = needed is not None and _kept_for_every_tile(pair, sources, kinds, measures, settings, device)
    if needed is None or widened:
        needed = torch.arange(total)  # a run at small N after one with every tile reads the whole set, not new chunks
    pro, cost = {}, {}
    for m in measures:
        t0 = time.time()
        bank = generated.progressive_bank(pair, sources[needed], settings.generation(m, device), settings.num_levels,
                                          chunk=CHUNK, cache_dir=settings.cache_dir, progress=None if widened else progress)
        if widened and progress is not None:
            progress(len(requested))  # the caller's bar counts the needed tiles, not the whole set read
        pro[m] = tuple(_scatter(bank[k], needed, total) for k in ("images", "labels"))
        cost[f"pro:{m}"] = {"seconds": round(time.time() - t0, 1), "unet_evals_per_image": bank["evals_per_image"],
                            "depth_mean": float(bank["depths"].double().mean())}
        if m in margin:  # the same images, each labelled by its calibrated denoising margin
            t0 = time.time()
            labels = generated.margin_relabelled(pair, bank["images"], device=device, max_batch=settings.max_batch,
                                                 cache_dir=settings.cache_dir)
            pro[margin[m]] = (pro[m][0], _scatter(labels, needed, total))
            cost[f"pro:{margin[m]}"] = {"seconds": round(time.time() - t0, 1),
                                       "unet_evals_per_image": bank["evals_per_image"] + pair.margin_calibration.evaluations_per_image,
                                       "depth_mean": cost[f"pro:{m}"]["depth_mean"]}
    final = pro[DEFAULT_MEASURE if DEFAULT_MEASURE in pro else measures[0]][0][:, -1] if "final" in kinds else None
    iddpm = None
    if "iddpm" in kinds:
        t0 = time.time()
        samples = generated.unconditional(pair, len(needed), steps=settings.steps, device=device, bf16=settings.bf16,
                                          batch_size=settings.max_batch, cache_dir=settings.cache_dir)
        iddpm = _scatter(samples, needed, total)
        cost["iddpm"] = {"seconds": round(time.time() - t0, 1), "unet_evals_per_image": settings.steps}
    return GeneratedSets(pro=pro, final=final, iddpm=iddpm), cost


def _kept_for_every_tile(pair, sources: torch.Tensor, kinds: set, measures: list[str], settings: GenerationSettings,
                         device: str) -> bool:
    """Whether ``settings.cache_dir`` already holds every set ``make_sets`` needs for *all* ``sources``."""
    if settings.cache_dir is None or not kinds:
        return False
    kept = all(generated.progressive_cached(pair, sources, settings.generation(m, device), settings.num_levels, chunk=CHUNK,
                                            cache_dir=settings.cache_dir) for m in measures)
    if "iddpm" in kinds:
        kept = kept and generated.unconditional_cached(pair, len(sources), steps=settings.steps, bf16=settings.bf16,
                                                       cache_dir=settings.cache_dir)
    return kept


def pair_sha256(pair) -> dict:
    """``{"source": ..., "target": ...}``: the sha256 of the pair's weight files as its card records them, the
    key every result JSON carries so that a figure of an older pair can be found by a script."""
    return {role: pair.card[role].get("sha256") for role in ("source", "target")}


def pair_training(pair) -> dict:
    """The pair card's training budget (steps, wall time, device), so figures name the weights they used."""
    training = pair.card.get("training", {})
    return {k: training.get(k) for k in ("steps_done", "wall_time_s", "device")}


def leak(pair, data: str, n: int | None, splits: dict[str, TileSet], subset_seed: int | None = None) -> str:
    """How the pair's training tiles relate to the classifier's N tiles per class and to the held-out splits (a sentence).

    A card that records its tiles' content digests (``data.digests``, written by ``progaug train``) is compared by
    pixel content (:func:`progaug.data.tiles.tile_digest`), whatever the folders are called: a pair that saw any
    validation or test tile is reported as contaminating the run. Older cards are compared by the data's name.

    Args:
        pair: The loaded pair (its ``card["data"]``).
        data: The run's data name (``hgsc`` or a folder).
        n: Tiles per class the classifier sees (None: all).
        splits: The run's ``train``, ``val`` and ``test`` tiles.
        subset_seed: The one subset every run trains on, where fixed (then its tiles are compared exactly).
    """
    card = pair.card.get("data", {})
    if isinstance(card.get("digests"), dict) and card["digests"]:
        return _leak_by_content({d for ds in card["digests"].values() for d in ds}, n, splits, subset_seed)
    seen, counts = card.get("counts"), splits["train"].counts()
    if card.get("name") != data or card.get("split") != "train" or not seen:
        return f"unknown: the pair card names its data as {card.get('name')!r}, this run uses {data!r}"
    if n is None or all(n >= counts.get(c, 0) for c in seen):
        return "none: the pair saw exactly the classifier's training tiles"
    return (f"the pair was trained on {seen} training tiles, the classifier sees {min(n, min(counts.values()))} per class: "
            f"the generated arms hold information from tiles the real arms never see; compare them with each other")


def _leak_by_content(seen: set[str], n: int | None, splits: dict[str, TileSet], subset_seed: int | None) -> str:
    """:func:`leak` for a card with tile digests: ``seen`` against the digests of the run's splits."""
    from progaug.evaluation.protocol import real_subset

    held = {s: len(seen.intersection(splits[s].digests())) for s in ("val", "test") if s in splits}
    if any(held.values()):
        return (f"CONTAMINATED: the pair was trained on {held.get('val', 0)} validation and {held.get('test', 0)} test tiles "
                f"(same pixels); the generated arms carry them into training, so their held-out scores cannot be trusted: "
                f"train the pair on the training split only")
    train = splits["train"]
    digests = train.digests()
    in_train = seen.intersection(digests)
    elsewhere = len(seen) - len(in_train)
    counts = train.counts()
    if n is not None and any(n < k for k in counts.values()) and subset_seed is None:
        return (f"the pair saw {len(in_train)} of the training split's {len(train)} tiles and {elsewhere} tiles from outside "
                f"this data; each seed's classifier sees {min(n, min(counts.values()))} per class: the generated arms hold "
                f"information from tiles the real arms never see; compare them with each other")
    chosen = real_subset(train, subset_seed or 0, n)[1]
    classifier = {digests[int(i)] for index in chosen.values() for i in index}
    beyond = len(in_train - classifier)
    if beyond == 0 and elsewhere == 0:
        return (f"none: every tile the pair saw ({len(seen)}) is one the classifier trains on (compared by pixel content)")
    return (f"the pair saw {beyond + elsewhere} tiles the classifier never sees ({beyond} of the training split, {elsewhere} "
            f"from outside this data; compared by pixel content): the generated arms hold information from tiles the "
            f"real arms never see; compare them with each other")


class RunLog(dict):
    """Finished trainings of a protocol run, kept as JSON lines in ``path`` so that a stopped run resumes
    where it stopped (the memo of :func:`progaug.evaluation.protocol.run_protocol`).

    Every line holds ``{"scope", "key", "result"}``; lines of another scope (other data, pair or generation
    settings) are ignored, and a torn last line (a killed run) is skipped. A key not found is looked up again in
    the lines appended since the last read, so processes that share a log (split by seeds) reuse each other's
    trainings, such as the tuning runs, instead of repeating them.
    """

    def __init__(self, path: Path, scope: str) -> None:
        super().__init__()
        self.path, self.scope, self._read = Path(path), scope, 0
        self._refresh()

    def _refresh(self) -> None:
        """Take in the complete lines appended to the file since the last read (a line still being written waits)."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self._read)
            new = f.read()
        complete = new[: new.rfind(b"\n") + 1]
        self._read += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("scope") == self.scope and "key" in entry:
                super().__setitem__(entry["key"], entry["result"])

    def __contains__(self, key: object) -> bool:
        if super().__contains__(key):
            return True
        self._refresh()
        return super().__contains__(key)

    def __setitem__(self, key: str, value: dict) -> None:
        super().__setitem__(key, value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"scope": self.scope, "key": key, "result": value}) + "\n"
        with self.path.open("ab") as f:
            if f.tell() and _last_byte(self.path) != b"\n":
                line = "\n" + line  # after a torn line of a killed run: this one stays whole
            f.write(line.encode())


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def scope_of(pair, data: str, splits: dict[str, TileSet]) -> str:
    """A digest of what every training of a run depends on besides its own settings: the pair's classes and
    the data's tiles (each training's key adds a digest of the generated images it uses)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(pair.classes), data]).encode())
    for split in ("train", "val", "test"):
        if split in splits:
            h.update(splits[split].images.contiguous().numpy().tobytes())
            h.update(splits[split].labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class EvaluationData:
    """A user's labelled tiles for the protocol.

    Attributes:
        name: ``'hgsc'`` or the root folder, as given (reports, the pair-leak line, error messages).
        splits: ``train``, ``val`` and ``test`` tiles at the pair's image size.
    """

    name: str
    splits: dict[str, TileSet]

    @classmethod
    def load(cls, data: str, size: int) -> EvaluationData:
        """The splits of ``data`` (:func:`progaug.data.splits.load_splits`) at ``size`` pixels."""
        from progaug.data.splits import load_splits

        return cls(str(data), load_splits(str(data), size))


def evaluate_pair(pair, data: EvaluationData, arms: Sequence[Arm], config: ProtocolConfig, settings: GenerationSettings, *,
                  progress: Callable[[str, int, str], None] | None = None, log: Path | None = None,
                  on_partial: Callable[[dict], None] | None = None) -> dict:
    """Generated sets, then the protocol, with what a report needs to name the run.

    Args:
        pair: A loaded :class:`progaug.pair.Pair` (source class A, target class B).
        data: The user's tiles and their name.
        arms: Arms to run.
        config: Protocol settings (``config.device``: where to generate and train).
        settings: How the generated sets are made and where they are kept.
        progress: Called as ``progress("generate", k, text)`` for k more source tiles done and
            ``progress("train", 1, text)`` after each classifier training (``text`` says which), and
            ``progress("plan", k, text)`` when a budget doubling adds ``k`` trainings to the planned count.
        log: JSON-lines file of finished trainings (:class:`RunLog`): a rerun with the same settings skips them.
        on_partial: Called with the described result after each N (for partial reports).

    Raises:
        ValueError: Missing splits, or the pair's classes are not among the split's classes.
    """
    began = time.time()
    device, splits = config.device, data.splits
    settings = settings.resolved(device)
    for split in ("train", "val", "test"):
        if split not in splits:
            raise ValueError(f"--data {data.name}: needs train/, val/ and test/ class folders (model selection and a held-out test); no {split}/")
    train = splits["train"]
    missing = [c for c in pair.classes if c not in train.classes]
    if missing:
        raise ValueError(f"--data {data.name}: no class folder {missing} of the pair's classes {list(pair.classes)}")
    needed = needed_positions(train, pair.classes[0], config)
    report = (lambda k: progress("generate", k, f"{k} of {len(needed)} source tiles")) if progress else None
    sets, cost = make_sets(pair, train.of_class(pair.classes[0]).images, arms, settings, needed=needed, device=device, progress=report)
    seconds_generation = round(time.time() - began, 1)
    memo = RunLog(log, scope_of(pair, data.name, splits)) if log is not None else None
    orientation = {c: orientation_summary(train.of_class(c).images) for c in train.classes}

    def describe(res: dict) -> dict:
        for key, entry in res["curve"].items():
            entry["leak"] = leak(pair, data.name, parse_n(key), splits, config.subset_seed)
        res.update(counts={s: splits[s].counts() for s in splits}, generation=cost,
                   generation_settings={k: v for k, v in settings.to_dict().items() if k != "cache_dir"},
                   seconds_generation=seconds_generation, seconds=round(time.time() - began, 1), machine=machine_description(device),
                   pair_sha256=pair_sha256(pair), pair_training=pair_training(pair),
                   pair_data=pair.card.get("data"), threads=torch.get_num_threads(), complete=len(res["curve"]) == len(config.n),
                   orientation=orientation)
        return res

    res = run_protocol(splits, pair.classes, sets, arms, config, memo=memo,
                       on_run=(lambda text: progress("train", 1, text)) if progress else None,
                       on_plan=(lambda k: progress("plan", k, f"budget doubled: {k} more trainings")) if progress else None,
                       on_n=(lambda partial: on_partial(describe(partial))) if on_partial else None)
    return describe(res)
