"""The FedAvg + fine-tuning baseline of the novel-client experiment (paper Sec. 5.3): one global target
network trained by federated averaging over the training clients with pFedHN's own local SGD, then
fine-tuned on each client's data for the same budget as the novel-embedding fit (novel.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pfedhn_jax import client
from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.builders import compiler_options
from pfedhn_jax.data.federated import ClientIndex, FederatedData, sample_batch
from pfedhn_jax.targets import Params, Target


@functools.cache
def _jit(fn: Callable, static_argnames: tuple[str, ...]) -> Callable:
    """`fn` jitted once per process, with the project's per-backend XLA options."""
    return jax.jit(fn, static_argnames=static_argnames, compiler_options=compiler_options())


@dataclasses.dataclass(frozen=True)
class LocalSGD:
    """The client optimizer of the baseline; defaults = pFedHN's local SGD (docs/reference.md §3)."""

    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 5e-5
    clip: float | None = 50.0

    @classmethod
    def of(cls, alg: PFedHN) -> "LocalSGD":
        """The local optimizer of a PFedHN record (inner_lr, inner_momentum, inner_wd, inner_clip)."""
        return cls(alg.inner_lr, alg.inner_momentum, alg.inner_wd, alg.inner_clip)

    def optimizer(self) -> optax.GradientTransformation:
        return client.sgd(self.lr, self.momentum, self.weight_decay, self.clip)


def _local_sgd(target: Target, params: Params, data: FederatedData, split: ClientIndex, cid: jax.Array,
               key: jax.Array, steps: int, batch_size: int, local: LocalSGD) -> client.LocalResult:
    """`client.local_update` of full target params (no private part) on client cid of split."""
    batch_fn = lambda kb: sample_batch(data, split, cid, kb, batch_size)
    return client.local_update(target.apply, params, {}, optax.EmptyState(), batch_fn, key, steps,
                               local.optimizer(), optax.identity())


class FedAvgResult(NamedTuple):
    params: Params          # the global target params after the last round
    client_ids: jax.Array   # (rounds, C) the clients of each round
    loss: jax.Array         # (rounds, C) mean local training loss


def fedavg_train(target: Target, params: Params, data: FederatedData, key: jax.Array, rounds: int,
                 clients_per_round: int, local_steps: int = 50, batch_size: int = 64,
                 local: LocalSGD = LocalSGD(), strategy: str = "vmap") -> FedAvgResult:
    """FedAvg (McMahan et al., 2017) over the clients of data.train, in one jitted program.

    params: the initial global weights (e.g. `jax.jit(target.init)(key)`; drawn outside because
    random init inside this program multiplies its compile time on CPU). Each round C of the N
    clients (without replacement) run `local_steps` SGD steps (`local`, a fresh optimizer state,
    batches by `sample_batch`) from the global weights, all C under vmap; the server sets the global
    weights to their average weighted by the clients' training-sample counts. key: one PRNG key;
    round r uses split(key, rounds)[r], split again into (client draw, local keys).
    strategy: how the C clients run, `client.run_clients` ('vmap', the default; 'map' / 'loop'
    compute the same numbers and are faster on CPU; 'auto' picks per backend).
    """
    n = data.train.count.shape[0]
    if not 1 <= clients_per_round <= n:
        raise ValueError(f"clients_per_round must be in [1, {n}], got {clients_per_round}")
    if rounds < 1 or local_steps < 1:
        raise ValueError(f"rounds and local_steps must be positive integers, got {rounds} and {local_steps}")
    client.resolve_strategy(strategy, clients_per_round)   # one clear error for a bad name
    return _jit(_fedavg, ("target", "rounds", "clients_per_round", "local_steps", "batch_size", "local", "strategy"))(
        target, params, data, key, rounds, clients_per_round, local_steps, batch_size, local, strategy)


def _fedavg(target, params, data, key, rounds, clients_per_round, local_steps, batch_size, local, strategy):
    n = data.train.count.shape[0]

    def one_round(params, k):
        k_ids, k_local = jax.random.split(k)
        ids = jax.random.choice(k_ids, n, (clients_per_round,), replace=False)
        res = client.run_clients(
            lambda c, kk: _local_sgd(target, params, data, data.train, c, kk, local_steps, batch_size, local),
            (ids, jax.random.split(k_local, clients_per_round)), strategy)
        w = data.train.count[ids].astype(jnp.float32)
        w = w / w.sum()
        avg = jax.tree.map(lambda t: jnp.tensordot(w, t, axes=1), res.theta)
        return avg, (ids, res.loss)

    params, (ids, loss) = jax.lax.scan(one_round, params, jax.random.split(key, rounds))
    return FedAvgResult(params, ids, loss)


def finetune(target: Target, params: Params, data: FederatedData, split: ClientIndex, key: jax.Array,
             steps: int, batch_size: int = 64, local: LocalSGD = LocalSGD(), strategy: str = "vmap") -> Params:
    """Fine-tune one model (leaves without a client axis) on each client of split, all K under vmap.

    Client k runs `steps` SGD steps (`local`, fresh state) on batches `sample_batch(data, split, k)`
    from `params`. key: one PRNG key (split into K). strategy: as `fedavg_train` (default 'vmap').
    Returns per-client params, leaves (K, ...).
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    client.resolve_strategy(strategy, 1)
    return _jit(_finetune, ("target", "steps", "batch_size", "local", "strategy"))(
        target, params, data, split, key, steps, batch_size, local, strategy)


def _finetune(target, params, data, split, key, steps, batch_size, local, strategy):
    k = split.count.shape[0]
    res = client.run_clients(lambda c, kk: _local_sgd(target, params, data, split, c, kk, steps, batch_size, local),
                             (jnp.arange(k), jax.random.split(key, k)), strategy)
    return res.theta


def broadcast_clients(params: Params, num: int) -> Params:
    """One model for `num` clients: leaves (...) -> (num, ...) (e.g. to evaluate a global model)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num,) + a.shape), params)
