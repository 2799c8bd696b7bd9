"""Local: each client trains its own model on its own data only; nothing is shared or sent.

FedAvg's round with every parameter kept (`keep` = everything), so the schedule, the sampling and
the local optimizer are exactly the other baselines'. All clients start from one initial model."""

from __future__ import annotations

import dataclasses

from pfedhn_jax.algorithms import fedavg


@dataclasses.dataclass(frozen=True)
class Local(fedavg.FedAvg):
    """FedAvg with `keep` = every parameter: the server's model is empty."""

    name = "local"


def _everything(path) -> bool:
    return True


def build(cfg, make_target) -> Local:
    return fedavg.build(cfg, make_target, keep=_everything, cls=Local)
