"""The hypernetwork: client embedding -> MLP -> one linear head per target tensor.

theta_i = h(v_i; phi). The heads are derived from a target's parameter shapes, so any target
(`pfedhn_jax.targets`) plugs in. Initialisation is PyTorch's default, as in the reference
(REFERENCE.md §2): dense weights and biases U(±1/sqrt(fan_in)), embeddings N(0, 1). It sets the
scale of the generated weights, so it matters for accuracy.

Parameters (a plain pytree):
  {'embeddings': (N, e),
   'mlp':   [ {'kernel': (e, H), 'bias': (H,)}, {'kernel': (H, H), 'bias': (H,)} * n_hidden ],
   'heads': {layer: {'kernel' | 'bias': {'kernel': (H, numel), 'bias': (numel,)}}}}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from pfedhn_jax.targets import Params, torch_uniform


def default_embed_dim(num_clients: int) -> int:
    """The reference's embedding size: int(1 + N / 4) (3, 13, 26 for N = 10, 50, 100)."""
    return int(1 + num_clients / 4)


def _dense_init(key: jax.Array, n_in: int, n_out: int) -> Params:
    kw, kb = jax.random.split(key)
    return {"kernel": torch_uniform(kw, (n_in, n_out), n_in), "bias": torch_uniform(kb, (n_out,), n_in)}


@dataclasses.dataclass(frozen=True)
class HyperNetwork:
    """Generates the weights of `target` (minus the layers in `exclude`) for each client.

    target: a target network (e.g. `targets.cifar_cnn()`); only its `param_shapes()` is used.
    exclude: target layers that are not generated (pFedHN-PC keeps the head private).
    embed_dim: -1 means the reference's `int(1 + N/4)`.
    """

    target: Any
    num_clients: int
    embed_dim: int = -1
    hidden_dim: int = 100
    n_hidden: int = 3
    exclude: tuple[str, ...] = ()

    @property
    def embedding_dim(self) -> int:
        return default_embed_dim(self.num_clients) if self.embed_dim == -1 else self.embed_dim

    def target_shapes(self) -> Params:
        """Shapes (ShapeDtypeStructs) of the generated part of the target's parameters."""
        return {k: v for k, v in self.target.param_shapes().items() if k not in self.exclude}

    def init(self, key: jax.Array) -> Params:
        shapes = self.target_shapes()
        leaves, treedef = jax.tree.flatten(shapes)
        k_emb, k_mlp, k_heads = jax.random.split(key, 3)
        dims = [self.embedding_dim] + [self.hidden_dim] * (self.n_hidden + 1)
        mlp = [_dense_init(k, a, b) for k, a, b in zip(jax.random.split(k_mlp, len(dims) - 1), dims[:-1], dims[1:])]
        heads = [_dense_init(k, self.hidden_dim, math.prod(s.shape))
                 for k, s in zip(jax.random.split(k_heads, len(leaves)), leaves)]
        return {"embeddings": jax.random.normal(k_emb, (self.num_clients, self.embedding_dim)),
                "mlp": mlp,
                "heads": jax.tree.unflatten(treedef, heads)}

    def features(self, params: Params, client_ids: jax.Array) -> jax.Array:
        """client_ids (...,) int -> MLP features (..., hidden_dim)."""
        x = params["embeddings"][client_ids]
        for i, layer in enumerate(params["mlp"]):
            if i:
                x = jax.nn.relu(x)
            x = x @ layer["kernel"] + layer["bias"]
        return x

    def apply(self, params: Params, client_ids: jax.Array) -> Params:
        """client_ids: int scalar or (C,) -> target params, each leaf (*client_ids.shape, *shape)."""
        client_ids = jnp.asarray(client_ids)
        h = self.features(params, client_ids)
        return jax.tree.map(
            lambda s, head: (h @ head["kernel"] + head["bias"]).reshape(client_ids.shape + s.shape),
            self.target_shapes(), params["heads"])
