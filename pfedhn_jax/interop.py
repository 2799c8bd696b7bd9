"""Conversion to and from the reference's PyTorch layout (numpy only, no torch import).

Our layout (`pfedhn_jax.targets`): conv kernels HWIO, dense kernels (in, out), features
flattened in (H, W, C) order. The reference's layout: conv weights OIHW, dense weights
(out, in), features flattened in NCHW's (C, H, W) order. Target layer `convK` / `fcK` has the
PyTorch names `convK.weight` / `convK.bias` / `fcK.weight` / `fcK.bias`.

The reference hypernetwork (`CNNHyper`) emits each target tensor flattened in PyTorch order,
ours in our order, so a head converts by permuting its output rows. All permutations are
derived from the target's `layer_shapes()` by pushing an `arange` through the same layout
conversion the weights use, so any `targets.ConvNet` works (VALID or SAME, any depth).

    hnet = hypernet_from_torch_state(state)          # config inferred from shapes
    params = from_torch_hypernet(state, hnet)        # torch state_dict -> our params
    state = to_torch_hypernet(params, hnet)          # and back (also for gradients)
    theta_t = generate_torch_layout(params, hnet, i) # {'conv1.weight': (16, 3, 5, 5), ...}
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax.hypernet import HyperNetwork, default_embed_dim
from pfedhn_jax.targets import ConvNet, Params, cifar_cnn

Array = Any  # np.ndarray or jax.Array

# CNNHyper head names: conv1.weight <- c1_weights, fc2.bias <- l2_bias, ...
_HEAD_PREFIX = {"conv": "c", "fc": "l"}
_HEAD_SUFFIX = {"kernel": "weights", "bias": "bias"}
_LEAF_NAME = {"kernel": "weight", "bias": "bias"}


# ----------------------------------------------------------------------------- target layout


@functools.lru_cache(maxsize=None)
def _flat_hwc(target: ConvNet) -> tuple[int, int, int]:
    """(H, W, C) of the feature map that is flattened into the first dense layer."""
    h, w, c = target.input_shape
    for _ in target.conv_channels:
        if target.padding == "VALID":
            h, w = h - target.kernel_size + 1, w - target.kernel_size + 1
        h, w = h // 2, w // 2
    if target.conv_channels:
        c = target.conv_channels[-1]
    fan_in = target.layer_shapes()["fc1"][2]
    if h * w * c != fan_in:  # guards against a drift from `ConvNet.layer_shapes`
        raise ValueError(f"feature map {(h, w, c)} does not match fc1's fan_in {fan_in}")
    return h, w, c


def _permute(x: Array, lead: int, shape: tuple[int, ...], axes: tuple[int, ...], out: tuple[int, ...]) -> Array:
    """Reshape the trailing dims of x to `shape`, transpose them by `axes`, reshape to `out`.

    The `lead` leading (batch) dims are kept; works for numpy and (traced) JAX arrays alike.
    """
    b = x.shape[:lead]
    x = x.reshape(b + shape).transpose(tuple(range(lead)) + tuple(lead + a for a in axes))
    return x.reshape(b + out)


def _kernel_to_torch(k: Array, layer: str, target: ConvNet) -> Array:
    """Our kernel (..., *HWIO or (in, out)) -> PyTorch weight (..., OIHW or (out, in))."""
    kshape = target.layer_shapes()[layer][0]
    lead = k.ndim - len(kshape)
    if layer.startswith("conv"):  # HWIO -> OIHW
        kh, kw, ci, co = kshape
        return _permute(k, lead, kshape, (3, 2, 0, 1), (co, ci, kh, kw))
    n_in, n_out = kshape
    if layer == "fc1":  # (h*w*c, out) -> (out, c*h*w)
        h, w, c = _flat_hwc(target)
        return _permute(k, lead, (h, w, c, n_out), (3, 2, 0, 1), (n_out, n_in))
    return _permute(k, lead, kshape, (1, 0), (n_out, n_in))


def _kernel_from_torch(wt: Array, layer: str, target: ConvNet) -> Array:
    """PyTorch weight (..., OIHW or (out, in)) -> our kernel (..., HWIO or (in, out))."""
    kshape = target.layer_shapes()[layer][0]
    lead = wt.ndim - len(kshape)
    if layer.startswith("conv"):  # OIHW -> HWIO
        kh, kw, ci, co = kshape
        return _permute(wt, lead, (co, ci, kh, kw), (2, 3, 1, 0), kshape)
    n_in, n_out = kshape
    if layer == "fc1":  # (out, c*h*w) -> (h*w*c, out)
        h, w, c = _flat_hwc(target)
        return _permute(wt, lead, (n_out, c, h, w), (2, 3, 1, 0), kshape)
    return _permute(wt, lead, (n_out, n_in), (1, 0), kshape)


def target_to_torch(theta: Params, target: ConvNet) -> dict[str, Array]:
    """Target params {layer: {'kernel', 'bias'}} -> {'conv1.weight': OIHW, 'fc1.weight': (out, in), ...}.

    Layers missing from `theta` (e.g. pFedHN-PC's private head) are skipped. Leaves may carry
    leading batch dims (a batch of clients). Pure array ops: numpy in, numpy out; JAX in, JAX
    out (traceable under jit / vjp).
    """
    out = {}
    for layer, p in theta.items():
        out[f"{layer}.weight"] = _kernel_to_torch(p["kernel"], layer, target)
        out[f"{layer}.bias"] = p["bias"]
    return out


def target_from_torch(state: Mapping[str, Array], target: ConvNet) -> Params:
    """Inverse of `target_to_torch`: PyTorch-named target weights -> our params pytree."""
    layers = [layer for layer in target.layer_shapes() if f"{layer}.weight" in state]
    if set(state) != {f"{layer}.{leaf}" for layer in layers for leaf in ("weight", "bias")}:
        raise ValueError(f"names {sorted(state)} do not match the layers of {target}")
    return {layer: {"kernel": _kernel_from_torch(state[f"{layer}.weight"], layer, target),
                    "bias": state[f"{layer}.bias"]}
            for layer in layers}


# ----------------------------------------------------------------------------- hypernetwork


def _head_name(layer: str, leaf: str) -> str:
    kind, idx = re.fullmatch(r"(conv|fc)(\d+)", layer).groups()
    return f"{_HEAD_PREFIX[kind]}{idx}_{_HEAD_SUFFIX[leaf]}"


@functools.lru_cache(maxsize=None)
def _head_orders(hnet: HyperNetwork) -> dict[tuple[str, str], np.ndarray]:
    """{(layer, leaf): perm}: PyTorch-flat position j holds our-flat element perm[j]."""
    shapes = hnet.target_shapes()
    ours = {layer: {leaf: np.arange(math.prod(s.shape)).reshape(s.shape) for leaf, s in p.items()}
            for layer, p in shapes.items()}
    torch = target_to_torch(ours, hnet.target)
    return {(layer, leaf): torch[f"{layer}.{_LEAF_NAME[leaf]}"].reshape(-1)
            for layer, p in shapes.items() for leaf in p}


def _torch_linear_shapes(hnet: HyperNetwork) -> dict[str, tuple[int, int]]:
    """{Linear name: (in, out)} of every Linear of the reference hypernetwork (ReLUs at odd mlp indices)."""
    dims = [hnet.embedding_dim] + [hnet.hidden_dim] * (hnet.n_hidden + 1)
    out = {f"mlp.{2 * i}": (a, b) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))}
    out.update({_head_name(layer, leaf): (hnet.hidden_dim, len(perm))
                for (layer, leaf), perm in _head_orders(hnet).items()})
    return out


def _check_state(state: Mapping[str, np.ndarray], hnet: HyperNetwork) -> None:
    """Raise unless `state` has exactly the names and shapes of `hnet`'s reference state_dict."""
    shapes = {"embeddings.weight": (hnet.num_clients, hnet.embedding_dim)}
    for k, (n_in, n_out) in _torch_linear_shapes(hnet).items():
        shapes.update({f"{k}.weight": (n_out, n_in), f"{k}.bias": (n_out,)})
    if set(state) != set(shapes):
        raise ValueError(f"state_dict does not match {hnet}: missing {sorted(set(shapes) - set(state))}, "
                         f"unexpected {sorted(set(state) - set(shapes))}")
    for k, shape in shapes.items():
        if state[k].shape != shape:
            raise ValueError(f"{k}: expected shape {shape}, got {state[k].shape}")


def hypernet_from_torch_state(state: Mapping[str, Array], n_classes: int = 10) -> HyperNetwork:
    """Infer the CIFAR `HyperNetwork` config of a reference `CNNHyper` state_dict from its shapes.

    num_clients, embed_dim <- embeddings.weight (N, e); hidden_dim, n_hidden <- mlp.*;
    n_kernels <- c1_bias.weight (n_kernels, hidden); n_classes <- l3_bias.weight
    (n_classes, hidden). A state without `l3_*` heads is pFedHN-PC (private=('fc3',)); its
    classifier is private, so `n_classes` is then taken from the argument.
    """
    num_clients, embed_dim = np.shape(state["embeddings.weight"])
    hidden_dim = np.shape(state["mlp.0.weight"])[0]
    n_hidden = sum(bool(re.fullmatch(r"mlp\.\d+\.weight", k)) for k in state) - 1
    n_kernels = np.shape(state["c1_bias.weight"])[0]
    pc = "l3_bias.weight" not in state
    if not pc:
        n_classes = np.shape(state["l3_bias.weight"])[0]
    return HyperNetwork(
        target=cifar_cnn(n_classes, n_kernels), num_clients=num_clients,
        embed_dim=-1 if embed_dim == default_embed_dim(num_clients) else embed_dim,
        hidden_dim=hidden_dim, n_hidden=n_hidden, private=("fc3",) if pc else ())


def from_torch_hypernet(state: Mapping[str, Array], hnet: HyperNetwork | None = None) -> Params:
    """Reference `CNNHyper` state_dict (numpy arrays, Linear weights (out, in)) -> our params.

    Head rows (PyTorch target order) are permuted into our layout order, so `hnet.apply` then
    generates the same function as the reference. `hnet` defaults to
    `hypernet_from_torch_state(state)`. Exact (pure indexing); dtypes are kept.
    """
    hnet = hypernet_from_torch_state(state) if hnet is None else hnet
    state = {k: np.asarray(v) for k, v in state.items()}
    _check_state(state, hnet)
    heads: dict = {}
    for (layer, leaf), perm in _head_orders(hnet).items():
        name, inv = _head_name(layer, leaf), np.argsort(perm)
        heads.setdefault(layer, {})[leaf] = {"kernel": state[f"{name}.weight"].T[:, inv],
                                             "bias": state[f"{name}.bias"][inv]}
    params = {"embeddings": state["embeddings.weight"],
              "mlp": [{"kernel": state[f"mlp.{2 * i}.weight"].T, "bias": state[f"mlp.{2 * i}.bias"]}
                      for i in range(hnet.n_hidden + 1)],
              "heads": heads}
    return jax.tree.map(np.array, params)  # contiguous copies, not views of `state`


def to_torch_hypernet(params: Params, hnet: HyperNetwork) -> dict[str, np.ndarray]:
    """Our params -> reference `CNNHyper` state_dict names and layouts (numpy).

    Exact inverse of `from_torch_hypernet`. Linear in `params`, so it also maps a gradient
    pytree (e.g. `jax.grad` of a loss) to the gradient w.r.t. the reference's parameters.
    """
    params = jax.tree.map(np.asarray, params)
    state = {"embeddings.weight": params["embeddings"]}
    for i, layer in enumerate(params["mlp"]):
        state[f"mlp.{2 * i}.weight"] = layer["kernel"].T
        state[f"mlp.{2 * i}.bias"] = layer["bias"]
    for (layer, leaf), perm in _head_orders(hnet).items():
        head, name = params["heads"][layer][leaf], _head_name(layer, leaf)
        state[f"{name}.weight"] = head["kernel"][:, perm].T
        state[f"{name}.bias"] = head["bias"][perm]
    return {k: np.array(v, order="C") for k, v in state.items()}  # writable, contiguous copies


def generate_torch_layout(params: Params, hnet: HyperNetwork, client_id: Array) -> dict[str, jax.Array]:
    """theta_i = h(v_i) under the reference names and layouts ('conv1.weight': OIHW, ...).

    client_id: int scalar or (C,) array (leaves then get a leading (C,) dim). jnp ops only,
    so it works under `jax.jit` (hnet static) and `jax.vjp`.
    """
    return target_to_torch(hnet.apply(params, jnp.asarray(client_id)), hnet.target)
