"""Image-quality metrics for the benchmarks: FID, sFID (Inception) and LPIPS (AlexNet).

All networks load sha256-pinned safetensors weights from a local folder
(:func:`progaug.metrics.weights.metric_weights_dir`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from progaug.metrics.weights import load_metric_weights

__all__ = ["frechet_distance", "inception_features", "load_inception", "load_lpips", "lpips_diversity", "psnr"]


def load_inception(folder: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu"):
    """The FID Inception network (:class:`progaug.metrics.inception.FIDInception`)."""
    from progaug.metrics.inception import FIDInception

    return FIDInception(load_metric_weights("inception", folder)).to(device)


def load_lpips(folder: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu"):
    """LPIPS v0.1 AlexNet (:class:`progaug.metrics.lpips.LPIPS`)."""
    from progaug.metrics.lpips import LPIPS

    return LPIPS(load_metric_weights("alexnet", folder), load_metric_weights("lpips_alex", folder)).to(device)


@torch.no_grad()
def inception_features(net, images: torch.Tensor, *, batch_size: int = 50) -> dict[str, np.ndarray]:
    """``pool`` (N, 2048) and ``spatial`` (N, 2023) float64 features of ``(N, 3, H, W)`` images in [-1, 1]."""
    device = next(net.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"pool": [], "spatial": []}
    for chunk in images.split(batch_size):
        feats = net((chunk.to(device).float() + 1) / 2)
        for k in parts:
            parts[k].append(feats[k].cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``.

    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a^1/2 C_b C_a^1/2)^1/2)``, in float64. With the
    centred features scaled as ``A = (a - mu_a) / sqrt(N - 1)`` (so ``C_a = A^T A``) and ``B`` alike, the
    last trace is the sum of the singular values of ``B A^T`` (``M x N``): the nonzero eigenvalues of
    ``C_a^1/2 C_b C_a^1/2`` are those of ``(B A^T)^T (B A^T)``. That route is used when ``N M <= D^2``
    (few images, wide features: the usual case here, much faster than ``D x D`` decompositions); otherwise
    the matrix square root comes from symmetric eigen-decompositions of the covariances. Both are exact
    for the sample covariances; they agree within 1e-7 relative (the covariance route takes square roots
    of rounding-level eigenvalues of the rank-deficient covariances).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"feature sets must be (N, D) and (M, D) with N, M >= 2, got {a.shape} and {b.shape}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    fa, fb = (a - mu_a) / np.sqrt(len(a) - 1), (b - mu_b) / np.sqrt(len(b) - 1)
    if len(a) * len(b) <= a.shape[1] ** 2:
        trace_root = np.linalg.svd(fb @ fa.T, compute_uv=False).sum()
    else:
        trace_root = _trace_root_by_covariances(fa.T @ fa, fb.T @ fb)
    return float(((mu_a - mu_b) ** 2).sum() + (fa**2).sum() + (fb**2).sum() - 2 * trace_root)


def _trace_root_by_covariances(c_a: np.ndarray, c_b: np.ndarray) -> float:
    """``tr((C_a^1/2 C_b C_a^1/2)^1/2)`` of two ``(D, D)`` covariances by symmetric eigen-decompositions."""
    w, v = np.linalg.eigh(c_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ c_b @ root_a)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


@torch.no_grad()
def lpips_diversity(lpips, images: torch.Tensor, *, pairs: int = 1000, seed: int = 0, batch_size: int = 100) -> float:
    """Mean LPIPS over ``pairs`` random pairs of distinct images (higher = more diverse)."""
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images for LPIPS diversity, got {n}")
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (pairs,), generator=gen)
    j = (i + torch.randint(1, n, (pairs,), generator=gen)) % n
    device = next(lpips.parameters()).device
    total = 0.0
    for a, b in zip(i.split(batch_size), j.split(batch_size)):
        total += float(lpips(images[a].to(device), images[b].to(device)).sum())
    return total / pairs


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, 3, H, W)`` images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
