"""U-Net checkpoints: safetensors with the config as JSON in the metadata; strict, typed loading.

Weights are never unpickled. A file is written to a temporary name in the destination folder and
moved into place with ``os.replace``, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from progaug.config import UNetConfig
from progaug.nn.unet import UNet

__all__ = ["FORMAT", "atomic_write_bytes", "read_format_json", "load_unet", "load_unet_weights", "read_unet_config", "save_unet", "sha256_file"]

FORMAT = "progaug.unet/1"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_format_json(path: Path, expected_format: str, what: str) -> dict:
    """Parse a JSON file that must carry ``"format": expected_format``.

    Raises:
        ValueError: Not valid JSON, or another format; the message names the file and ``what``.
    """
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        got = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path} is not a progaug {what} (format {got!r}, expected {expected_format!r})")
    return data


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
    from safetensors.torch import save

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
    atomic_write_bytes(path, save(tensors, metadata=meta))
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
