"""pFedHN and pFedHN-PC as one algorithm record (`algorithms.base.FederatedAlgorithm`): `init`,
`step`, `evaluate`, plus `personal_params` (every client's generated model).

The two variants differ only in which target params are private (kept on the client, never
generated; `hnet.private`): none for pFedHN, the classifier head for pFedHN-PC. One outer step:
  ids ~ clients (C of N, without replacement)     C = clients_per_step (reference: 1), or given
  θ_i = h(v_i; φ)                                  hypernetwork, on the server
  θ̃_i, private_i = local_update(θ_i, private_i)   K SGD steps on the client's own data
  φ ← opt(φ, VJP of h at (θ − θ̃))                 server
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pfedhn_jax import client, evaluate, optim, server
from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.algorithms.common import run_round, sample_clients, tree_bytes, tree_size
from pfedhn_jax.data.federated import ClientIndex, FederatedData, check_clients, sample_batch
from pfedhn_jax.hypernet import HyperNetwork, merge_params, split_params
from pfedhn_jax.targets import Params


class ClientState(NamedTuple):
    """Per-client state that persists across rounds; every leaf has a leading client axis N."""

    private: Params      # private part of the target params (`split_params`; {} for pFedHN)
    opt_state: Any       # their optimizer state


class TrainState(NamedTuple):
    step: jax.Array              # () int32: outer steps completed
    server: server.ServerState
    clients: ClientState
    key: jax.Array               # PRNG key for the next step


@dataclasses.dataclass(frozen=True)
class PFedHNSettings:
    """The hyperparameters of pFedHN and the interface methods its variants share (`PFedHN`, and
    `hetero.HeteroPFedHN` for targets of several sizes); `hnet` is the variant's hypernetwork.

    Defaults are the reference's (docs/reference.md §3). `clients_per_step > 1` averages the clients'
    VJPs, a deviation the paper never used. `strategy`, `unroll` and `client_sharding` change speed,
    not numbers: with `client_sharding` (e.g. `NamedSharding(mesh, P("clients"))`) the clients of a
    step are vmapped and split over the mesh's devices, and the server VJP is reduced across them.
    """

    hnet: Any
    inner_steps: int = 50
    batch_size: int = 64
    inner_lr: float = 5e-3
    inner_momentum: float = 0.9
    inner_wd: float = 5e-5
    inner_clip: float = 50.0
    optim: str = "sgd"
    lr: float = 1e-2
    embed_lr: float | None = None
    wd: float = 1e-3
    momentum: float = 0.9
    clip: float = 50.0
    clients_per_step: int = 1
    strategy: str = "auto"
    unroll: int = 1
    client_sharding: Any = None   # a jax.sharding.Sharding of the client axis: the step's clients spread over devices

    def __post_init__(self):
        """One clear ValueError per bad hyperparameter, before anything is traced."""
        for name in ("inner_steps", "batch_size", "clients_per_step", "unroll"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PFedHN: {name} must be a positive integer, got {v!r}")
        for name in ("inner_lr", "lr", "embed_lr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"PFedHN: {name} must be positive, got {v!r}")
        for name in ("inner_wd", "wd", "inner_momentum", "momentum", "inner_clip", "clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"PFedHN: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.clients_per_step > self.hnet.num_clients:
            raise ValueError(f"PFedHN: clients_per_step {self.clients_per_step} exceeds the hypernetwork's "
                             f"num_clients {self.hnet.num_clients}")
        if self.strategy not in client.STRATEGIES:
            raise ValueError(f"PFedHN: strategy must be one of {client.STRATEGIES}, got {self.strategy!r}")
        if self.optim not in server.OPTIMIZERS:
            raise ValueError(f"PFedHN: optim must be one of {server.OPTIMIZERS}, got {self.optim!r}")

    @property
    def learning_rate(self) -> float:
        """The swept rate: the hypernetwork's (in its optimizer state, `optax.inject_hyperparams`)."""
        return self.lr

    def with_learning_rate(self, state: TrainState, lr) -> TrainState:
        return state._replace(server=state.server._replace(
            opt_state=server.set_learning_rate(state.server.opt_state, lr)))

    def summarize(self, metrics: evaluate.ClientMetrics) -> dict:
        return evaluate.summarize(metrics)

    def sample_clients(self, key: jax.Array, client_ids: jax.Array | None = None) -> jax.Array:
        """The (clients_per_step,) int32 clients of a step: drawn without replacement, or given (replay)."""
        return sample_clients(key, self.hnet.num_clients, self.clients_per_step, client_ids)

    def server_optimizer(self) -> optax.GradientTransformation:
        return server.hyper_optimizer(self.optim, self.lr, self.embed_lr, self.wd, self.momentum, self.clip)

    def theta_optimizer(self) -> optax.GradientTransformation:
        return optim.torch_sgd(self.inner_lr, self.inner_momentum, self.inner_wd, self.inner_clip)

    def private_optimizer(self) -> optax.GradientTransformation:
        """The private head's own SGD (pFedHN-PC): same lr / momentum / wd, not clipped, state persists."""
        return optim.torch_sgd(self.inner_lr, self.inner_momentum, self.inner_wd)



@dataclasses.dataclass(frozen=True)
class PFedHN(PFedHNSettings):
    """pFedHN (and pFedHN-PC, via `hnet.private`): one hypernetwork generates every client's target."""

    hnet: HyperNetwork

    @property
    def target(self):
        return self.hnet.target

    def describe(self) -> dict:
        return {"name": "pfedhn-pc" if self.hnet.private else "pfedhn", "lr": self.lr,
                "lr_meaning": "hypernetwork learning rate", "embed_dim": self.hnet.embedding_dim}

    def communication(self, num_steps: int) -> dict:
        """Bytes each way per round and over the schedule: θ down and θ̃ − θ up, per sampled client.

        Only the generated part travels (pFedHN-PC's private head never leaves its client); the
        hypernetwork never leaves the server. Bytes = parameters × dtype size.
        """
        shapes = jax.eval_shape(self.hnet.init, jax.random.key(0))
        theta = jax.eval_shape(self.hnet.apply, shapes, jnp.int32(0))
        per_client = tree_bytes(theta)
        per_round = per_client * self.clients_per_step
        return {"theta_params": tree_size(theta), "bytes_down_per_client": per_client,
                "bytes_up_per_client": per_client, "bytes_down_per_round": per_round, "bytes_up_per_round": per_round,
                "bytes_total": 2 * per_round * num_steps, "hypernet_params": tree_size(shapes),
                "hypernet_bytes": tree_bytes(shapes)}

    def init(self, key: jax.Array) -> TrainState:
        k_hnet, k_priv, k_run = jax.random.split(key, 3)
        srv = server.init_server(self.hnet, self.server_optimizer(), k_hnet)
        keys = jax.random.split(k_priv, self.hnet.num_clients)
        private = jax.vmap(lambda k: split_params(self.target.init(k), self.hnet.private)[1])(keys)
        opt_state = jax.vmap(self.private_optimizer().init, axis_size=self.hnet.num_clients)(private)
        return TrainState(jnp.zeros((), jnp.int32), srv, ClientState(private, opt_state), k_run)

    def personal_params(self, state: TrainState, client_ids: jax.Array) -> Params:
        """Each client's full target params: generated θ merged with its private part. Leaves (C, ...)."""
        theta = self.hnet.apply(state.server.params, client_ids)
        return merge_params(theta, jax.tree.map(lambda a: a[client_ids], state.clients.private))

    def evaluate(self, state: TrainState, data: FederatedData, split: ClientIndex,
                 clients_per_batch: int | None = None, sharding: Any = None) -> evaluate.ClientMetrics:
        """Every client (ids 0..N-1) with its personal model on `split` (e.g. data.test); leaves (N,).

        clients_per_batch: as `evaluate.evaluate_clients`; sharding: spread the clients' params
        over devices (e.g. the mesh's 'clients' axis) and evaluate them all at once.
        """
        params = self.personal_params(state, jnp.arange(self.hnet.num_clients))
        if sharding is not None:
            params = jax.lax.with_sharding_constraint(params, sharding)
        return evaluate.evaluate_clients(self.target.apply, params, data, split, clients_per_batch)

    def step(self, data: FederatedData, state: TrainState,
             client_ids: jax.Array | None = None) -> tuple[TrainState, StepMetrics]:
        """One outer step (pure; jit it with `data` as an argument).

        client_ids: optional (clients_per_step,) int32, the clients to train instead of sampling
        them (to replay a reference run's client order). The PRNG key is split exactly as without
        it, so the batches and the next key do not depend on whether ids were given.
        """
        check_clients(data, self.hnet.num_clients, self.batch_size, "PFedHN's hypernetwork")
        key, k_ids, k_local = jax.random.split(state.key, 3)
        ids = self.sample_clients(k_ids, client_ids)
        theta = self.hnet.apply(state.server.params, ids)
        gathered = jax.tree.map(lambda a: a[ids], state.clients)
        theta_opt, private_opt = self.theta_optimizer(), self.private_optimizer()

        def one_client(cid, th, pr, pr_state, k):
            batch_fn = lambda kb: sample_batch(data, data.train, cid, kb, self.batch_size)
            return client.local_update(self.target.apply, th, pr, pr_state, batch_fn, k,
                                       self.inner_steps, theta_opt, private_opt, self.unroll)

        args = (ids, theta, gathered.private, gathered.opt_state, jax.random.split(k_local, self.clients_per_step))
        res = run_round(one_client, args, self.strategy, self.client_sharding)
        srv = server.server_update(self.hnet, self.server_optimizer(), state.server, ids, res.theta)
        clients = jax.tree.map(lambda all_, new: all_.at[ids].set(new), state.clients,
                               ClientState(res.private, res.private_opt_state))
        delta = jax.vmap(optax.tree.norm)(jax.tree.map(jnp.subtract, theta, res.theta))
        return TrainState(state.step + 1, srv, clients, key), StepMetrics(ids, res.loss, delta)
