"""Server side: the hypernetwork's optimizer and its update from client deltas by a VJP.

For the clients `ids` of one step, g = (1/C) Σ_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i), then one optimizer step.
The embedding table is part of φ, so v_i is updated by the same VJP (only row i gets gradient).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from pfedhn_jax.client import clip_grad_norm
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
    """
    clip = clip_grad_norm(clip_norm)
    if optim == "adam":
        return optax.chain(clip, optax.adam(lr))
    if optim != "sgd":
        raise ValueError(f"optim must be one of {OPTIMIZERS}, got {optim!r}")
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
