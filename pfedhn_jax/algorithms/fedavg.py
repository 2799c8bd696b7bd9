"""FedAvg (McMahan et al., 2017), and the partial-averaging family built on its round.

One round (C clients sampled without replacement, or given):
  w_i  = merge(w_shared, p_i)                 client i's model: the server's part + its kept part
  w̃_i  = K steps of local SGD from w_i        pFedHN's local optimizer: clipped SGD, momentum, wd,
                                              fresh state each round (docs/algorithms.md)
  w_shared ← Σ_i n_i w̃_i,shared / Σ_i n_i     weighted by the clients' training-sample counts n_i
  p_i ← w̃_i,kept                              kept on the client across rounds, never averaged
`keep` picks the kept part by name or key-path predicate (as pFedHN-PC's `private=`): nothing for
FedAvg (every client is evaluated with the global model), the classifier head for FedPer, all
but the head for LG-FedAvg, everything for Local.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from pfedhn_jax import client, optim
from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.algorithms.common import Baseline, BaselineState, broadcast, run_round, tree_norm_diff, weighted_mean
from pfedhn_jax.data.federated import FederatedData
from pfedhn_jax.hypernet import Private, merge_params, split_params
from pfedhn_jax.targets import Params


@dataclasses.dataclass(frozen=True)
class FedAvg(Baseline):
    """FedAvg with pFedHN's local optimizer; `keep` = () is FedAvg itself.

    momentum / weight_decay / clip: the local SGD's (pFedHN's defaults: 0.9, 5e-5, 50).
    keep: the parameters each client keeps (names, or a predicate on key paths).
    """

    momentum: float = 0.9
    weight_decay: float = 5e-5
    clip: float | None = 50.0
    keep: Private = ()

    name = "fedavg"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.keep, str):
            object.__setattr__(self, "keep", (self.keep,))
        elif not callable(self.keep):
            object.__setattr__(self, "keep", tuple(self.keep))
        split_params(jax.eval_shape(self.target.init, jax.random.key(0)), self.keep)  # a misspelled name raises here

    def split(self, params: Params) -> tuple[Params, Params]:
        """params -> (averaged part, kept part)."""
        return split_params(params, self.keep)

    def local_optimizer(self, lr) -> optax.GradientTransformation:
        return optim.torch_sgd(lr, self.momentum, self.weight_decay, self.clip)

    def init(self, key: jax.Array) -> BaselineState:
        return self.init_state(key, self.split)

    def client_models(self, state: BaselineState, data: FederatedData) -> Params:
        return merge_params(broadcast(state.shared, self.num_clients), state.personal)

    def step(self, data: FederatedData, state: BaselineState,
             client_ids: jax.Array | None = None) -> tuple[BaselineState, StepMetrics]:
        key, ids, keys = self.round_keys(state, client_ids)
        kept = jax.tree.map(lambda a: a[ids], state.personal)
        opt = self.local_optimizer(state.lr)

        def one_client(cid, kept_i, k):
            w = merge_params(state.shared, kept_i)
            res = client.local_update(self.target.apply, w, {}, optax.EmptyState(), self.batches(data, cid), k,
                                      self.inner_steps, opt, optax.identity(), self.unroll)
            return res.theta, res.loss, tree_norm_diff(w, res.theta)

        trained, loss, delta = run_round(one_client, (ids, kept, keys), self.strategy, self.client_sharding)
        shared, new_kept = self.split(trained)
        shared = weighted_mean(shared, data.train.count[ids]) if state.shared else state.shared
        personal = jax.tree.map(lambda all_, new: all_.at[ids].set(new), state.personal, new_kept)
        return (state._replace(step=state.step + 1, shared=shared, personal=personal, key=key),
                StepMetrics(ids, loss, delta))


def build(cfg, make_target, keep: Any = (), cls: type = FedAvg) -> FedAvg:
    """The registry's builder: cfg's schedule and local optimizer, `keep` as the variant's."""
    return cls(make_target(cfg), cfg.num_clients, lr=cfg.effective_lr, inner_steps=cfg.inner_steps,
               batch_size=cfg.batch_size, clients_per_step=cfg.clients_per_step, strategy=cfg.strategy,
               unroll=cfg.unroll, weight_decay=cfg.inner_wd, keep=keep)
