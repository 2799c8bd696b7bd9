"""Target networks as pure functions over plain pytrees.

A target is a frozen (hashable) dataclass with `init(key) -> params` and
`apply(params, x) -> logits`. Its parameter shapes drive the hypernetwork's heads, so
any target plugs into the same hypernetwork and training loop.

Parameter layout is JAX's (the same names and layouts as `flax.linen.Conv` / `Dense`):
conv kernels are HWIO, dense kernels are (in, out), activations are NHWC and flattened in
(H, W, C) order. `pfedhn_jax.interop` converts to and from the reference's PyTorch layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Params = Any  # a pytree (nested dicts) of arrays

CONV_IMPLS = ("xla", "im2col")
COMPUTE_DTYPES = ("float32", "bfloat16")


def torch_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype=jnp.float32) -> jax.Array:
    """PyTorch's default init for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """a @ b over the last axis of a; bfloat16 inputs accumulate in float32 when asked."""
    if compute_dtype == "bfloat16":
        return jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                          preferred_element_type=jnp.float32)
    return jnp.matmul(a, b)


def im2col(x: jax.Array, k: int, padding: str) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', k*k*C) patches, ordered (kh, kw, c) like an HWIO kernel.

    Built from k*k strided slices: on XLA:CPU a convolution written as patches @ kernel is a
    plain matmul, which stays fast inside loops and under `vmap` (a per-client weight becomes a
    batched matmul instead of a grouped convolution).
    """
    if padding == "SAME":
        p = k // 2
        x = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    cols = [x[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)]
    return jnp.concatenate(cols, axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str,
           impl: str = "xla", compute_dtype: str = "float32") -> jax.Array:
    """Stride-1 2-D convolution, NHWC input and HWIO kernel."""
    k = kernel.shape[0]
    if impl == "im2col":
        y = matmul(im2col(x, k, padding), kernel.reshape(-1, kernel.shape[-1]), compute_dtype)
    else:
        dt = jnp.bfloat16 if compute_dtype == "bfloat16" else x.dtype
        y = lax.conv_general_dilated(
            x.astype(dt), kernel.astype(dt), (1, 1), padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32 if compute_dtype == "bfloat16" else None)
    return y + bias


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, floor mode (PyTorch's default), written as reshape + max."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :2 * h2, :2 * w2, :].reshape(b, h2, 2, w2, 2, c)
    return x.max(axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class ConvNet:
    """Conv[k×k] → ReLU → maxpool2 blocks, then ReLU dense layers, then a linear head.

    Layers are named conv1..convK, fc1..fcM; the last fc is the classifier `head`.
    `cifar_cnn()` and `omniglot_cnn()` build the paper's two targets.

    conv_impl: 'xla' (lax.conv) or 'im2col' (patches @ kernel); same numbers, different speed.
    compute_dtype: 'float32', or 'bfloat16' matmul inputs with float32 accumulation
    (a documented deviation from the reference, off by default).
    """

    input_shape: tuple[int, int, int] = (32, 32, 3)  # H, W, C
    conv_channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    padding: str = "VALID"
    dense_features: tuple[int, ...] = (120, 84)
    n_classes: int = 10
    conv_impl: str = "xla"
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")

    @property
    def head(self) -> str:
        """Name of the classifier layer (the private layer of pFedHN-PC)."""
        return f"fc{len(self.dense_features) + 1}"

    def layer_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], int]]:
        """{layer: (kernel shape, bias shape, fan_in)} in forward order."""
        h, w, c = self.input_shape
        k = self.kernel_size
        out = {}
        for i, ch in enumerate(self.conv_channels):
            out[f"conv{i + 1}"] = ((k, k, c, ch), (ch,), k * k * c)
            if self.padding == "VALID":
                h, w = h - k + 1, w - k + 1
            h, w, c = h // 2, w // 2, ch
        if h < 1 or w < 1:
            raise ValueError(f"input {self.input_shape} is too small for {len(self.conv_channels)} conv blocks")
        fan = h * w * c
        for i, f in enumerate(self.dense_features + (self.n_classes,)):
            out[f"fc{i + 1}"] = ((fan, f), (f,), fan)
            fan = f
        return out

    def param_shapes(self) -> Params:
        """Pytree of `jax.ShapeDtypeStruct` with the structure of `init`'s output."""
        return {name: {"kernel": jax.ShapeDtypeStruct(ks, jnp.float32),
                       "bias": jax.ShapeDtypeStruct(bs, jnp.float32)}
                for name, (ks, bs, _) in self.layer_shapes().items()}

    def init(self, key: jax.Array) -> Params:
        """PyTorch-default initialisation (weights and biases U(±1/sqrt(fan_in)))."""
        layers = self.layer_shapes()
        keys = jax.random.split(key, 2 * len(layers))
        return {name: {"kernel": torch_uniform(keys[2 * i], ks, fan),
                       "bias": torch_uniform(keys[2 * i + 1], bs, fan)}
                for i, (name, (ks, bs, fan)) in enumerate(layers.items())}

    def features(self, params: Params, x: jax.Array) -> jax.Array:
        """(B, H, W, C) float images -> (B, F) features before the head."""
        for i in range(len(self.conv_channels)):
            p = params[f"conv{i + 1}"]
            x = conv2d(x, p["kernel"], p["bias"], self.padding, self.conv_impl, self.compute_dtype)
            x = max_pool2(jax.nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        for i in range(len(self.dense_features)):
            p = params[f"fc{i + 1}"]
            x = jax.nn.relu(matmul(x, p["kernel"], self.compute_dtype) + p["bias"])
        return x

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """(B, H, W, C) float images -> (B, n_classes) logits."""
        p = params[self.head]
        return matmul(self.features(params, x), p["kernel"], self.compute_dtype) + p["bias"]


def cifar_cnn(n_classes: int = 10, n_kernels: int = 16, **kw) -> ConvNet:
    """The reference's CIFAR target ("LeNet-like"): 121,182 parameters for 10 classes."""
    return ConvNet((32, 32, 3), (n_kernels, 2 * n_kernels), 5, "VALID", (120, 84), n_classes, **kw)


def omniglot_cnn(n_classes: int, image_size: int = 28, **kw) -> ConvNet:
    """The paper's Omniglot target: four 3x3 conv blocks (16, 32, 64, 128), then a linear head."""
    return ConvNet((image_size, image_size, 1), (16, 32, 64, 128), 3, "SAME", (), n_classes, **kw)


def num_params(params: Params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
