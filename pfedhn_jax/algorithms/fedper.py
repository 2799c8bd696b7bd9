"""FedPer (Arivazhagan et al., 2019): the base layers are averaged (FedAvg's round), the
classifier head is personal, trained with the base on its client and kept there across rounds."""

from __future__ import annotations

import dataclasses

from pfedhn_jax.algorithms import fedavg


@dataclasses.dataclass(frozen=True)
class FedPer(fedavg.FedAvg):
    """FedAvg with `keep` = the target's head (e.g. ConvNet's last dense layer, `target.head`)."""

    name = "fedper"


def build(cfg, make_target) -> FedPer:
    target = make_target(cfg)
    return fedavg.build(cfg, lambda _: target, keep=(target.head,), cls=FedPer)
