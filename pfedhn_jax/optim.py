"""The optimizers shared by clients and server, written to match PyTorch's: `clip_grad_norm_`,
and `SGD(lr, momentum, weight_decay)` after it (pFedHN's local optimizer, also the baselines')."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """PyTorch's `clip_grad_norm_`: scale by min(1, max_norm / (||g|| + 1e-6)).

    (optax.clip_by_global_norm omits the 1e-6, a relative difference of 1e-6 / ||g||.)
    """

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def torch_sgd(lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
        clip_norm: float | None = None) -> optax.GradientTransformation:
    """PyTorch's `SGD(lr, momentum, weight_decay)` after `clip_grad_norm_(clip_norm)`, in that order."""
    parts = [clip_grad_norm(clip_norm)] if clip_norm is not None else []
    return optax.chain(*parts, optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))
