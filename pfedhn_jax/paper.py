"""The paper's published numbers (Table 1, docs/reference.md §6) and its names for things."""

from __future__ import annotations

import dataclasses

SEEDS = (42, 27, 13)                       # the authors' sweep (docs/reference.md §3)
ALGO_NAMES = {"pfedhn": "pFedHN", "pfedhn-pc": "pFedHN-PC"}


@dataclasses.dataclass(frozen=True)
class Published:
    """A published test accuracy (%); `checked`: cross-checked against a copy of the table."""

    mean: float
    std: float | None
    checked: bool

    def __str__(self) -> str:
        s = f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")
        return s if self.checked else f"~{s}"


PAPER: dict[tuple[str, str, int], Published] = {
    ("pfedhn", "cifar10", 10): Published(90.83, 0.28, False),
    ("pfedhn", "cifar10", 50): Published(88.38, 0.29, False),
    ("pfedhn", "cifar10", 100): Published(87.97, 0.70, False),
    ("pfedhn", "cifar100", 10): Published(65.74, 1.80, False),
    ("pfedhn", "cifar100", 50): Published(59.48, 0.67, False),
    ("pfedhn", "cifar100", 100): Published(53.24, 0.31, True),
    ("pfedhn-pc", "cifar10", 10): Published(92.47, 0.10, True),
    ("pfedhn-pc", "cifar10", 50): Published(90.08, 0.63, True),
    ("pfedhn-pc", "cifar10", 100): Published(88.09, 0.86, True),
    ("pfedhn-pc", "cifar100", 10): Published(68.15, 1.49, True),
    ("pfedhn-pc", "cifar100", 50): Published(60.17, 1.63, True),
    ("pfedhn-pc", "cifar100", 100): Published(52.40, 0.40, False),
    ("pfedhn", "omniglot", 50): Published(72.0, None, False),   # "about 72", recalled
    ("pfedhn-pc", "omniglot", 50): Published(82.0, None, False),  # "about 82", recalled
}
