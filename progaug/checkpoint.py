"""U-Net checkpoints: safetensors with the config as JSON in the metadata; strict, typed loading.

Weights are never unpickled. A file is written to a temporary name in the destination folder and
moved into place with ``os.replace``, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from progaug.config import UNetConfig
from progaug.fileio import atomic_write_bytes, read_format_json, safetensors_bytes, sha256_file
from progaug.nn.unet import UNet

__all__ = [
    "FORMAT", "MAX_PARAMETERS", "atomic_write_bytes", "check_finite", "read_format_json", "load_unet", "load_unet_weights",
    "read_unet_config", "save_unet", "sha256_file",
]

FORMAT = "progaug.unet/1"
MAX_PARAMETERS = 4_000_000_000
"""The largest U-Net a file may describe (the paper's has 552.8M parameters): a config claiming more is
refused before anything is built."""


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or infinite values in any floating tensor of ``tensors``.

    Raises:
        ValueError: ``<where>: tensor '<name>' holds NaN or infinite values``.
    """
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: tensor {name!r} holds NaN or infinite values")


def save_unet(
    model: UNet,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Save a U-Net's weights and config to a safetensors file, atomically.

    Args:
        model: The network.
        path: Destination ``.safetensors`` file.
        dtype: Store floating tensors in this dtype (e.g. ``torch.float16``); default as they are.
        metadata: Extra string metadata to store beside the config.

    Returns:
        The sha256 of the written file.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"`model` must be a progaug UNet, got {type(model).__name__}")
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[name] = value.contiguous()
    check_finite(tensors, f"{path} was not written" + (f" (as {dtype})" if dtype is not None else ""))
    meta = {"format": FORMAT, "config": model.config.to_json(), "attention": model.config.attention}
    meta.update(metadata or {})
    atomic_write_bytes(path, safetensors_bytes(tensors, meta))
    return sha256_file(path)


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a progaug U-Net checkpoint (metadata format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def read_unet_config(path: str | os.PathLike[str]) -> UNetConfig:
    """Read the :class:`UNetConfig` stored in a checkpoint without loading its weights."""
    path = Path(path)
    meta = _read_metadata(path)
    try:
        return UNetConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} holds an invalid U-Net config: {exc}") from exc


def load_unet_weights(model: UNet, path: str | os.PathLike[str]) -> UNet:
    """Load a checkpoint into an existing U-Net, strictly.

    Raises:
        ValueError: The checkpoint's attention priority or config differs from the model's, a tensor is
            missing, unexpected or of the wrong shape (checked in the file's header, before any tensor is
            read), or holds NaN or infinite values.
    """
    from safetensors.torch import load_file

    path = Path(path)
    stored = read_unet_config(path)
    if stored.attention != model.config.attention:
        raise ValueError(
            f"{path} holds a {stored.attention!r}-priority U-Net and cannot be loaded into a "
            f"{model.config.attention!r}-priority one: the attention priorities differ"
        )
    if stored != model.config:
        raise ValueError(f"{path} was saved with config {stored} but the model has {model.config}")
    _check_shapes(path, model)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise ValueError(f"{path} could not be read: {exc}") from exc
    check_finite(state, f"{path} is broken")
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match its config: {exc}") from exc
    return model


def load_unet(
    path: str | os.PathLike[str],
    *,
    attention: str | None = None,
    role: str | None = None,
    device: torch.device | str = "cpu",
) -> UNet:
    """Build a U-Net from a checkpoint's config and load its weights (float32, eval mode).

    Args:
        path: A file written by :func:`save_unet`.
        attention: The priority the caller expects (``"global"`` or ``"local"``); a checkpoint of the
            other priority is refused. None accepts either.
        role: The role the caller expects (``"source"`` or ``"target"``); a file that records another
            role in its metadata is refused (files without one are taken). None accepts either.
        device: Where to put the model.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not a progaug checkpoint, corrupt, of the other attention priority or role, larger
            than :data:`MAX_PARAMETERS`, with tensors that do not match its config, or non-finite weights.
    """
    path = Path(path)
    config = read_unet_config(path)
    stored_role = _read_metadata(path).get("role")
    if role is not None and stored_role is not None and stored_role != role:
        raise ValueError(f"{path} holds the {stored_role} model of its pair but is listed as the {role} model: "
                         f"the card's source and target entries are swapped")
    if attention is not None and attention != config.attention:
        raise ValueError(
            f"{path} holds a {config.attention!r}-priority U-Net but a {attention!r}-priority one was "
            f"requested: the attention priorities differ"
        )
    with torch.device("meta"):  # shapes only: nothing is allocated before the file is known to fit
        skeleton = UNet(config)
    size = sum(p.numel() for p in skeleton.state_dict().values())
    if size > MAX_PARAMETERS:
        raise ValueError(f"{path}: its config describes a U-Net of {size:,} values, more than the {MAX_PARAMETERS:,} "
                         f"progaug loads; the config is wrong or the file is not a progaug pair")
    _check_shapes(path, skeleton)
    model = load_unet_weights(UNet(config), path)
    return model.to(device).eval()


def _check_shapes(path: Path, model: UNet) -> None:
    """Compare the tensors listed in the file's header with ``model``'s, before any tensor is read.

    Raises:
        ValueError: Tensors missing, unexpected or of another shape; a few are named, not all.
    """
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    problems = []
    for what, names in (("missing", sorted(set(expected) - set(stored))), ("unexpected", sorted(set(stored) - set(expected)))):
        if names:
            problems.append(f"{len(names)} tensor(s) {what} (e.g. {', '.join(map(repr, names[:3]))})")
    wrong = [k for k in expected if k in stored and stored[k] != expected[k]]
    if wrong:
        problems.append(f"{len(wrong)} of another shape (e.g. {wrong[0]!r}: {stored[wrong[0]]} in the file, "
                        f"{expected[wrong[0]]} in its config)")
    if problems:
        raise ValueError(f"{path} does not match its config: " + "; ".join(problems))
