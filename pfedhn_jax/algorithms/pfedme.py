"""pFedMe (Dinh et al., NeurIPS 2020): personalised models as Moreau envelopes.

Client i's personalised model solves θ_i(w_i) ≈ argmin_θ f_i(θ; D) + λ/2 ||θ − w_i||², and the
local model w_i moves toward it. One round, for each sampled client (Algorithm 1 of the paper):
  w_i ← w                                                        the server's model
  for r = 1..R (R = inner_steps), each on a fresh batch D:
      K times:  θ ← θ − η_p (∇f_i(θ; D) + λ (θ − w_i))          θ starts at w, carried over r
      w_i ← w_i − η λ (w_i − θ)                                  η = lr, the swept rate
  w ← (1 − β) w + β (1/S) Σ_i w_i                                the paper's uniform mean
Each client keeps its last θ_i, the model it is evaluated with (clients never sampled yet use the
initial model). Only the sampled clients train, so a round costs S clients' work, not N (the
authors' code trains every client each round and aggregates a sample: the same update of w).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.algorithms.common import Baseline, BaselineState, run_round, tree_norm_diff
from pfedhn_jax.data.federated import FederatedData
from pfedhn_jax.targets import Params


@dataclasses.dataclass(frozen=True)
class PFedMe(Baseline):
    """lam: λ; k: K inner steps per local iteration; personal_lr: η_p; beta: server mixing β;
    lr: η, the local model's rate (swept)."""

    lam: float = 15.0
    k: int = 5
    personal_lr: float = 0.01
    beta: float = 1.0

    name = "pfedme"
    lr_meaning = "local-model learning rate η"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"PFedMe: k must be a positive integer, got {self.k!r}")
        for f in ("lam", "personal_lr", "beta"):
            if not getattr(self, f) > 0:
                raise ValueError(f"PFedMe: {f} must be positive, got {getattr(self, f)!r}")

    def init(self, key: jax.Array) -> BaselineState:
        """shared: w; personal: each client's θ_i, all the initial model."""
        return self.init_state(key, lambda p: (p, p))

    def client_models(self, state: BaselineState, data: FederatedData) -> Params:
        return state.personal

    def personalize(self, theta: Params, w_local: Params, batch: tuple) -> tuple[Params, jax.Array]:
        """K steps of θ ← θ − η_p (∇f(θ; D) + λ(θ − w_local)); returns θ and the mean loss f(θ; D) seen."""
        def inner(th, _):
            loss, g = jax.value_and_grad(self.loss_fn)(th, batch)
            return jax.tree.map(lambda t, gi, wl: t - self.personal_lr * (gi + self.lam * (t - wl)), th, g, w_local), loss
        theta, losses = jax.lax.scan(inner, theta, None, length=self.k)
        return theta, losses.mean()

    def local_round(self, w: Params, batch_fn, key: jax.Array, lr) -> tuple[Params, Params, jax.Array]:
        """One client's R local iterations from the server's w -> (w_i, θ_i, mean loss)."""
        def iteration(carry, kb):
            w_loc, theta = carry
            theta, loss = self.personalize(theta, w_loc, batch_fn(kb))
            w_loc = jax.tree.map(lambda a, t: a - lr * self.lam * (a - t), w_loc, theta)
            return (w_loc, theta), loss
        (w_loc, theta), losses = jax.lax.scan(iteration, (w, w), jax.random.split(key, self.inner_steps),
                                              unroll=self.unroll)
        return w_loc, theta, losses.mean()

    def step(self, data: FederatedData, state: BaselineState,
             client_ids: jax.Array | None = None) -> tuple[BaselineState, StepMetrics]:
        key, ids, keys = self.round_keys(state, client_ids)

        def one_client(cid, k):
            w_loc, theta, loss = self.local_round(state.shared, self.batches(data, cid), k, state.lr)
            return w_loc, theta, loss, tree_norm_diff(state.shared, w_loc)

        w_locs, thetas, loss, delta = run_round(one_client, (ids, keys), self.strategy, self.client_sharding)
        shared = jax.tree.map(lambda w, ws: (1 - self.beta) * w + self.beta * jnp.mean(ws, 0), state.shared, w_locs)
        personal = jax.tree.map(lambda all_, new: all_.at[ids].set(new), state.personal, thetas)
        return (state._replace(step=state.step + 1, shared=shared, personal=personal, key=key),
                StepMetrics(ids, loss, delta))

    def communication(self, num_steps: int) -> dict:
        c = super().communication(num_steps)
        c.pop("personal_params_per_client")  # θ_i stays on its client; w travels
        return c


def build(cfg, make_target) -> PFedMe:
    return PFedMe(make_target(cfg), cfg.num_clients, lr=cfg.effective_lr, inner_steps=cfg.inner_steps,
                  batch_size=cfg.batch_size, clients_per_step=cfg.clients_per_step, strategy=cfg.strategy,
                  unroll=cfg.unroll, lam=cfg.pfedme_lambda, k=cfg.pfedme_k, personal_lr=cfg.pfedme_personal_lr,
                  beta=cfg.pfedme_beta)
