"""Target networks as pure functions over plain pytrees.

A target (`Target`) is anything with `init(key) -> params` and `apply(params, x) -> logits`,
params being any nested dict of arrays; best a frozen (hashable) dataclass, since targets sit
inside the jit-static `HyperNetwork`. The shapes of `init`'s output drive the hypernetwork's
heads, so any target plugs into the same hypernetwork and training loop: the built-in `ConvNet`,
or a Flax module through `from_linen` / `from_nnx` (flax is imported only by those two).

Parameter layout is JAX's (the same names and layouts as `flax.linen.Conv` / `Dense`):
conv kernels are HWIO, dense kernels are (in, out), activations are NHWC and flattened in
(H, W, C) order. `pfedhn_jax.interop` converts to and from the reference's PyTorch layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from pfedhn_jax.draws import uniform_many
from pfedhn_jax.layers import COMPUTE_DTYPES, CONV_IMPLS, conv2d, matmul, max_pool2

Params = Any  # a pytree (nested dicts) of arrays


@runtime_checkable
class Target(Protocol):
    """A target network as two pure functions over a params pytree (nested dicts of arrays).

    init(key) -> params: a PRNG key -> a fresh params tree; the hypernetwork only uses the
      shapes (`jax.eval_shape(target.init, key)`), pFedHN-PC also the values of the private part.
    apply(params, x) -> logits: x (B, *input_shape) float inputs -> (B, n_classes) logits, for
      params with exactly `init`'s structure and shapes; differentiable in params.
    """

    def init(self, key: jax.Array) -> Params: ...

    def apply(self, params: Params, x: jax.Array) -> jax.Array: ...

def torch_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype=jnp.float32) -> jax.Array:
    """PyTorch's default init for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class ConvNet:
    """Conv[k×k] → ReLU → maxpool2 blocks, then ReLU dense layers, then a linear head.

    Layers are named conv1..convK, fc1..fcM; the last fc is the classifier `head`.
    `cifar_cnn()` and `omniglot_cnn()` build the paper's two targets.

    conv_impl: 'xla' (lax.conv), 'nhwc_vjp' (lax.conv, loop-friendly VJP), 'im2col' (patches @
    kernel), or 'auto' (nhwc_vjp on CPU, xla elsewhere); same numbers, different speed
    (`pfedhn_jax.layers`).
    compute_dtype: 'float32', or 'bfloat16' matmul inputs with float32 accumulation
    (a documented deviation from the reference, off by default).
    """

    input_shape: tuple[int, int, int] = (32, 32, 3)  # H, W, C
    conv_channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    padding: str = "VALID"
    dense_features: tuple[int, ...] = (120, 84)
    n_classes: int = 10
    conv_impl: str = "auto"
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
        draws = [(keys[2 * i + j], shape, -1 / math.sqrt(fan), 1 / math.sqrt(fan))
                 for i, (ks, bs, fan) in enumerate(layers.values()) for j, shape in enumerate((ks, bs))]
        values = uniform_many(draws)  # = torch_uniform per tensor, from one threefry call
        return {name: {"kernel": values[2 * i], "bias": values[2 * i + 1]} for i, name in enumerate(layers)}

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


# ----------------------------------------------------------------------------- Flax adapters


def _plain(tree: Any) -> Any:
    """Mappings (dict, FrozenDict, nnx State) -> plain nested dicts; other leaves as they are."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


@dataclasses.dataclass(frozen=True)
class LinenTarget:
    """A `flax.linen` module as a `Target`; params are its 'params' collection (a plain dict).

    Hashable when the module is (linen modules are dataclasses); the sample input is kept as a
    shape and dtype only.
    """

    module: Any                  # flax.linen.Module
    input_shape: tuple[int, ...]  # shape of the sample input, batch dim included
    input_dtype: str = "float32"

    def init(self, key: jax.Array) -> Params:
        """The module's own initialisers: `module.init(key, zeros(input_shape))['params']`."""
        return _plain(self.module.init(key, jnp.zeros(self.input_shape, self.input_dtype))["params"])

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, x)


def from_linen(module: Any, sample_input: jax.Array) -> LinenTarget:
    """Wrap a `flax.linen.Module` whose only variables are 'params' (sample_input: (B, ...)).

    Modules with other collections (batch_stats, mutable state) are refused: the federated loop
    carries parameters only, so their state would be silently dropped. So are modules that draw
    random numbers when applied (RNG streams, e.g. `nn.Dropout(deterministic=False)`): a target's
    `apply(params, x)` gets no key. Both are checked here, by tracing init and apply (no compute).
    """
    from flax.errors import InvalidRngError
    sample = jax.ShapeDtypeStruct(tuple(sample_input.shape), sample_input.dtype)
    variables = jax.eval_shape(module.init, jax.random.key(0), sample)
    other = sorted(set(variables) - {"params"})
    if other:
        raise ValueError(f"from_linen: {type(module).__name__} has variable collections {other} besides "
                         "'params'; only stateless modules (no batch_stats / mutable state) can be targets")
    try:
        jax.eval_shape(module.apply, {"params": variables["params"]}, sample)
    except InvalidRngError as e:
        raise ValueError(f"from_linen: {type(module).__name__} draws random numbers when applied ({str(e).split(' (')[0]}); "
                         "a target's apply(params, x) gets no PRNG key: make it deterministic (e.g. "
                         "nn.Dropout(..., deterministic=True)) or drop the RNG stream") from None
    return LinenTarget(module, sample.shape, jnp.dtype(sample.dtype).name)


@dataclasses.dataclass(frozen=True, eq=False)
class _Constant:
    """Holds a pytree of arrays inside a hashable dataclass; equal only to itself."""

    value: Any


@dataclasses.dataclass(frozen=True)
class NNXTarget:
    """A `flax.nnx` model as a `Target`; params are its `nnx.Param` state as a plain nested dict.

    init(key): with a factory, the params of a fresh `factory(nnx.Rngs(key))` (keyed, like
    ConvNet); with a model, the KEY IS IGNORED and the model's own initial params are returned,
    so every client's private part (pFedHN-PC) starts from the same values.
    apply(params, x): `nnx.merge(graphdef, params)(x)`, a fresh module per call (pure).
    """

    graphdef: Any                            # nnx.GraphDef (hashable)
    initial: _Constant | None = None         # the wrapped model's params, without a factory
    factory: Callable[..., Any] | None = None  # rngs -> model

    def init(self, key: jax.Array) -> Params:
        if self.factory is None:
            return self.initial.value
        from flax import nnx
        return _nnx_params(self.factory(nnx.Rngs(key)))[1]

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        from flax import nnx
        return nnx.merge(self.graphdef, params)(x)


def _nnx_params(model: Any) -> tuple[Any, Params]:
    """model -> (graphdef, its nnx.Param values as a plain dict); refuses any other state."""
    from flax import nnx
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        kinds = sorted({type(v).__name__ for _, v in nnx.to_flat_state(rest)})
        raise ValueError(f"from_nnx: {type(model).__name__} has state besides nnx.Param ({kinds}); only "
                         "stateless models (no BatchNorm stats, RNG streams or other variables) can be targets")
    return graphdef, _plain(nnx.to_pure_dict(params))


def from_nnx(model: Any) -> NNXTarget:
    """Wrap a `flax.nnx` model, or a factory `rngs -> model` (then `init(key)` uses the key).

    The model's state must be `nnx.Param` only; `init` of a wrapped model ignores its key (see
    `NNXTarget`). Pass a factory, e.g. `from_nnx(lambda rngs: Net(rngs=rngs))`, for keyed init.
    """
    from flax import nnx
    if isinstance(model, nnx.Module):
        graphdef, params = _nnx_params(model)
        return NNXTarget(graphdef, initial=_Constant(params))
    if not callable(model):
        raise TypeError(f"from_nnx: expected an nnx.Module or a factory rngs -> Module, got {type(model).__name__}")
    graphdef, _ = _nnx_params(model(nnx.Rngs(0)))
    return NNXTarget(graphdef, factory=model)
