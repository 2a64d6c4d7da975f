"""Frozen configuration dataclasses with a JSON round trip.

Every default of the package lives here, once. Command-line flags are built from these fields
(:func:`progaug.cli`), and each saved model carries its config as JSON inside the safetensors file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal, TypeVar

from progaug.errors import check_int, check_number

__all__ = ["AttentionPriority", "DiffusionConfig", "JsonConfig", "UNetConfig", "config_from_dict", "config_to_dict", "config_to_dict_without_defaults", "describe_differences", "setting"]

AttentionPriority = Literal["global", "local"]
ATTENTION_PRIORITIES: tuple[str, ...] = ("global", "local")
PAIR_ATTENTION: dict[str, AttentionPriority] = {"source": "global", "target": "local"}
"""The attention priority of each model of an ADD pair (paper 2.2, hybrid attention strategy)."""

C = TypeVar("C")


def setting(default: Any, help: str) -> Any:
    """A config field with its default and its ``--help`` text (``metadata["help"]``).

    :func:`progaug.cli_args.add_config_arguments` turns each such field into a flag with this text.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config dataclass (tuples become lists)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_to_dict_without_defaults(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """:func:`config_to_dict` less each field of ``names`` that holds its default value.

    For fields added to a config after records keyed by its dict were written (the evaluation's run log): at
    their default the old records keep their keys, any other value makes a new key.

    Raises:
        ValueError: A name that is not a field of ``config``.
    """
    fields = config_to_dict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in names:
        if name not in defaults:
            raise ValueError(f"`names`: {name!r} is not a field of {type(config).__name__}")
        if getattr(config, name) == defaults[name]:
            del fields[name]
    return fields


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build ``cls`` from a dict, refusing unknown keys and restoring tuples.

    Raises:
        TypeError: ``data`` is not a dict.
        ValueError: ``data`` has keys that ``cls`` does not know, or a value ``cls`` refuses (of the
            wrong type too: the data was read from a file, so it is a bad value there).
    """
    if not isinstance(data, dict):
        raise TypeError(f"`data` must be a dict, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a value of the wrong type in stored data is a bad value of `data`
        raise ValueError(f"bad {cls.__name__} value: {exc}") from exc


def describe_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two JSON-like trees, one line each, by dotted key.

    >>> describe_differences({"train": {"lr": 1e-4, "seed": 0}}, {"train": {"lr": 2e-4, "seed": 0}})
    ['train.lr: stored 0.0001, now 0.0002']
    """
    if isinstance(stored, dict) and isinstance(current, dict):
        lines: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                lines.append(f"{name}: not stored, now {json.dumps(current[key])}")
            elif key not in current:
                lines.append(f"{name}: stored {json.dumps(stored[key])}, now not set")
            else:
                lines += describe_differences(stored[key], current[key], name)
        return lines
    if stored != current:
        return [f"{prefix or 'value'}: stored {json.dumps(stored)}, now {json.dumps(current)}"]
    return []


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class JsonConfig:
    """Base of the config dataclasses: a JSON round trip through :meth:`to_dict` / :meth:`from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        return config_to_dict(self)

    def to_json(self) -> str:
        """Return the config as a JSON string (sorted keys, stable across runs)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        """Build the config from :meth:`to_dict` output."""
        return config_from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str):  # noqa: ANN206
        """Build the config from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """Shape of an ADM-style epsilon-prediction U-Net (paper section 2.2).

    Attributes:
        image_size: Side of the square input in pixels, 32..256, divisible by
            ``2 ** (len(channel_mult) - 1)``.
        in_channels: Image channels; progaug works on RGB, so 3.
        model_channels: Width of the first level.
        channel_mult: Width multiplier per resolution level (one level per entry).
        num_res_blocks: Residual blocks per level on the way down (one more on the way up).
        attention_resolutions: Feature-map sides (pixels) that get an attention block.
        num_heads: Attention heads, used when ``head_channels`` is None.
        head_channels: Channels per head; overrides ``num_heads`` when set.
        attention: ``"global"`` (qkv over all channels, then split into heads: the source model)
            or ``"local"`` (split into heads first, then a per-head qkv: the target model).
        dropout: Dropout in the residual blocks.
        use_scale_shift_norm: Timestep embedding as a FiLM scale and shift (ADM) instead of a sum.
        norm_group_channels: Fewest channels per GroupNorm group (at most 32 groups, as in ADM; at
            width 128 and up this is ADM's rule). 1 makes a width-32 U-Net use instance norms, which
            hide a uniform colour shift of the input from the network. Files without this field load
            as 1.
        gaussian_skip: ``sigma`` of a built-in noise predictor for Gaussian data ``N(0, sigma^2)``,
            ``eps_g = sqrt(1 - a) x_t / (a sigma^2 + 1 - a)``, added to the network's output so the
            network learns only the correction (an EDM-style skip, Karras et al. 2022; the model stays
            an epsilon predictor). It passes the input's colour straight through at high noise, and an
            untrained network already predicts what a Gaussian fit of the data would. 0 turns it off
            (the plain ADM network); files written before this setting existed load as 0.
    """

    image_size: int = setting(64, "Side of the square input in pixels, 32..256, divisible by 2 ** (len(channel_mult) - 1)")
    in_channels: int = setting(3, "Image channels; progaug works on RGB, so 3")
    model_channels: int = setting(32, "Width of the first level")
    channel_mult: tuple[int, ...] = setting((1, 2, 2, 2), "Width multiplier per resolution level (one level per entry)")
    num_res_blocks: int = setting(2, "Residual blocks per level on the way down (one more on the way up)")
    attention_resolutions: tuple[int, ...] = setting(
        (16, 8),
        "Feature-map sides (pixels) that get an attention block (progaug train without this flag: 16 and 8 where "
        "the U-Net has those sides, else its two coarsest)",
    )
    num_heads: int = setting(4, "Attention heads, used when head_channels is None")
    head_channels: int | None = setting(None, "Channels per head; overrides num_heads when set (default: None, num_heads heads)")
    attention: AttentionPriority = setting(
        "global",
        "global (qkv over all channels, then split into heads: the source model) or local (split into heads "
        "first, then a per-head qkv: the target model)",
    )
    dropout: float = setting(0.0, "Dropout in the residual blocks")
    use_scale_shift_norm: bool = setting(True, "Timestep embedding as a FiLM scale and shift (ADM) instead of a sum")
    norm_group_channels: int = setting(
        4, "Fewest channels per GroupNorm group (at most 32 groups, as in ADM; at width 128 and up this is ADM's rule)"
    )
    gaussian_skip: float = setting(
        0.5,
        "sigma of a built-in noise predictor for Gaussian data N(0, sigma^2), added to the network's output so "
        "that the network learns only the correction; 0 turns it off",
    )

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, low=32, high=256)
        if not 0 <= check_number("gaussian_skip", self.gaussian_skip) <= 10:
            raise ValueError(f"`gaussian_skip` must be in [0, 10] (0: off), got {self.gaussian_skip!r}")
        check_int("norm_group_channels", self.norm_group_channels, low=1, high=4096)
        if self.in_channels != 3:
            raise ValueError(f"`in_channels` must be 3 (RGB), got {self.in_channels!r}")
        check_int("model_channels", self.model_channels, low=1, high=4096)
        check_int("num_res_blocks", self.num_res_blocks, low=1, high=16)
        check_int("num_heads", self.num_heads, low=1, high=256)
        if self.head_channels is not None:
            check_int("head_channels", self.head_channels, low=1, high=4096)
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult:
            raise TypeError(f"`channel_mult` must be a non-empty tuple of ints, got {self.channel_mult!r}")
        for m in self.channel_mult:
            check_int("channel_mult", m, low=1, high=64)
        if self.attention not in ATTENTION_PRIORITIES:
            raise ValueError(f"`attention` must be one of {ATTENTION_PRIORITIES}, got {self.attention!r}")
        if not 0.0 <= check_number("dropout", self.dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}")
        factor = self.downsample_factor
        if self.image_size % factor:
            raise ValueError(
                f"`image_size` {self.image_size} is not divisible by {factor} "
                f"(2 ** (len(channel_mult) - 1) with channel_mult={self.channel_mult})"
            )
        sides = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        for r in self.attention_resolutions:
            if r not in sides:
                raise ValueError(
                    f"`attention_resolutions` entry {r!r} is not a feature-map side of this U-Net; "
                    f"the sides are {sorted(sides, reverse=True)}"
                )
        last = len(self.channel_mult) - 1
        for i, ch in enumerate(self.level_channels):
            if self.image_size // 2**i in self.attention_resolutions or i == last:
                heads = self.heads_for(ch)
                if ch % heads:
                    raise ValueError(
                        f"attention width {ch} is not divisible into {heads} heads "
                        f"(num_heads={self.num_heads}, head_channels={self.head_channels})"
                    )

    @classmethod
    def attention_sides_for(cls, image_size: int, channel_mult: tuple[int, ...]) -> tuple[int, ...]:
        """Where ``progaug train`` puts attention when ``--attention-resolutions`` is not given: the default
        sides (16, 8) where the U-Net has them (every earlier pair, and 32 or 64 px with the default
        ``channel_mult``), else its two coarsest feature-map sides, largest first.

        At ``--tile-size 256`` with the default multipliers (sides 256, 128, 64, 32) this gives (64, 32), where
        (16, 8) would name sides the network does not have.
        """
        sides = [image_size // 2**i for i in range(len(channel_mult))]
        return cls.attention_resolutions if set(cls.attention_resolutions) <= set(sides) else tuple(sides[-2:])

    @property
    def downsample_factor(self) -> int:
        """Ratio between the input side and the smallest feature-map side."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Width of each resolution level."""
        return tuple(self.model_channels * m for m in self.channel_mult)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build the config from :meth:`to_dict` output; a dict written before ``norm_group_channels`` or
        ``gaussian_skip`` existed gets 1 and 0, what those weights were trained with."""
        data = {"norm_group_channels": 1, "gaussian_skip": 0.0, **data}
        if data["gaussian_skip"] is None:
            data["gaussian_skip"] = 0.0
        return config_from_dict(cls, data)

    def heads_for(self, channels: int) -> int:
        """Number of attention heads for a block of ``channels`` channels."""
        if self.head_channels is not None:
            return max(1, channels // self.head_channels)
        return self.num_heads


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(JsonConfig):
    """The training noise schedule (paper eq. 1) and the default sampling respacing.

    The reference code uses guided-diffusion's linear schedule: betas evenly spaced from
    ``beta_start * 1000 / T`` to ``beta_end * 1000 / T`` over ``T`` steps.

    Attributes:
        num_train_steps: ``T``, the number of training timesteps.
        beta_start: First beta, for ``T = 1000``.
        beta_end: Last beta, for ``T = 1000``.
        sampling_steps: Default number of DDIM steps ``S`` for inversion and sampling.
        clip_denoised: Clip the predicted x0 to [-1, 1] in every DDIM step (both directions).
    """

    num_train_steps: int = setting(1000, "T, the number of training timesteps")
    beta_start: float = setting(1e-4, "First beta, for T = 1000")
    beta_end: float = setting(0.02, "Last beta, for T = 1000")
    sampling_steps: int = setting(50, "Default number of DDIM steps S for inversion and sampling")
    clip_denoised: bool = setting(True, "Clip the predicted x0 to [-1, 1] in every DDIM step (both directions)")

    def __post_init__(self) -> None:
        check_int("num_train_steps", self.num_train_steps, low=2, high=100_000)
        check_int("sampling_steps", self.sampling_steps, low=1, high=self.num_train_steps)
        for name in ("beta_start", "beta_end"):
            value = check_number(name, getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
        if not self.beta_start < self.beta_end or self.beta_end * 1000 / self.num_train_steps >= 1:
            raise ValueError(
                f"need 0 < `beta_start` < `beta_end` and scaled `beta_end` < 1, "
                f"got beta_start={self.beta_start!r}, beta_end={self.beta_end!r}"
            )
