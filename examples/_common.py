"""Shared by the examples: their command-line flags, and the arrays they train on.

The arrays are random class-template images by default (learnable, so accuracy rises within a few
dozen steps, and nothing needs downloading), or CIFAR-10 from `--data-dir DIR/cifar10.npz`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every example takes; defaults are a short but real run."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-dir", type=Path, help="folder with cifar10.npz (default: random images)")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="outer steps (one client each)")
    p.add_argument("--inner-steps", type=int, default=20, help="local SGD steps per outer step")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p


def arrays(data_dir: Path | None, seed: int = 0, n_train: int = 3000, n_test: int = 1000,
           shape: tuple[int, int, int] = (16, 16, 3),
           n_classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train (n, H, W, C) uint8, y_train (n,), x_test, y_test) from cifar10.npz, or random.

    Random: each class has a fixed random template; an image is its class's template plus noise.
    """
    if data_dir is not None:
        from pfedhn_jax.data.sources import DATASETS, load_npz
        raw = load_npz(Path(data_dir) / "cifar10.npz", DATASETS["cifar10"])
        return raw.x_train, raw.y_train, raw.x_test, raw.y_test
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (n_classes, *shape))
    y = rng.integers(0, n_classes, n_train + n_test)
    x = (0.5 * templates[y] + rng.normal(64, 40, (len(y), *shape))).clip(0, 255).astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
