"""Per-FedAvg (Fallah et al., NeurIPS 2020): FedAvg of a MAML objective, so that one gradient step
on a client's own data personalises the global model.

Each sampled client runs R = inner_steps local iterations from the server's w, each on fresh
batches D, D', D'' (step sizes α, β = lr, the swept rate):
  first order (per-fedavg):  w ← w − β ∇f(w − α∇f(w; D); D')
  Hessian-free (per-fedavg-hf):
      g = ∇f(w − α∇f(w; D); D');   w ← w − β (g − α ∇²f(w; D'') g)
  with the Hessian-vector product ∇²f(w; D'') g = jvp of ∇f(·; D'') at w along g (exact, no
  finite differences). Server: w ← (1/S) Σ_i w_i, the paper's uniform mean.
Evaluation: every client takes one step w − α∇f(w; B_i) on a batch B_i of its own training data
and is evaluated with the result.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.algorithms.common import Baseline, BaselineState, run_round, tree_norm_diff
from pfedhn_jax.data.federated import FederatedData
from pfedhn_jax.targets import Params


def _step(params: Params, grads: Params, lr) -> Params:
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


@dataclasses.dataclass(frozen=True)
class PerFedAvg(Baseline):
    """alpha: α, the personalisation step; lr: β, the meta step (swept); hessian_free: the HF variant."""

    alpha: float = 0.01
    hessian_free: bool = False
    lr: float = 1e-3

    lr_meaning = "meta learning rate β"

    @property
    def name(self) -> str:
        return "per-fedavg-hf" if self.hessian_free else "per-fedavg"

    def __post_init__(self):
        super().__post_init__()
        if not self.alpha > 0:
            raise ValueError(f"PerFedAvg: alpha must be positive, got {self.alpha!r}")

    def init(self, key: jax.Array) -> BaselineState:
        return self.init_state(key, lambda p: (p, {}))

    def meta_grad(self, w: Params, batches: tuple[tuple, tuple, tuple]) -> tuple[Params, jax.Array]:
        """The update direction of one local iteration and the loss f(w; D)."""
        d, d1, d2 = batches
        loss, g = jax.value_and_grad(self.loss_fn)(w, d)
        g1 = jax.grad(self.loss_fn)(_step(w, g, self.alpha), d1)
        if not self.hessian_free:
            return g1, loss
        hv = jax.jvp(lambda p: jax.grad(self.loss_fn)(p, d2), (w,), (g1,))[1]
        return jax.tree.map(lambda a, h: a - self.alpha * h, g1, hv), loss

    def local_round(self, w: Params, batch_fn, key: jax.Array, lr) -> tuple[Params, jax.Array]:
        def iteration(w, kb):
            direction, loss = self.meta_grad(w, tuple(batch_fn(k) for k in jax.random.split(kb, 3)))
            return _step(w, direction, lr), loss
        w, losses = jax.lax.scan(iteration, w, jax.random.split(key, self.inner_steps), unroll=self.unroll)
        return w, losses.mean()

    def step(self, data: FederatedData, state: BaselineState,
             client_ids: jax.Array | None = None) -> tuple[BaselineState, StepMetrics]:
        key, ids, keys = self.round_keys(state, client_ids)

        def one_client(cid, k):
            w, loss = self.local_round(state.shared, self.batches(data, cid), k, state.lr)
            return w, loss, tree_norm_diff(state.shared, w)

        ws, loss, delta = run_round(one_client, (ids, keys), self.strategy, self.client_sharding)
        shared = jax.tree.map(lambda x: jnp.mean(x, 0), ws)
        return state._replace(step=state.step + 1, shared=shared, key=key), StepMetrics(ids, loss, delta)

    def client_models(self, state: BaselineState, data: FederatedData) -> Params:
        """One step w − α∇f(w; B_i) per client, B_i drawn from its training data with a key derived
        from the state's (the same state always evaluates the same models)."""
        keys = jax.random.split(jax.random.fold_in(state.key, 1), self.num_clients)

        def adapt(cid, k):
            return _step(state.shared, jax.grad(self.loss_fn)(state.shared, self.batches(data, cid)(k)), self.alpha)
        return jax.lax.map(lambda a: adapt(*a), (jnp.arange(self.num_clients), keys))


def build(cfg, make_target, hessian_free: bool = False) -> PerFedAvg:
    return PerFedAvg(make_target(cfg), cfg.num_clients, lr=cfg.effective_lr, inner_steps=cfg.inner_steps,
                     batch_size=cfg.batch_size, clients_per_step=cfg.clients_per_step, strategy=cfg.strategy,
                     unroll=cfg.unroll, alpha=cfg.perfedavg_alpha, hessian_free=hessian_free)


def build_hf(cfg, make_target) -> PerFedAvg:
    return build(cfg, make_target, hessian_free=True)
