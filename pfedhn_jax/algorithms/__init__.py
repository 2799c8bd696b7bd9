"""The algorithm registry: `--algo NAME` -> a spec that builds the algorithm from a Config.

Plain data (no JAX): each spec names its module and builder, imported only when built, the
Config fields it owns (grouped per algorithm in `scripts/train.py --help`, with help text and
each default's source), what `--lr` means for it, and the schedule the Table 1 grid gives it.
Adding an algorithm is one module implementing `base.FederatedAlgorithm` with a
`build(cfg, make_target)` function, plus one entry here (docs/algorithms.md shows it for FedPer).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from pfedhn_jax.config import ALGOS
from pfedhn_jax.errors import UserError

# Equal compute: every method gets pFedHN's local iterations (5000 steps x 1 client x 50); the
# Table 1 grid gives the baselines 5 clients per round and a fifth of the rounds (`grid.cell_config`;
# docs/algorithms.md, "Budget").
BASELINE_CLIENTS = 5
# the rows of the paper's Table 1, in its order (per-fedavg-hf is an extra row, on request)
TABLE_ALGOS = ("local", "fedavg", "per-fedavg", "fedper", "pfedme", "lg-fedavg", "pfedhn", "pfedhn-pc")


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """name: the registry key; label: as in the paper's tables; module, builder: where
    `builder(cfg, make_target)` lives; lr: what --lr means, its default and the source;
    fields: {Config field: help text with the default's source} owned by this algorithm;
    clients_per_round: the clients per round the Table 1 grid gives it (its rounds scale down to
    keep the compute equal); pfedhn: a hypernetwork method (replay and --client-widths need one)."""

    name: str
    label: str
    module: str
    builder: str
    lr: str
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    clients_per_round: int = 1
    pfedhn: bool = False

    def build(self, cfg, make_target: Callable) -> Any:
        """The algorithm record for cfg; make_target(cfg) builds the target network."""
        module = importlib.import_module(f"pfedhn_jax.algorithms.{self.module}")
        return getattr(module, self.builder)(cfg, make_target)


_PFEDME = {
    "pfedme_lambda": "pFedMe: λ, the Moreau-envelope regularisation (default: {default}, pFedMe's README)",
    "pfedme_k": "pFedMe: K, steps solving for θ_i per local iteration (default: {default}, pFedMe's README)",
    "pfedme_personal_lr": "pFedMe: η_p, the personal learning rate of those K steps (default: {default}; pFedMe's "
                          "README uses 0.09-0.1 on MNIST, where η_p·λ > 1 oscillates with this CNN)",
    "pfedme_beta": "pFedMe: β, the server's mixing w ← (1-β)w + β·mean(w_i) (default: {default}, pFedMe's README)",
}
_PER_FEDAVG = {
    "perfedavg_alpha": "Per-FedAvg: α, the personalisation step, also the one step taken before evaluation "
                       "(default: {default}, FL-bench's)",
}
_CLIENT_LR = "client SGD learning rate (pFedHN's local rate and local SGD: momentum 0.9, wd 5e-5, clip 50)"

SPECS: dict[str, AlgorithmSpec] = {s.name: s for s in (
    AlgorithmSpec("pfedhn", "pFedHN", "pfedhn", "build", "hypernetwork learning rate (the reference's)",
                  pfedhn=True),
    AlgorithmSpec("pfedhn-pc", "pFedHN-PC", "pfedhn", "build",
                  "hypernetwork learning rate (the reference's pFedHN-PC trainer)", pfedhn=True),
    AlgorithmSpec("local", "Local", "local", "build", _CLIENT_LR, clients_per_round=BASELINE_CLIENTS),
    AlgorithmSpec("fedavg", "FedAvg", "fedavg", "build", _CLIENT_LR, clients_per_round=BASELINE_CLIENTS),
    AlgorithmSpec("fedper", "FedPer", "fedper", "build", _CLIENT_LR, clients_per_round=BASELINE_CLIENTS),
    AlgorithmSpec("lg-fedavg", "LG-FedAvg", "lg_fedavg", "build", _CLIENT_LR, clients_per_round=BASELINE_CLIENTS),
    AlgorithmSpec("pfedme", "pFedMe", "pfedme", "build", "local-model learning rate η (pFedMe's README)",
                  fields=_PFEDME, clients_per_round=BASELINE_CLIENTS),
    AlgorithmSpec("per-fedavg", "Per-FedAvg", "per_fedavg", "build",
                  "meta learning rate β (FL-bench's)", fields=_PER_FEDAVG, clients_per_round=BASELINE_CLIENTS),
    AlgorithmSpec("per-fedavg-hf", "Per-FedAvg (HF)", "per_fedavg", "build_hf",
                  "meta learning rate β (FL-bench's)", fields=_PER_FEDAVG, clients_per_round=BASELINE_CLIENTS),
)}
assert tuple(SPECS) == ALGOS, "config.ALGOS and the registry must list the same algorithms, in order"


def spec(name: str) -> AlgorithmSpec:
    if name not in SPECS:
        raise UserError(f"--algo: unknown algorithm '{name}'; choose one of {', '.join(SPECS)}")
    return SPECS[name]
