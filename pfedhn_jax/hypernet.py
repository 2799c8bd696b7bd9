"""The hypernetwork: client embedding -> MLP -> one linear head per target tensor.

theta_i = h(v_i; phi). The heads are derived from the shapes of `target.init`'s output
(`jax.eval_shape`), so any `targets.Target` plugs in: a ConvNet, a Flax module, any pytree of
params. `private` selects the part of the params that is not generated (pFedHN-PC's
client-owned head); `split_params` / `merge_params` cut a params tree into the generated and the
private part and put it back together. Initialisation is PyTorch's default, as in the reference
(docs/reference.md §2): dense weights and biases U(±1/sqrt(fan_in)), embeddings N(0, 1). It sets the
scale of the generated weights, so it matters for accuracy.

Parameters (a plain pytree):
  {'embeddings': (N, e),
   'mlp':   [ {'kernel': (e, H), 'bias': (H,)}, {'kernel': (H, H), 'bias': (H,)} * n_hidden ],
   'heads': generated tree with each leaf s replaced by {'kernel': (H, s.size), 'bias': (s.size,)}}
e.g. for a ConvNet: {layer: {'kernel' | 'bias': {'kernel': (H, numel), 'bias': (numel,)}}}.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping, Union

import jax
import jax.numpy as jnp

from pfedhn_jax.draws import torch_dense_many
from pfedhn_jax.targets import Params, Target

KeyPath = tuple[str, ...]  # the dict keys from the root of a params tree to a leaf, as strings
Private = Union[tuple[str, ...], Callable[[KeyPath], bool]]


def default_embed_dim(num_clients: int) -> int:
    """The reference's embedding size: int(1 + N / 4) (3, 13, 26 for N = 10, 50, 100)."""
    return int(1 + num_clients / 4)


# ----------------------------------------------------------------------------- private selection


def is_private(path: KeyPath, private: Private) -> bool:
    """Whether the leaf at `path` is private.

    private: a predicate on the key path, or a tuple of names. A name without '/' matches a leaf
    if it equals any key of its path ('fc3' matches ('fc3', 'kernel')); a name with '/' is a path
    prefix from the root ('Block_0/Dense_1' matches ('Block_0', 'Dense_1', 'bias')).
    """
    if callable(private):
        return bool(private(path))
    for name in private:
        parts = tuple(name.split("/"))
        if path[:len(parts)] == parts or (len(parts) == 1 and name in path):
            return True
    return False


def _leaf_paths(tree: Params, path: KeyPath = ()) -> list[KeyPath]:
    """Key paths of the leaves of nested dicts (anything but a Mapping is a leaf)."""
    if not isinstance(tree, Mapping):
        return [path]
    return [p for k, v in tree.items() for p in _leaf_paths(v, path + (str(k),))]


def _select(tree: Params, keep: Callable[[KeyPath], bool], path: KeyPath = ()) -> Params:
    """The sub-dict of the leaves whose path `keep` accepts; dicts left empty are dropped."""
    out = {}
    for k, v in tree.items():
        p = path + (str(k),)
        if isinstance(v, Mapping):
            v = _select(v, keep, p)
            if v:
                out[k] = v
        elif keep(p):
            out[k] = v
    return out


def split_params(params: Params, private: Private) -> tuple[Params, Params]:
    """Nested dicts (any depth) -> (generated, private_part); leaves untouched (any leading dims).

    Every leaf goes to exactly one side, under its original keys; dicts left empty are pruned.
    For a ConvNet and private=('fc3',): generated = {'conv1', 'conv2', 'fc1', 'fc2'} (each
    {'kernel', 'bias'}) and private_part = {'fc3': {'kernel', 'bias'}}; private=() gives
    (params, {}). Anything but a Mapping is a leaf. Raises ValueError when a private name matches
    no leaf (a typo would otherwise silently generate that layer).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a (nested) dict, got {type(params).__name__}")
    if not callable(private):
        paths = _leaf_paths(params)
        unused = [n for n in private if not any(is_private(p, (n,)) for p in paths)]
        if unused:
            raise ValueError(f"private names {unused} match no parameter; the parameters are "
                             f"{['/'.join(p) for p in paths]}")
    return (_select(params, lambda p: not is_private(p, private)),
            _select(params, lambda p: is_private(p, private)))


def merge_params(generated: Params, private_part: Params) -> Params:
    """Inverse of `split_params`: the union of two nested dicts, merged recursively.

    Raises ValueError if a leaf is present in both (the two parts must be disjoint).
    """
    out = dict(generated)
    for k, v in private_part.items():
        if k not in out:
            out[k] = v
        elif isinstance(out[k], Mapping) and isinstance(v, Mapping):
            out[k] = merge_params(out[k], v)
        else:
            raise ValueError(f"key {k!r} is in both the generated and the private params")
    return out


# ----------------------------------------------------------------------------- hypernetwork


@functools.lru_cache(maxsize=64)
def _cached_param_shapes(target: Target) -> Params:
    return jax.eval_shape(target.init, jax.random.key(0))


def param_shapes(target: Target) -> Params:
    """ShapeDtypeStructs of `target.init`'s output (cached per target when it is hashable)."""
    try:
        return _cached_param_shapes(target)
    except TypeError:  # an unhashable target: trace its init every time
        return jax.eval_shape(target.init, jax.random.key(0))


def initial_layers(key: jax.Array, num_clients: int, embedding_dim: int, hidden_dim: int, n_hidden: int,
                   head_sizes: list[int]) -> tuple[jax.Array, list[Params], list[Params]]:
    """A hypernetwork's initial weights as the reference draws them: embeddings (num_clients,
    embedding_dim) N(0, 1); the MLP trunk and one Linear head (hidden_dim, n) per head size n,
    PyTorch-default. Returns (embeddings, mlp layers, heads); all Linear layers from one
    threefry call (draws.py), the same numbers as a call per layer."""
    k_emb, k_mlp, k_heads = jax.random.split(key, 3)
    dims = [embedding_dim] + [hidden_dim] * (n_hidden + 1)
    layers = torch_dense_many(jnp.concatenate([jax.random.split(k_mlp, len(dims) - 1),
                                               jax.random.split(k_heads, len(head_sizes))]),
                              list(zip(dims[:-1], dims[1:])) + [(hidden_dim, n) for n in head_sizes])
    embeddings = jax.random.normal(k_emb, (num_clients, embedding_dim))
    return embeddings, layers[:len(dims) - 1], layers[len(dims) - 1:]


@dataclasses.dataclass(frozen=True)
class HyperNetwork:
    """Generates the non-private params of `target` for each client.

    target: any `targets.Target`; only the shapes of `target.init`'s output are used.
    private: the params that are not generated (pFedHN-PC keeps the head private), a tuple of
      names or a predicate on key paths (see `is_private`); a str is taken as one name.
    embed_dim: -1 means the reference's `int(1 + N/4)`.

    The heads follow the generated tree's `jax.tree` flatten order; for a ConvNet this is the
    order (and so the PRNG use) the hypernetwork has always had.
    """

    target: Target
    num_clients: int
    embed_dim: int = -1
    hidden_dim: int = 100
    n_hidden: int = 3
    private: Private = ()

    def __post_init__(self):
        for name, value, low in (("num_clients", self.num_clients, 1), ("hidden_dim", self.hidden_dim, 1),
                                 ("n_hidden", self.n_hidden, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"HyperNetwork: {name} must be an integer >= {low}, got {value!r}")
        if self.embed_dim != -1 and (not isinstance(self.embed_dim, int) or self.embed_dim < 1):
            raise ValueError(f"HyperNetwork: embed_dim must be a positive integer or -1 (int(1 + N/4)), "
                             f"got {self.embed_dim!r}")
        if not (callable(getattr(self.target, "init", None)) and callable(getattr(self.target, "apply", None))):
            raise ValueError(f"HyperNetwork: target must have init(key) and apply(params, x) (see targets.Target), "
                             f"got {type(self.target).__name__}")
        if isinstance(self.private, str):
            object.__setattr__(self, "private", (self.private,))
        elif not callable(self.private):
            object.__setattr__(self, "private", tuple(self.private))
        if self.private and not callable(self.private):
            split_params(self.param_shapes(), self.private)  # a misspelled name fails here, not at init

    @property
    def embedding_dim(self) -> int:
        return default_embed_dim(self.num_clients) if self.embed_dim == -1 else self.embed_dim

    def param_shapes(self) -> Params:
        """ShapeDtypeStructs of the target's full params (generated and private)."""
        return param_shapes(self.target)

    def target_shapes(self) -> Params:
        """ShapeDtypeStructs of the generated part of the target's params."""
        return split_params(self.param_shapes(), self.private)[0]

    def init(self, key: jax.Array) -> Params:
        leaves, treedef = jax.tree.flatten(self.target_shapes())
        embeddings, mlp, heads = initial_layers(key, self.num_clients, self.embedding_dim, self.hidden_dim,
                                                self.n_hidden, [math.prod(s.shape) for s in leaves])
        return {"embeddings": embeddings, "mlp": mlp, "heads": jax.tree.unflatten(treedef, heads)}

    def features(self, params: Params, client_ids: jax.Array) -> jax.Array:
        """client_ids (...,) int -> MLP features (..., hidden_dim)."""
        x = params["embeddings"][client_ids]
        for i, layer in enumerate(params["mlp"]):
            if i:
                x = jax.nn.relu(x)
            x = x @ layer["kernel"] + layer["bias"]
        return x

    def apply(self, params: Params, client_ids: jax.Array) -> Params:
        """client_ids: int scalar or (C,) -> generated params, each leaf (*client_ids.shape, *shape)."""
        client_ids = jnp.asarray(client_ids)
        h = self.features(params, client_ids)
        return jax.tree.map(
            lambda s, head: (h @ head["kernel"] + head["bias"]).reshape(client_ids.shape + s.shape),
            self.target_shapes(), params["heads"])
