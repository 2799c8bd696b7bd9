"""LG-FedAvg (Liang et al., 2020): local representations, a global head. Every layer but the
classifier head is personal (kept on its client); the head is averaged by FedAvg's round, as in
the original paper (not FL-bench's variant, which keeps only the first layer global)."""

from __future__ import annotations

import dataclasses

from pfedhn_jax.algorithms import fedavg


@dataclasses.dataclass(frozen=True)
class LGFedAvg(fedavg.FedAvg):
    """FedAvg with `keep` = every parameter outside the target's head."""

    name = "lg-fedavg"


@dataclasses.dataclass(frozen=True)
class AllBut:
    """A key-path predicate: every parameter outside the top-level layer `name` (hashable, so two
    builds of the same config share compiled programs)."""

    name: str

    def __call__(self, path: tuple[str, ...]) -> bool:
        return path[0] != self.name


def build(cfg, make_target) -> LGFedAvg:
    target = make_target(cfg)
    return fedavg.build(cfg, lambda _: target, keep=AllBut(target.head), cls=LGFedAvg)
