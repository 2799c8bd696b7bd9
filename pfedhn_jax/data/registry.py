"""One spec per dataset: its facts, how to load and split it, its target network, its limits.

Everything that differs between datasets lives here, as data and two small spec kinds, instead of
branches through the code: CIFAR (class-based federated splits of the official train/test sets)
and Omniglot (one client per alphabet). Heavy modules (JAX, the loaders) are imported only when a
spec loads data or builds a target, so tables and flag checks stay light.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from pfedhn_jax.config import Config
from pfedhn_jax.errors import UserError

# Checksums of the offline CIFAR-10 copy decoded from JPEG (docs/data.md): results on it are labelled so.
JPEG_COPY_SHA256 = frozenset({"bfd5db62d6aaecf2e4199cb74f14832c5dcf3527c99fbe3b90fff1be42182ad6"})


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Facts shared by every dataset kind."""

    name: str
    label: str                       # as printed in tables, e.g. "CIFAR-10"
    n_classes: int                   # outputs of the target's head
    table_clients: tuple[int, ...]   # the client counts of the paper's Table 1
    max_clients: int | None = None   # None: limited only by the data

    @property
    def file(self) -> str:
        """The npz file name looked for in the data directory."""
        return f"{self.name}.npz"

    def display_name(self, sha256: str | None) -> str:
        """The label, marked "(JPEG copy)" for the offline JPEG-degraded CIFAR-10 file."""
        return f"{self.label} (JPEG copy)" if sha256 in JPEG_COPY_SHA256 else self.label

    def missing(self, cfg: Config) -> str | None:
        """The not-found message when it is clear without reading that no source has the data, else None."""
        if cfg.data_source == "tfds" or cfg.download:
            return None  # TFDS: only reading tells
        from pfedhn_jax.data.sources import not_found, resolve_data_dir
        d = resolve_data_dir(cfg.data_dir)
        npz = d / self.file if d is not None else None
        return None if npz is not None and npz.is_file() else str(not_found(self.name, npz))

    def check(self, cfg: Config) -> None:
        """Raise UserError for a config this dataset cannot serve (before any loading)."""
        if self.max_clients is not None and cfg.num_clients > self.max_clients:
            raise UserError(f"--num-clients: {self.label} supports at most {self.max_clients} clients, "
                            f"got {cfg.num_clients}")


@dataclasses.dataclass(frozen=True)
class ClassSplitSpec(DatasetSpec):
    """CIFAR-like: official train/test sets of NHWC uint8 images, split across clients by class
    (the reference's pathological split or a Dirichlet one; docs/reference.md §4)."""

    classes_per_client: int = 2      # the paper's value for the reference split

    def client_classes(self, cfg: Config) -> int:
        return self.classes_per_client if cfg.classes_per_client == -1 else cfg.classes_per_client

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if not 1 <= self.client_classes(cfg) <= self.n_classes:
            raise UserError(f"--classes-per-client: {self.client_classes(cfg)} is outside 1..{self.n_classes} "
                            f"(the number of classes of {cfg.dataset})")

    def info(self, cfg: Config):
        from pfedhn_jax.data.sources import DATASETS
        return DATASETS[self.name]

    def load(self, cfg: Config, seeds: Sequence[int]):
        """(RawDataset, [SplitSummary per seed]): the source read once, one split per seed."""
        from pfedhn_jax.data.federated import make_split
        from pfedhn_jax.data.sources import load_raw
        raw = load_raw(self.name, cfg.data_dir, cfg.data_source, cfg.download)
        if cfg.split_file is not None:  # a reference run's own split, the same for every seed
            from pfedhn_jax.data.replay import load_split_file
            split = load_split_file(cfg.split_file, len(raw.y_train), len(raw.y_test), cfg.num_clients)
            return raw, [split for _ in seeds]
        return raw, [make_split(raw, self.info(cfg), cfg.num_clients, self.client_classes(cfg), seed,
                                cfg.val_size, cfg.split, cfg.alpha) for seed in seeds]

    def target(self, cfg: Config, **speed: Any):
        from pfedhn_jax.targets import cifar_cnn
        return cifar_cnn(self.n_classes, cfg.n_kernels, **speed)


@dataclasses.dataclass(frozen=True)
class OmniglotSpec(DatasetSpec):
    """Omniglot: one client per alphabet, per-character train/val/test drawings (data/omniglot.py)."""

    min_image_size: int = 16         # four conv blocks with 2x2 pooling need 16 pixels

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.split_file is not None:
            raise UserError("--split-file: replays a reference CIFAR split; Omniglot has its own (drop the flag)")
        if cfg.client_widths:
            raise UserError("--client-widths: varies the CIFAR CNN's --n-kernels; Omniglot's target has no width "
                            "(drop the flag)")
        from pfedhn_jax.data.omniglot import SIDE
        if not self.min_image_size <= cfg.image_size <= SIDE:
            raise UserError(f"--image-size: must be in {self.min_image_size}..{SIDE} for Omniglot "
                            f"(four 2x2 poolings), got {cfg.image_size}")

    def info(self, cfg: Config):
        from pfedhn_jax.data.omniglot import omniglot_info
        return omniglot_info(cfg.image_size)

    def load(self, cfg: Config, seeds: Sequence[int]):
        from pfedhn_jax.data.omniglot import load_omniglot, make_omniglot_split
        omni = load_omniglot(cfg.data_dir, cfg.image_size, cfg.data_source, cfg.download)
        return omni.raw, [make_omniglot_split(omni, cfg.num_clients, seed, cfg.n_train, cfg.n_val) for seed in seeds]

    def target(self, cfg: Config, **speed: Any):
        from pfedhn_jax.targets import omniglot_cnn
        return omniglot_cnn(self.n_classes, cfg.image_size, **speed)


SPECS: dict[str, DatasetSpec] = {
    "cifar10": ClassSplitSpec("cifar10", "CIFAR-10", 10, (10, 50, 100), classes_per_client=2),
    "cifar100": ClassSplitSpec("cifar100", "CIFAR-100", 100, (10, 50, 100), classes_per_client=10),
    # 55 outputs: the characters of the largest alphabet; 50 alphabets, one per client
    "omniglot": OmniglotSpec("omniglot", "Omniglot", 55, (50,), max_clients=50),
}


def spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise UserError(f"--dataset: unknown dataset '{name}'; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def validate(cfg: Config) -> Config:
    """`cfg.validate()` plus the dataset's own limits: every check that needs no data."""
    cfg.validate()
    spec(cfg.dataset).check(cfg)
    return cfg
