"""Client side: K local steps of clipped SGD on a client's own data (the optimizer: `optim`).

`local_update` is one client's loop; `run_clients` runs the clients of one outer step with a
chosen execution strategy. All strategies compute the same numbers (tests check it); they
differ only in speed, which depends on the backend (docs/reference.md §8, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pfedhn_jax.hypernet import merge_params
from pfedhn_jax.targets import Params

STRATEGIES = ("auto", "vmap", "map", "loop")


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the valid (mask=True) rows. (B, K), (B,), (B,) -> ()."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(mask.sum(), 1)


class LocalResult(NamedTuple):
    theta: Params              # generated weights after the local steps (θ̃)
    private: Params            # private layers after the local steps ({} for pFedHN)
    private_opt_state: Any     # their optimizer state, which persists across the client's rounds
    loss: jax.Array            # mean training loss over the local steps, ()


def local_update(apply_fn: Callable[[Params, jax.Array], jax.Array],
                 theta: Params, private: Params, private_opt_state: Any,
                 batch_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
                 key: jax.Array, num_steps: int,
                 theta_opt: optax.GradientTransformation,
                 private_opt: optax.GradientTransformation,
                 unroll: int | bool = 1) -> LocalResult:
    """Run `num_steps` SGD steps from θ with a FRESH optimizer state (the reference's behaviour).

    apply_fn(params, x) -> logits on the merged params `merge_params(theta, private)`.
    batch_fn(key) -> (x, y, mask), a fresh random batch per step.
    theta_opt updates the generated weights (fresh state every round); private_opt the private
    layers, whose state `private_opt_state` is carried in and out (pFedHN-PC's persisting head).
    """

    def loss_fn(params, batch):
        x, y, mask = batch
        return masked_cross_entropy(apply_fn(merge_params(params[0], params[1]), x), y, mask)

    def step(carry, k):
        th, pr, s_th, s_pr = carry
        loss, (g_th, g_pr) = jax.value_and_grad(loss_fn)((th, pr), batch_fn(k))
        u_th, s_th = theta_opt.update(g_th, s_th, th)
        u_pr, s_pr = private_opt.update(g_pr, s_pr, pr)
        return (optax.apply_updates(th, u_th), optax.apply_updates(pr, u_pr), s_th, s_pr), loss

    carry = (theta, private, theta_opt.init(theta), private_opt_state)
    (theta, private, _, private_opt_state), losses = jax.lax.scan(
        step, carry, jax.random.split(key, num_steps), unroll=unroll)
    return LocalResult(theta, private, private_opt_state, losses.mean())


def resolve_strategy(strategy: str, num_clients: int) -> str:
    """'auto': vmap on accelerators; on CPU a sequential loop (vmap's grouped work is slower there)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    if jax.default_backend() != "cpu":
        return "vmap"
    return "loop" if num_clients <= 8 else "map"


def run_clients(fn: Callable[..., LocalResult], args: tuple, strategy: str) -> LocalResult:
    """Apply `fn` to each client's slice of `args` (every leaf has a leading client axis C).

    vmap: one batched program; map: `lax.map` (a loop in the program); loop: a Python loop
    unrolled in the trace. Results are stacked on a leading axis in every case.
    """
    c = jax.tree.leaves(args)[0].shape[0]
    strategy = resolve_strategy(strategy, c)
    if strategy == "vmap":
        return jax.vmap(fn)(*args)
    if strategy == "map":
        return jax.lax.map(lambda a: fn(*a), args)
    outs = [fn(*jax.tree.map(lambda a: a[i], args)) for i in range(c)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
