"""The ConvNet's layer primitives: matmul, 2-D convolution (three implementations), max-pool.

The convolution implementations compute the same numbers and differ only in speed, which depends
on the backend and on whether the local loop is vmapped (`xla.resolve_conv_impl` chooses;
benchmarks/RESULTS.md has the measurements):
- 'xla': `lax.conv_general_dilated`, differentiated by JAX. Inside a loop (the clients' `lax.scan`)
  XLA:CPU keeps the two gradient convolutions in their transposed dimension orders and runs them
  as slow generic loops (jax-ml/jax#12868): ~9x slower there.
- 'nhwc_vjp': the same forward convolution with a hand-written VJP whose two gradient
  convolutions are also NHWC x HWIO -> NHWC (explicit transposes around them), which XLA:CPU runs
  with its library (Eigen) kernel inside loops too. The fastest on CPU for one client at a time.
- 'im2col': patches @ kernel, a plain matmul; under `vmap` (per-client kernels) a batched matmul,
  where lax.conv becomes a grouped convolution. The fastest on CPU when the loop is vmapped.
- 'auto' (ConvNet's default): 'nhwc_vjp' on CPU, 'xla' elsewhere, decided when traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "nhwc_vjp", "im2col")
COMPUTE_DTYPES = ("float32", "bfloat16")
_NHWC = ("NHWC", "HWIO", "NHWC")


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """a @ b over the last axis of a; bfloat16 inputs accumulate in float32 when asked."""
    if compute_dtype == "bfloat16":
        return jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                          preferred_element_type=jnp.float32)
    return jnp.matmul(a, b)


def im2col(x: jax.Array, k: int, padding: str) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', k*k*C) patches, ordered (kh, kw, c) like an HWIO kernel.

    Built from k*k strided slices: a convolution written as patches @ kernel is a plain matmul,
    which stays a (batched) matmul under `vmap` with per-client weights.
    """
    x = _pad(x, (k, k), padding)
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    cols = [x[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)]
    return jnp.concatenate(cols, axis=-1)


def _pad(x: jax.Array, window: tuple[int, int], padding) -> jax.Array:
    """Zero-pad H and W of (B, H, W, C) as a stride-1 convolution with `padding` would ('SAME',
    'VALID', or (lo, hi) pairs; lax's rule, which for 'SAME' puts (k-1)//2 before, like torch)."""
    pads = lax.padtype_to_pads(x.shape[1:3], window, (1, 1), padding) if isinstance(padding, str) else padding
    return jnp.pad(x, ((0, 0), *map(tuple, pads), (0, 0)))


def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@jax.custom_vjp
def conv_nhwc_vjp(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' stride-1 convolution (B, H, W, I) x (k, k, I, O) -> (B, H-k+1, W-k+1, O) whose VJP
    is two more NHWC x HWIO convolutions (see the module docstring)."""
    return _conv(x, kernel, "VALID")


def _nhwc_fwd(x, kernel):
    return _conv(x, kernel, "VALID"), (x, kernel)


def _nhwc_bwd(res, dy):
    x, kernel = res
    k = kernel.shape[0]
    # dx: dy zero-padded by k-1 on each side, correlated with the flipped kernel (I and O swapped)
    dx = _conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), [(k - 1, k - 1)] * 2)
    # dkernel[i, j, c, o] = sum_{b,h,w} x[b, h+i, w+j, c] dy[b, h, w, o]: x as (C, H, W, B) images,
    # dy as an (H', W', B, O) kernel, so the sum over the batch is the convolution's feature sum
    dk = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), "VALID").transpose(1, 2, 0, 3)
    return dx, dk


conv_nhwc_vjp.defvjp(_nhwc_fwd, _nhwc_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated`, e.g. a Flax model's convolutions on CPU:
    `nn.Conv(..., conv_general_dilated=pfedhn_jax.layers.conv_general_dilated)` (linen and nnx).

    On CPU a plain 2-D convolution (stride 1, no dilation or groups, NHWC x HWIO -> NHWC, one dtype)
    goes through `conv_nhwc_vjp`, so its gradient stays fast inside the clients' loop; any other
    call, and every call off CPU, is `lax.conv_general_dilated` itself.
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and rhs.ndim == 4
             and lhs.dtype == rhs.dtype and tuple(window_strides) == (1, 1)
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and feature_group_count == batch_group_count == 1 and precision is None
             and preferred_element_type is None
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    negative = not isinstance(padding, str) and any(p < 0 for pair in padding for p in pair)  # a crop
    if not plain or negative:
        return lax.conv_general_dilated(*args)
    return conv_nhwc_vjp(_pad(lhs, rhs.shape[:2], padding), rhs)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str,
           impl: str = "xla", compute_dtype: str = "float32") -> jax.Array:
    """Stride-1 2-D convolution plus bias, (B, H, W, C) NHWC input and HWIO kernel.

    'nhwc_vjp' with bfloat16 inputs uses lax.conv's own VJP (the hand-written one is float32).
    """
    k = kernel.shape[0]
    if impl == "auto":
        impl = "nhwc_vjp" if jax.default_backend() == "cpu" else "xla"
    if impl == "im2col":
        y = matmul(im2col(x, k, padding), kernel.reshape(-1, kernel.shape[-1]), compute_dtype)
    elif impl == "nhwc_vjp" and compute_dtype == "float32":
        y = conv_nhwc_vjp(_pad(x, (k, k), padding), kernel)
    else:
        dt = jnp.bfloat16 if compute_dtype == "bfloat16" else x.dtype
        y = lax.conv_general_dilated(
            x.astype(dt), kernel.astype(dt), (1, 1), padding, dimension_numbers=_NHWC,
            preferred_element_type=jnp.float32 if compute_dtype == "bfloat16" else None)
    return y + bias


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, floor mode (PyTorch's default), written as reshape + max."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :2 * h2, :2 * w2, :].reshape(b, h2, 2, w2, 2, c)
    return x.max(axis=(2, 4))
