"""What the baselines share: client sampling, running a round's clients, weighted averaging,
byte counts, and `Baseline`, the settings and bookkeeping of an algorithm whose clients train
copies of the target network itself (no hypernetwork).

Every baseline's state is a `BaselineState`: the server's model `shared`, each client's kept part
`personal` (leaves (N, ...)), the swept learning rate `lr` and the PRNG key. A round splits the key
as pFedHN's step does (next key, client draw, local keys), so the same seed draws the same clients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from pfedhn_jax import client, evaluate
from pfedhn_jax.data.federated import ClientIndex, FederatedData, check_clients, sample_batch
from pfedhn_jax.evaluate import ClientMetrics
from pfedhn_jax.targets import Params, Target


def sample_clients(key: jax.Array, num_clients: int, clients_per_step: int,
                   client_ids: jax.Array | None = None) -> jax.Array:
    """The (C,) int32 clients of a round: drawn uniformly without replacement, or given (replay)."""
    if client_ids is None:
        return jax.random.choice(key, num_clients, (clients_per_step,), replace=False)
    ids = jnp.asarray(client_ids, jnp.int32)
    if ids.shape != (clients_per_step,):
        raise ValueError(f"client_ids must have shape ({clients_per_step},), got {ids.shape}")
    return ids


def run_round(fn: Callable, args: tuple, strategy: str, client_sharding: Any = None):
    """`client.run_clients(fn, args, strategy)`; with a client sharding, the clients' inputs are
    constrained to it and 'auto' means vmap (the round's clients split over the devices)."""
    if client_sharding is not None:
        args = jax.lax.with_sharding_constraint(args, client_sharding)
        strategy = "vmap" if strategy == "auto" else strategy
    return client.run_clients(fn, args, strategy)


def weighted_mean(trees: Params, weights: jax.Array) -> Params:
    """Σ_i w_i x_i / Σ_i w_i over the leading axis of every leaf; weights (C,)."""
    return jax.tree.map(lambda x: jnp.tensordot(weights.astype(x.dtype) / jnp.sum(weights).astype(x.dtype), x, axes=1),
                        trees)


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays (or ShapeDtypeStructs) of a pytree."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def tree_size(tree: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def broadcast(tree: Params, n: int) -> Params:
    """One model for n clients: leaves (...) -> (n, ...)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), tree)


def tree_norm_diff(a: Params, b: Params) -> jax.Array:
    """||a − b|| over all leaves (one client's update size), ()."""
    sq = [jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return jnp.sqrt(sum(sq)) if sq else jnp.zeros(())


class BaselineState(NamedTuple):
    step: jax.Array      # () int32: rounds completed
    shared: Params       # the server's model (or the averaged part of it); {} when nothing is shared
    personal: Params     # each client's kept part, leaves (N, ...); {} when nothing is kept
    lr: jax.Array        # () float: the swept learning rate (one per run in a group)
    key: jax.Array       # PRNG key of the next round


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Settings every baseline has, and the interface methods they share (`base.FederatedAlgorithm`).

    target: the network every client trains (`init(key)`, `apply(params, x)`); num_clients: N.
    lr: the swept learning rate (its meaning is each algorithm's; in the state, `with_learning_rate`).
    inner_steps: local iterations per round; batch_size: local batch; clients_per_step: C per round.
    strategy / unroll / client_sharding: speed only, as for PFedHN.
    """

    target: Target
    num_clients: int
    lr: float = 5e-3
    inner_steps: int = 50
    batch_size: int = 64
    clients_per_step: int = 1
    strategy: str = "auto"
    unroll: int = 1
    client_sharding: Any = None

    name = "baseline"    # the registry name, for results.json
    lr_meaning = "client SGD learning rate"

    def __post_init__(self):
        """One clear ValueError per bad setting, before anything is traced."""
        cls = type(self).__name__
        for f in ("num_clients", "inner_steps", "batch_size", "clients_per_step", "unroll"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{cls}: {f} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"{cls}: lr must be positive, got {self.lr!r}")
        if self.clients_per_step > self.num_clients:
            raise ValueError(f"{cls}: clients_per_step {self.clients_per_step} exceeds num_clients {self.num_clients}")
        if self.strategy not in client.STRATEGIES:
            raise ValueError(f"{cls}: strategy must be one of {client.STRATEGIES}, got {self.strategy!r}")

    # ------------------------------------------------------------------ the interface's shared part

    @property
    def learning_rate(self) -> float:
        return self.lr

    def with_learning_rate(self, state: BaselineState, lr) -> BaselineState:
        return state._replace(lr=jnp.broadcast_to(jnp.asarray(lr, state.lr.dtype), state.lr.shape))

    def summarize(self, metrics: ClientMetrics) -> dict:
        return evaluate.summarize(metrics)

    def describe(self) -> dict:
        shapes = jax.eval_shape(self.target.init, jax.random.key(0))
        return {"name": self.name, "lr": self.lr, "lr_meaning": self.lr_meaning,
                "model_params": tree_size(shapes), "clients_per_step": self.clients_per_step}

    def communication(self, num_steps: int) -> dict:
        """The server's model (`shared`) goes down to each client of a round and comes back."""
        state = jax.eval_shape(self.init, jax.random.key(0))
        per_client = tree_bytes(state.shared)
        per_round = per_client * self.clients_per_step
        return {"shared_params": tree_size(state.shared), "bytes_down_per_client": per_client,
                "bytes_up_per_client": per_client, "bytes_down_per_round": per_round,
                "bytes_up_per_round": per_round, "bytes_total": 2 * per_round * num_steps,
                "personal_params_per_client": tree_size(state.personal) // self.num_clients}

    def evaluate(self, state: BaselineState, data: FederatedData, split: ClientIndex,
                 clients_per_batch: int | None = None, sharding: Any = None) -> ClientMetrics:
        params = self.client_models(state, data)
        if sharding is not None:
            params = jax.lax.with_sharding_constraint(params, sharding)
        return evaluate.evaluate_clients(self.target.apply, params, data, split, clients_per_batch)

    # ------------------------------------------------------------------ helpers for the algorithms

    def client_models(self, state: BaselineState, data: FederatedData) -> Params:
        """The model each client 0..N-1 is evaluated with, leaves (N, ...)."""
        raise NotImplementedError

    def init_state(self, key: jax.Array, split: Callable[[Params], tuple[Params, Params]]) -> BaselineState:
        """One initial model (`target.init`) split into (shared, kept part); every client keeps a copy
        of the kept part. The key is split as PFedHN.init splits its own (model, unused, next round)."""
        k_model, _, k_run = jax.random.split(key, 3)
        shared, personal = split(self.target.init(k_model))
        return BaselineState(jnp.zeros((), jnp.int32), shared, broadcast(personal, self.num_clients),
                             jnp.asarray(self.lr, jnp.result_type(float)), k_run)

    def round_keys(self, state: BaselineState, client_ids: jax.Array | None):
        """(next key, the round's clients (C,), one PRNG key per client (C,))."""
        key, k_ids, k_local = jax.random.split(state.key, 3)
        ids = sample_clients(k_ids, self.num_clients, self.clients_per_step, client_ids)
        return key, ids, jax.random.split(k_local, self.clients_per_step)

    def batches(self, data: FederatedData, cid: jax.Array) -> Callable[[jax.Array], tuple]:
        """key -> a fresh (x, y, mask) training batch of client cid (data checked against N and the batch)."""
        check_clients(data, self.num_clients, self.batch_size, type(self).__name__)
        return lambda k: sample_batch(data, data.train, cid, k, self.batch_size)

    def loss_fn(self, params: Params, batch: tuple) -> jax.Array:
        x, y, mask = batch
        return client.masked_cross_entropy(self.target.apply(params, x), y, mask)
