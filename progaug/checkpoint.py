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

__all__ = ["FORMAT", "atomic_write_bytes", "read_format_json", "load_unet", "load_unet_weights", "read_unet_config", "save_unet", "sha256_file"]

FORMAT = "progaug.unet/1"


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
        ValueError: The checkpoint's attention priority or config differs from the model's, or a
            tensor is missing, unexpected or of the wrong shape.
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
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise ValueError(f"{path} could not be read: {exc}") from exc
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
    device: torch.device | str = "cpu",
) -> UNet:
    """Build a U-Net from a checkpoint's config and load its weights (float32, eval mode).

    Args:
        path: A file written by :func:`save_unet`.
        attention: The priority the caller expects (``"global"`` or ``"local"``); a checkpoint of the
            other priority is refused. None accepts either.
        device: Where to put the model.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not a progaug checkpoint, corrupt, or of the other attention priority.
    """
    path = Path(path)
    config = read_unet_config(path)
    if attention is not None and attention != config.attention:
        raise ValueError(
            f"{path} holds a {config.attention!r}-priority U-Net but a {attention!r}-priority one was "
            f"requested: the attention priorities differ"
        )
    model = load_unet_weights(UNet(config), path)
    return model.to(device).eval()
