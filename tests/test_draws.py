"""draws.uniform_many is bit for bit the separate jax.random.uniform calls it replaces, and the
initialisers built on it (HyperNetwork, ConvNet) give the numbers of one call per tensor
(PyTorch's default init, docs/reference.md §2); HeteroHyperNetwork's equals HyperNetwork's in
test_hetero."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax.draws import uniform_many
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.targets import ConvNet, torch_uniform

SHAPES = [(3,), (2, 5), (1,), (4, 1, 3, 2), (7, 3), (40,)]
BOUNDS = [(-0.5, 0.5), (-1.0, 2.0), (0.0, 1e-3), (-3.0, -1.0), (-0.25, 0.25), (-1.0, 1.0)]


def separate(keys):
    return [jax.random.uniform(k, s, jnp.float32, lo, hi) for k, s, (lo, hi) in zip(keys, SHAPES, BOUNDS)]


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])  # rbg: the fallback, one call per draw
def test_uniform_many_is_the_separate_draws_bit_for_bit(impl):
    keys = jax.random.split(jax.random.key(3, impl=impl), len(SHAPES))
    want = separate(keys)
    draws = [(k, s, lo, hi) for k, s, (lo, hi) in zip(keys, SHAPES, BOUNDS)]
    for got in (uniform_many(draws), jax.jit(lambda ks: uniform_many(
            [(k, s, lo, hi) for k, s, (lo, hi) in zip(ks, SHAPES, BOUNDS)]))(keys)):
        for g, w in zip(got, want):
            assert g.dtype == w.dtype == jnp.float32 and g.shape == w.shape
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert not np.array_equal(want[0], want[4][:3, 0])  # different keys, different numbers


def per_tensor_hypernet_init(hn: HyperNetwork, key):
    """HyperNetwork.init written with one torch_uniform call per tensor (the formula it replaces)."""
    def dense(k, n_in, n_out):
        kw, kb = jax.random.split(k)
        return {"kernel": torch_uniform(kw, (n_in, n_out), n_in), "bias": torch_uniform(kb, (n_out,), n_in)}
    leaves, treedef = jax.tree.flatten(hn.target_shapes())
    k_emb, k_mlp, k_heads = jax.random.split(key, 3)
    dims = [hn.embedding_dim] + [hn.hidden_dim] * (hn.n_hidden + 1)
    return {"embeddings": jax.random.normal(k_emb, (hn.num_clients, hn.embedding_dim)),
            "mlp": [dense(k, a, b) for k, a, b in zip(jax.random.split(k_mlp, len(dims) - 1), dims[:-1], dims[1:])],
            "heads": jax.tree.unflatten(treedef, [dense(k, hn.hidden_dim, math.prod(s.shape)) for k, s in
                                                  zip(jax.random.split(k_heads, len(leaves)), leaves)])}


def test_initialisers_equal_one_draw_per_tensor():
    # a one-conv net: few distinct shapes, so the per-tensor reference compiles few samplers
    target = ConvNet((6, 6, 1), (2,), 3, "VALID", (), 3)
    key = jax.random.key(11)
    for hn in (HyperNetwork(target, 5, embed_dim=3, hidden_dim=7, n_hidden=1),
               HyperNetwork(target, 5, embed_dim=3, hidden_dim=7, n_hidden=1, private=("fc1",))):
        jax.tree.map(np.testing.assert_array_equal, jax.jit(hn.init)(key), per_tensor_hypernet_init(hn, key))
    layers = target.layer_shapes()
    keys = jax.random.split(key, 2 * len(layers))
    want = {name: {"kernel": torch_uniform(keys[2 * i], ks, fan), "bias": torch_uniform(keys[2 * i + 1], bs, fan)}
            for i, (name, (ks, bs, fan)) in enumerate(layers.items())}
    jax.tree.map(np.testing.assert_array_equal, target.init(key), want)
