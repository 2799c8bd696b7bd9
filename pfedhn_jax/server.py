"""Server side: the hypernetwork's optimizer and its update from client deltas by a VJP.

For the clients `ids` of one step, g = (1/C) Σ_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i), then one optimizer step.
The embedding table is part of φ, so v_i is updated by the same VJP (only row i gets gradient).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pfedhn_jax.optim import clip_grad_norm
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.targets import Params

OPTIMIZERS = ("sgd", "adam")


class ServerState(NamedTuple):
    params: Params      # hypernetwork parameters φ (embeddings included)
    opt_state: Any      # optax state


def hyper_optimizer(optim: str = "sgd", lr: float = 1e-2, embed_lr: float | None = None,
                    weight_decay: float = 1e-3, momentum: float = 0.9,
                    clip_norm: float = 50.0) -> optax.GradientTransformation:
    """The reference's hypernetwork optimizer, clip first, as in `clip_grad_norm_(50); opt.step()`.

    sgd: weight decay on every parameter (embeddings too), momentum 0.9, and the embeddings in
    their own group with lr = embed_lr (default lr). adam: `Adam(lr)` with no weight decay and no
    embedding group, as the reference.
    The learning rate lives in the optimizer state (`optax.inject_hyperparams`), so runs batched
    in one program can each have their own (`set_learning_rate`); the numbers are unchanged.
    """
    if optim not in OPTIMIZERS:
        raise ValueError(f"optim must be one of {OPTIMIZERS}, got {optim!r}")
    return optax.inject_hyperparams(_hyper_optimizer, static_args=("optim", "embed_lr", "weight_decay", "momentum",
                                                                   "clip_norm"))(
        optim=optim, lr=lr, embed_lr=embed_lr, weight_decay=weight_decay, momentum=momentum, clip_norm=clip_norm)


def set_learning_rate(opt_state: optax.InjectHyperparamsState, lr) -> optax.InjectHyperparamsState:
    """The hypernetwork optimizer's state with another learning rate (a scalar, or one per run of a
    batched state); with `embed_lr` unset the embeddings follow it."""
    old = opt_state.hyperparams["lr"]
    new = jnp.broadcast_to(jnp.asarray(lr, old.dtype), old.shape)
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "lr": new})


def _hyper_optimizer(optim, lr, embed_lr, weight_decay, momentum, clip_norm) -> optax.GradientTransformation:
    clip = clip_grad_norm(clip_norm)
    if optim == "adam":
        return optax.chain(clip, optax.adam(lr))
    labels = lambda p: {k: jax.tree.map(lambda _: "embed" if k == "embeddings" else "rest", v) for k, v in p.items()}
    groups = optax.transforms.partition(
        {"rest": optax.sgd(lr, momentum=momentum),
         "embed": optax.sgd(lr if embed_lr is None else embed_lr, momentum=momentum)}, labels)
    return optax.chain(clip, optax.add_decayed_weights(weight_decay), groups)


def init_server(hnet: HyperNetwork, optimizer: optax.GradientTransformation, key: jax.Array) -> ServerState:
    params = hnet.init(key)
    return ServerState(params, optimizer.init(params))


def hypernet_grads(hnet: HyperNetwork, params: Params, client_ids: jax.Array, theta_tilde: Params) -> Params:
    """The VJP g = (1/C) Σ_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i); θ̃ leaves have a leading client axis C."""
    theta, vjp = jax.vjp(lambda p: hnet.apply(p, client_ids), params)
    c = client_ids.shape[0]
    (grads,) = vjp(jax.tree.map(lambda t, tt: (t - tt) / c, theta, theta_tilde))
    return grads


def server_update(hnet: HyperNetwork, optimizer: optax.GradientTransformation, state: ServerState,
                  client_ids: jax.Array, theta_tilde: Params) -> ServerState:
    """One optimizer step of φ toward the clients' θ̃ (client_ids (C,), θ̃ leaves (C, ...))."""
    grads = hypernet_grads(hnet, state.params, client_ids, theta_tilde)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return ServerState(optax.apply_updates(state.params, updates), opt_state)
