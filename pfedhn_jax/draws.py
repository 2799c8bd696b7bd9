"""Many uniform draws from one threefry call, bit for bit equal to separate `jax.random.uniform` calls.

Each `jax.random.uniform` call becomes its own threefry kernel in a compiled program, and XLA:CPU
needs up to a few seconds to compile each one. A hypernetwork's init makes two draws per head. With JAX's
default PRNG (threefry2x32, partitionable mode), element i of a draw of any shape depends only on
(key, i) in row-major order. So all draws can be one threefry over their concatenated elements,
each element with its own key and counter. Measured on the project's 2-core CPU,
shared with other jobs (benchmarks/RESULTS.md): the default CIFAR-10 hypernetwork's init compiles
in 6.2 s instead of 13.1 s and runs in 1.9 s instead of 0.6 s. Other PRNG implementations, or the non-partitionable
mode, fall back to one call per draw.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

Draw = tuple[jax.Array, tuple[int, ...], float, float]  # (key, shape, minval, maxval)


def _batchable(key: jax.Array) -> bool:
    return bool(jax.config.jax_threefry_partitionable) and str(jax.random.key_impl(key)) == "threefry2x32"


def uniform_many(draws: Sequence[Draw]) -> list[jax.Array]:
    """`[jax.random.uniform(key, shape, float32, lo, hi) for key, shape, lo, hi in draws]`, equal
    bit for bit, from one threefry call. Keys are typed PRNG keys; shapes static."""
    if not draws or not _batchable(draws[0][0]):
        return [jax.random.uniform(k, s, jnp.float32, lo, hi) for k, s, lo, hi in draws]
    sizes = tuple(math.prod(s) for _, s, _, _ in draws)
    if max(sizes) >= 2 ** 32:
        raise ValueError(f"uniform_many: a draw of {max(sizes)} values exceeds threefry's 2**32 low counter")
    key_data = jnp.stack([jax.random.key_data(k) for k, _, _, _ in draws])
    values = _uniform_flat(key_data, sizes, tuple((float(lo), float(hi)) for _, _, lo, hi in draws))
    starts = np.cumsum((0,) + sizes[:-1])
    return [values[a:a + n].reshape(s) for a, n, (_, s, _, _) in zip(starts, sizes, draws)]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _uniform_flat(key_data: jax.Array, sizes: tuple[int, ...], bounds: tuple[tuple[float, float], ...]) -> jax.Array:
    """All draws concatenated, (sum(sizes),) float32. Jitted like `jax.random.uniform` itself, so
    that XLA fuses the scale-and-shift the same way (a fused multiply-add) when called eagerly."""
    starts = np.cumsum((0,) + sizes[:-1])
    # which draw each element belongs to; the barrier keeps XLA from constant-folding it into a
    # huge literal (the counters would otherwise all be compile-time constants)
    flat = jax.lax.optimization_barrier(jnp.arange(sum(sizes), dtype=jnp.uint32))
    which = jnp.searchsorted(jnp.asarray(starts[1:], jnp.uint32), flat, side="right")
    count = flat - jnp.asarray(starts, jnp.uint32)[which]
    hi_lo = jnp.stack([jnp.zeros_like(count), count], -1)  # the 64-bit counter (hi, lo) of each element
    bits1, bits2 = jax.vmap(threefry_2x32)(key_data[which], hi_lo).T
    bits = bits1 ^ bits2  # 32-bit draws, as jax's partitionable threefry
    # jax.random.uniform: 23 random mantissa bits with exponent 0 give [1, 2); minus 1, scale, shift
    floats = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - np.float32(1.0)
    lo, hi = (jnp.asarray(np.asarray(b, np.float32))[which] for b in zip(*bounds))
    return jnp.maximum(lo, floats * (hi - lo) + lo)


def torch_dense_many(keys: jax.Array, dims: Sequence[tuple[int, int]]) -> list[dict[str, jax.Array]]:
    """PyTorch-default Linear layers, one per (key, (n_in, n_out)): kernel (n_in, n_out) and bias
    (n_out,) U(±1/sqrt(n_in)), from `kw, kb = jax.random.split(key)`. keys: (L,) typed keys."""
    pairs = jax.vmap(jax.random.split)(keys)  # (L, 2)
    draws = []
    for i, (n_in, n_out) in enumerate(dims):
        b = 1.0 / math.sqrt(n_in)
        draws += [(pairs[i, 0], (n_in, n_out), -b, b), (pairs[i, 1], (n_out,), -b, b)]
    values = uniform_many(draws)
    return [{"kernel": values[2 * i], "bias": values[2 * i + 1]} for i in range(len(dims))]
