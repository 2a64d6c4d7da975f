"""The arms of the downstream protocol: each one way of training the classifier (real tiles only, a standard
augmentation, or a way of adding a pair's generated images), and the names users and reports call them by.

:func:`all_arms` lists them in report order; :func:`arm_named` also parses the ``+ADD-Pro[...]`` forms (decode
stride, fine states, ``+stain`` / ``+Mixup/CutMix`` on top, ``margin labels``). The protocol that trains them is
:mod:`progaug.evaluation.protocol`.
"""

from __future__ import annotations

import dataclasses

from progaug.config import config_to_dict_without_defaults
from progaug.generator import parse_variant
from progaug.labels import DEFAULT_MEASURE, MEASURES

__all__ = ["ARM_LABEL_SOURCES", "MARGIN_SUFFIX", "MIXUP_SUFFIX", "STAIN_SUFFIX", "Arm", "all_arms", "arm_named"]


ARM_LABEL_SOURCES = ("measure", "margin")
"""Values of :attr:`Arm.labels` (an arm names its labels: no ``"auto"``)."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of training the classifier.

    Attributes:
        name: Name in the reports.
        generated: ``None``, ``"final"`` (full-depth ADD translations, hard target labels), ``"pro"`` (ADD
            progressive images, soft labels) or ``"iddpm"`` (unconditional target-model samples).
        measure: Label measure of a ``"pro"`` arm, or ``MEASURE/S`` for its images decoded at stride ``S``, or
            ``MEASURE/S:F`` with the last ``F`` states one per move (:func:`progaug.generator.parse_variant`).
        flips: Random flips / quarter turns.
        stain: HED stain jitter (sigma tuned; with generated images: the ``+stain`` arm's sigma).
        mixup: Mixup / CutMix (alpha tuned).
        uniform: Batches drawn uniformly from real + generated (the old protocol; not tuned).
        filtered: Drop generated images the teacher contradicts (:mod:`progaug.selection`).
        labels: Where a ``"pro"`` arm's soft labels come from: ``"measure"`` (the label measure's) or
            ``"margin"`` (each image's calibrated denoising margin, :func:`progaug.margin.margin_labels`;
            the same images as the measure's).
    """

    name: str
    generated: str | None = None
    measure: str | None = None
    flips: bool = True
    stain: bool = False
    mixup: bool = False
    uniform: bool = False
    filtered: bool = False
    labels: str = "measure"

    def __post_init__(self) -> None:
        if self.labels not in ARM_LABEL_SOURCES:
            raise ValueError(f"`labels` must be one of {ARM_LABEL_SOURCES}, got {self.labels!r}")
        if self.labels != "measure" and self.generated != "pro":
            raise ValueError(f"`labels={self.labels!r}` needs progressive images (generated='pro'), got generated={self.generated!r}")

    def run_fields(self) -> dict:
        """The arm's fields as a run's key records them (``labels`` only where not ``"measure"``: runs logged before
        the field existed keep their keys)."""
        return config_to_dict_without_defaults(self, ("labels",))

    @property
    def set_key(self) -> str | None:
        """Key of the arm's progressive set in :attr:`progaug.evaluation.protocol.GeneratedSets.pro`: the measure,
        ``MEASURE+margin`` for margin labels (None for other arms)."""
        if self.generated != "pro":
            return None
        return self.measure if self.labels == "measure" else f"{self.measure}+{self.labels}"

    @property
    def knob(self) -> str | None:
        """The tuned setting: ``"replace_prob"``, ``"mixup_alpha"``, ``"stain_sigma"`` or None."""
        if self.generated is not None:
            return None if self.uniform else "replace_prob"
        if self.mixup:
            return "mixup_alpha"
        return "stain_sigma" if self.stain else None


def all_arms(default: str = DEFAULT_MEASURE) -> dict[str, Arm]:
    """Every arm, in report order."""
    arms = [Arm("real"), Arm("real, no flips", flips=False), Arm("+stain", stain=True), Arm("+Mixup/CutMix", mixup=True),
            Arm("+ADD-final", "final")]
    arms += [Arm(f"+ADD-Pro[{m}]", "pro", m) for m in ("paper", default) if m in MEASURES]
    arms += [Arm(f"+ADD-Pro[{default}] filtered", "pro", default, filtered=True),
             Arm(f"+ADD-Pro[{default}] uniform", "pro", default, uniform=True),
             Arm("+IDDPM-style", "iddpm"), Arm(f"+ADD-Pro[{default}]+stain", "pro", default, stain=True)]
    return {a.name: a for a in arms}


MARGIN_SUFFIX = " margin labels"
"""Suffix of an arm name whose progressive images take calibrated margin labels (``labels="margin"``)."""
MIXUP_SUFFIX = "+Mixup/CutMix"
"""Suffix of a ``+ADD-Pro[...]`` arm name (before any margin suffix) whose batches also take Mixup/CutMix."""
STAIN_SUFFIX = "+stain"
"""Suffix of a ``+ADD-Pro[...]`` arm name (before any margin suffix) whose batches also take stain jitter."""


def arm_named(name: str) -> Arm:
    """The arm called ``name``: one of :func:`all_arms`, or ``+ADD-Pro[MEASURE/S]``, progressive images of a
    label measure decoded at stride ``S`` (:attr:`progaug.generator.GenerationConfig.decode_stride`), or
    ``+ADD-Pro[MEASURE/S:F]``, the last ``F`` states decoded one per move (``decode_fine``), or any
    ``+ADD-Pro[...]`` form followed by ``"+stain"`` (stain jitter on every batch, at the ``+stain`` arm's sigma)
    or ``"+Mixup/CutMix"`` (Mixup/CutMix on every batch, at the ``+Mixup/CutMix`` arm's alpha), and/or
    ``" margin labels"``: the same images labelled by the pair's calibrated denoising margin (the pair needs a
    ``margin_calibration.json``, from ``progaug calibrate``), e.g. ``+ADD-Pro[preview]+stain margin labels``.

    Raises:
        ValueError: None of these (the message lists the arms).
    """
    known = all_arms()
    if name in known:
        return known[name]
    base = name.removesuffix(MARGIN_SUFFIX)
    on_top = next((suffix for suffix in (STAIN_SUFFIX, MIXUP_SUFFIX) if base.endswith(suffix)), "")
    images = base.removesuffix(on_top)
    variant = images[len("+ADD-Pro[") : -1] if images.startswith("+ADD-Pro[") and images.endswith("]") else ""
    try:
        parse_variant(variant)
    except ValueError:
        raise ValueError(f"arm {name!r} unknown; the arms are {list(known)}, or '+ADD-Pro[MEASURE/S]' (decode stride S) or "
                         f"'+ADD-Pro[MEASURE/S:F]' (the last F states one per move), "
                         f"any +ADD-Pro form optionally followed by '{STAIN_SUFFIX}' or '{MIXUP_SUFFIX}' and/or "
                         f"'{MARGIN_SUFFIX}'") from None
    return Arm(name, "pro", variant, stain=on_top == STAIN_SUFFIX, mixup=on_top == MIXUP_SUFFIX, labels="margin" if base != name else "measure")
