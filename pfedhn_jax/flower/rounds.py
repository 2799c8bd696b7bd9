"""The numbers of one pFedHN round, split at the network: the server's half and the client's half.

`PFedHN.step` computes one outer step in one program; here the same step is cut where the wire
goes, with the same functions and the same PRNG splits, so a federation over Flower computes the
simulation's numbers (tests/test_flower.py checks it against `scripts/train.py --client-order`):

  server   key, k_ids, k_local = split(key, 3); ids = sample_clients(k_ids) (or given)
           θ = hnet.apply(φ, ids)                          ServerRound.generate   -> θ_i, key_i down
  client   θ̃_i, private_i = local_update(θ_i, private_i)  ClientRunner.train      -> δ_i = θ_i − θ̃_i up
  server   φ ← opt(φ, VJP of hnet.apply at δ / C)          ServerRound.update

`ServerRound.update` is `server.server_update` fed the clients' differences δ directly: the
server never rebuilds θ̃ = θ − δ, which would round δ again; tests check that both give the same φ.
Nothing here imports flwr.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pfedhn_jax import client, evaluate, server
from pfedhn_jax.xla import at_precision, compiler_options
from pfedhn_jax.data.federated import FederatedData, sample_batch
from pfedhn_jax.hypernet import merge_params


class ServerRunState(NamedTuple):
    """What the server holds and checkpoints: no client's private state is ever here."""

    step: jax.Array              # () int32: rounds completed (trained or skipped)
    server: server.ServerState   # hypernetwork φ and its optimizer state
    key: jax.Array               # PRNG key of the next round


class Plan(NamedTuple):
    ids: np.ndarray          # (C,) int32 clients of the round
    keys: np.ndarray         # (C, 2) uint32 key data, one local key per client
    theta: Any               # θ leaves (C, ...) on the server's device
    next_key: jax.Array


def _split(key):
    key, k_ids, k_local = jax.random.split(key, 3)
    return key, k_ids, k_local


class ServerRound:
    """The server's jitted programs for one algorithm (`builders.build_algorithm(cfg)`)."""

    def __init__(self, alg, cfg):
        self.alg, self.cfg = alg, cfg
        opts = compiler_options()
        c = alg.clients_per_step

        def draw(key, given):
            key, k_ids, k_local = _split(key)
            ids = alg.sample_clients(k_ids) if given is None else alg.sample_clients(k_ids, given)
            return ids, jax.random.key_data(jax.random.split(k_local, c)), key

        self._draw = jax.jit(draw, compiler_options=opts)
        self.generate = jax.jit(at_precision(cfg, lambda params, ids: alg.hnet.apply(params, ids)),
                                compiler_options=opts)
        self.update = jax.jit(at_precision(cfg, self._update), compiler_options=opts)

    def _update(self, srv: server.ServerState, ids: jax.Array, delta) -> server.ServerState:
        """`server.server_update` with δ = θ − θ̃ given: g = (1/C) Σ_i (∂θ_i/∂φ)ᵀ δ_i, one optimizer
        step."""
        hnet, opt = self.alg.hnet, self.alg.server_optimizer()
        _, vjp = jax.vjp(lambda p: hnet.apply(p, ids), srv.params)
        (grads,) = vjp(jax.tree.map(lambda d: d / ids.shape[0], delta))
        updates, opt_state = opt.update(grads, srv.opt_state, srv.params)
        return server.ServerState(optax.apply_updates(srv.params, updates), opt_state)

    def plan(self, state: ServerRunState, client_ids: np.ndarray | None = None) -> Plan:
        given = None if client_ids is None else jnp.asarray(client_ids, jnp.int32)
        ids, keys, next_key = self._draw(state.key, given)
        return Plan(np.asarray(ids), np.asarray(keys), self.generate(state.server.params, ids), next_key)

    def personal_theta(self, state: ServerRunState):
        """θ of every client (leaves (N, ...)), generated at once as `PFedHN.evaluate` does."""
        return self.generate(state.server.params, jnp.arange(self.alg.hnet.num_clients))


class ClientResult(NamedTuple):
    delta: Any          # θ − θ̃, the generated part only
    private: Any        # the private part after training (stays on the client)
    private_opt_state: Any
    loss: jax.Array     # () mean local training loss
    delta_norm: jax.Array


class ClientRunner:
    """A client's jitted programs: the simulation's `local_update` on its own shard, and its evaluation."""

    def __init__(self, alg, cfg):
        self.alg, self.cfg = alg, cfg
        opts = compiler_options()

        def train(data: FederatedData, theta, private, private_opt_state, key_data):
            key = jax.random.wrap_key_data(key_data)
            batch_fn = lambda kb: sample_batch(data, data.train, jnp.int32(0), kb, alg.batch_size)
            res = client.local_update(alg.target.apply, theta, private, private_opt_state, batch_fn, key,
                                      alg.inner_steps, alg.theta_optimizer(), alg.private_optimizer(), alg.unroll)
            delta = jax.tree.map(jnp.subtract, theta, res.theta)
            return ClientResult(delta, res.private, res.private_opt_state, res.loss, optax.tree.norm(delta))

        def evaluate_(data: FederatedData, theta, private):
            params = jax.tree.map(lambda a: a[None], merge_params(theta, private))
            return tuple(evaluate.evaluate_clients(alg.target.apply, params, data, split)
                         for split in (data.val, data.test))

        self.train = jax.jit(at_precision(cfg, train), compiler_options=opts)
        self.evaluate = jax.jit(at_precision(cfg, evaluate_), compiler_options=opts)
