"""The paper's published numbers (Table 1, docs/reference.md §6) and its names for things.

`checked=True`: the value was cross-checked against a copy of Table 1 (docs/reference.md §6 names
the copies); every other value is recalled and printed with a leading `~` until someone checks it
against the paper itself. The six baselines of Table 1 are listed under their algorithm keys
("local", "fedavg", ...), for the comparison rows of the all-methods table.
"""

from __future__ import annotations

import dataclasses

SEEDS = (42, 27, 13)                       # the authors' sweep (docs/reference.md §3)
ALGO_NAMES = {"pfedhn": "pFedHN", "pfedhn-pc": "pFedHN-PC", "local": "Local", "fedavg": "FedAvg",
              "per-fedavg": "Per-FedAvg", "fedper": "FedPer", "pfedme": "pFedMe", "lg-fedavg": "LG-FedAvg"}


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
    ("pfedhn", "cifar10", 50): Published(88.38, 0.29, True),    # also in Flower's pFedHN baseline README
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

# Table 1's baselines, all recalled (docs/reference.md §6): CIFAR-10 and CIFAR-100 at N = 10, 50, 100.
_BASELINES = {
    "local": [(86.46, 4.02), (68.11, 7.39), (59.32, 5.59), (58.98, 1.38), (19.98, 1.41), (15.12, 0.58)],
    "fedavg": [(51.42, 2.41), (47.79, 4.48), (44.12, 3.10), (15.96, 0.55), (15.71, 0.35), (14.59, 0.40)],
    "fedper": [(87.27, 1.39), (83.39, 0.47), (80.99, 0.71), (55.57, 0.59), (48.32, 1.46), (42.08, 0.18)],
    "pfedme": [(87.69, 1.93), (86.09, 0.32), (85.23, 0.58), (51.97, 1.29), (49.09, 1.10), (45.57, 1.02)],
    "lg-fedavg": [(89.11, 2.66), (85.19, 0.58), (81.49, 1.56), (53.69, 1.42), (53.16, 2.18), (49.99, 3.13)],
}
_CELLS = [(d, n) for d in ("cifar10", "cifar100") for n in (10, 50, 100)]
for _algo, _values in _BASELINES.items():
    for (_d, _n), (_mean, _std) in zip(_CELLS, _values):
        PAPER[(_algo, _d, _n)] = Published(_mean, _std, False)
# Per-FedAvg: only its CIFAR-10 values are recorded, to one decimal and without their std (recalled)
for _n, _mean in ((10, 76.7), (50, 83.0), (100, 80.2)):
    PAPER[("per-fedavg", "cifar10", _n)] = Published(_mean, None, False)
del _algo, _values, _d, _n, _mean, _std
