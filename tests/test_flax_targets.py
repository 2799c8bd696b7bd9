"""Any target through one interface: Flax linen / nnx modules as targets, private selection by
name or predicate, split / merge of nested params, and replaying a given client order.

The Flax CNNs below have the tiny ConvNet's structure and layouts (HWIO kernels, (in, out) dense,
(H, W, C) flatten), so with the same weights they compute the same function; their parameter
trees differ only in names, and the names sort in the same order, so the hypernetwork's heads
(created in flatten order) line up leaf for leaf. A pFedHN run with a Flax target must then give
ConvNet's numbers: any mistake in head order, key use, merging or private selection breaks that.
"""

from __future__ import annotations

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

from pfedhn_jax import layers  # noqa: E402
from pfedhn_jax.algorithm import PFedHN  # noqa: E402
from pfedhn_jax.xla import init_compiler_options  # noqa: E402
from pfedhn_jax.data.federated import FederatedData, pad_clients  # noqa: E402
from pfedhn_jax.hypernet import HyperNetwork, merge_params, split_params  # noqa: E402
from pfedhn_jax.targets import ConvNet, Target, from_linen, from_nnx  # noqa: E402

N, STEPS = 4, 3
CONVNET = ConvNet((10, 10, 3), (3, 4), 3, "VALID", (6, 5), 4)
# ConvNet layer -> the Flax modules' names for it (both orders sorted the same way)
LINEN_NAMES = {"conv1": "Conv_0", "conv2": "Conv_1", "fc1": "Dense_0", "fc2": "Dense_1", "fc3": "Dense_2"}
NNX_NAMES = {"conv1": "c1", "conv2": "c2", "fc1": "d1", "fc2": "d2", "fc3": "out"}
PRIVATE = {"pfedhn": (), "pfedhn-pc": ("fc3",)}


class LinenCNN(nn.Module):
    """The tiny ConvNet in linen (auto names Conv_0, Conv_1, Dense_0, Dense_1, Dense_2), with the
    CPU-friendly convolution hook (pfedhn_jax.layers); the nnx model below uses lax's own."""

    @nn.compact
    def __call__(self, x):
        for ch in (3, 4):
            conv = nn.Conv(ch, (3, 3), padding="VALID", conv_general_dilated=layers.conv_general_dilated)
            x = nn.max_pool(nn.relu(conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for f in (6, 5):
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(4)(x)


class NNXCNN(nnx.Module):
    """The tiny ConvNet in nnx (attributes c1, c2, d1, d2, out)."""

    def __init__(self, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(3, 3, (3, 3), padding="VALID", rngs=rngs)
        self.c2 = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)
        self.d1, self.d2, self.out = nnx.Linear(4, 6, rngs=rngs), nnx.Linear(6, 5, rngs=rngs), nnx.Linear(5, 4, rngs=rngs)

    def __call__(self, x):
        for conv in (self.c1, self.c2):
            x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.out(nnx.relu(self.d2(nnx.relu(self.d1(x)))))


LINEN = from_linen(LinenCNN(), jnp.zeros((1, 10, 10, 3)))
NNX = from_nnx(lambda rngs: NNXCNN(rngs))


def rename(tree, names):
    """Rename the top-level keys of a ConvNet-layout tree (target params or hypernetwork heads)."""
    return {names[k]: v for k, v in tree.items()}


def rename_hnet(params, names):
    return {**params, "heads": rename(params["heads"], names)}


def tiny_data() -> FederatedData:
    """12 random 10x10x3 uint8 images per client, split 8 / 2 / 2."""
    rng = np.random.default_rng(0)
    m = 12 * N
    x = jnp.asarray(rng.integers(0, 256, (m, 10, 10, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 4, m).astype(np.int32))
    ix = [np.arange(12 * i, 12 * (i + 1)) for i in range(N)]
    return FederatedData(x, y, jnp.full(3, 0.5), jnp.full(3, 0.25), pad_clients([i[:8] for i in ix]),
                         pad_clients([i[8:10] for i in ix]), pad_clients([i[10:] for i in ix]))


def make_alg(target, private) -> PFedHN:
    return PFedHN(HyperNetwork(target, N, embed_dim=3, hidden_dim=16, n_hidden=1, private=private),
                  inner_steps=2, batch_size=4, clients_per_step=2)


def initial_state(alg: PFedHN):
    """alg.init(key(0)) as one program (bit-identical to eager, and far faster than compiling each
    random initialiser on its own)."""
    return jax.jit(alg.init, compiler_options=init_compiler_options())(jax.random.key(0))


def run(alg: PFedHN, state, data):
    """STEPS outer steps: (final state, per-step metrics)."""
    step, metrics = jax.jit(alg.step), []
    for _ in range(STEPS):
        state, m = step(data, state)
        metrics.append(m)
    return state, metrics


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def references(data):
    """The ConvNet runs the Flax runs must reproduce, made on first use:
    variant -> (alg, initial state, final state, metrics)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            alg = make_alg(CONVNET, PRIVATE[variant])
            s0 = initial_state(alg)
            cache[variant] = (alg, s0) + run(alg, s0, data)
        return cache[variant]

    return get


# ----------------------------------------------------------------------------- the interface


def test_targets_satisfy_the_protocol_and_are_hashable():
    for t in (CONVNET, LINEN, NNX, from_nnx(NNXCNN(nnx.Rngs(0)))):
        assert isinstance(t, Target)
        hash(HyperNetwork(t, N))  # static-friendly: usable as a jit static argument
    assert LINEN == from_linen(LinenCNN(), jnp.ones((1, 10, 10, 3)))
    assert not isinstance(object(), Target)


def test_importing_targets_does_not_import_flax():
    code = "import sys, pfedhn_jax.targets; assert not [m for m in sys.modules if m.startswith('flax')]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_linen_cnn_computes_the_convnet_with_mapped_weights():
    p = CONVNET.init(jax.random.key(1))
    chex.assert_trees_all_equal_shapes_and_dtypes(LINEN.init(jax.random.key(0)), rename(p, LINEN_NAMES))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 10, 10, 3)), jnp.float32)
    ref = CONVNET.apply(p, x)
    np.testing.assert_allclose(LINEN.apply(rename(p, LINEN_NAMES), x), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(NNX.apply(rename(p, NNX_NAMES), x), ref, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(ref).max()) > 1e-2  # not a degenerate comparison


def test_stateful_modules_are_refused():
    class WithBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True)(x)

    class NNXWithBN(nnx.Module):
        def __init__(self, rngs):
            self.bn = nnx.BatchNorm(3, rngs=rngs)

    class WithDropout(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dropout(0.5, deterministic=False)(nn.Dense(2)(x))

    with pytest.raises(ValueError, match="batch_stats"):
        from_linen(WithBN(), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"draws random numbers when applied .*deterministic=True"):
        from_linen(WithDropout(), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="BatchStat"):
        from_nnx(NNXWithBN(nnx.Rngs(0)))


def test_nnx_init_uses_the_key_only_with_a_factory():
    model = NNXCNN(nnx.Rngs(3))
    fixed = from_nnx(model)
    want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    chex.assert_trees_all_equal(fixed.init(jax.random.key(0)), fixed.init(jax.random.key(1)), want)
    a, b = NNX.init(jax.random.key(0)), NNX.init(jax.random.key(1))
    chex.assert_trees_all_equal_structs(a, want)
    assert not np.array_equal(a["c1"]["kernel"], b["c1"]["kernel"])
    chex.assert_trees_all_equal(a, NNX.init(jax.random.key(0)))


# ----------------------------------------------------------------------------- private selection


def nested_params():
    """A three-level tree, as a linen module with a sub-module gives."""
    leaf = lambda *s: jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s)
    return {"Block_0": {"Dense_0": {"kernel": leaf(2, 3), "bias": leaf(3)},
                        "Dense_1": {"kernel": leaf(3, 3), "bias": leaf(3)}},
            "Dense_1": {"kernel": leaf(3, 2), "bias": leaf(2)},
            "scale": leaf(1)}


def test_split_by_name_prefix_and_predicate_agree_and_merge_back():
    params = nested_params()
    by_name = split_params(params, ("Dense_1",))  # any key of the path: both Dense_1's
    by_pred = split_params(params, lambda path: "Dense_1" in path)
    chex.assert_trees_all_equal(by_name, by_pred)
    gen, priv = by_name
    assert set(gen) == {"Block_0", "scale"} and set(gen["Block_0"]) == {"Dense_0"}
    assert set(priv) == {"Block_0", "Dense_1"} and set(priv["Block_0"]) == {"Dense_1"}
    # a '/' path is a prefix from the root: only the nested Dense_1
    gen, priv = split_params(params, ("Block_0/Dense_1",))
    chex.assert_trees_all_equal(priv, split_params(params, lambda p: p[:2] == ("Block_0", "Dense_1"))[1])
    chex.assert_trees_all_equal(priv, {"Block_0": {"Dense_1": params["Block_0"]["Dense_1"]}})
    assert "Dense_1" in gen and set(gen["Block_0"]) == {"Dense_0"}
    # empty subtrees are pruned, and every split merges back to the same tree
    for private in ((), ("Block_0",), ("Dense_1",), ("Block_0/Dense_1", "scale"), lambda p: p[-1] == "bias"):
        gen, priv = split_params(params, private)
        empty = lambda x: isinstance(x, dict) and not x
        subtrees = list(gen.values()) + list(priv.values())  # the top level may be {}, nothing below
        assert not any(empty(x) for x in jax.tree.leaves(subtrees, is_leaf=empty))
        chex.assert_trees_all_equal(merge_params(gen, priv), params)
        chex.assert_trees_all_equal(merge_params(priv, gen), params)
        assert len(jax.tree.leaves(gen)) + len(jax.tree.leaves(priv)) == 7
    chex.assert_trees_all_equal(split_params(params, ("Block_0",))[0],
                                {"Dense_1": params["Dense_1"], "scale": params["scale"]})
    with pytest.raises(ValueError, match="match no parameter"):
        split_params(params, ("Dense_7",))
    with pytest.raises(ValueError, match="both"):
        merge_params(params, {"Block_0": {"Dense_0": {"bias": jnp.zeros(3)}}})


def test_hypernetwork_private_by_name_or_predicate():
    by_name = HyperNetwork(LINEN, N, hidden_dim=8, private=("Dense_2",))
    by_pred = HyperNetwork(LINEN, N, hidden_dim=8, private=lambda path: path[0] == "Dense_2")
    p = by_name.init(jax.random.key(0))
    chex.assert_trees_all_equal(p, by_pred.init(jax.random.key(0)))
    assert set(p["heads"]) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1"}
    assert HyperNetwork(LINEN, N, private="Dense_2") == HyperNetwork(LINEN, N, private=("Dense_2",))
    with pytest.raises(ValueError, match="match no parameter"):
        HyperNetwork(LINEN, N, private=("fc3",)).init(jax.random.key(0))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant", list(PRIVATE))
def test_linen_target_trains_to_the_convnet_numbers(variant, references, data):
    _, ref_s0, ref_s, ref_metrics = references(variant)
    private = tuple(LINEN_NAMES[n] for n in PRIVATE[variant])
    alg = make_alg(LINEN, private)
    s0 = initial_state(alg)
    # same hypernetwork, leaf for leaf (heads created in the same order with the same keys)
    chex.assert_trees_all_equal(s0.server.params, rename_hnet(ref_s0.server.params, LINEN_NAMES))
    theta, generated = alg.hnet.apply(s0.server.params, 3), split_params(LINEN.init(jax.random.key(0)), private)[0]
    chex.assert_trees_all_equal_shapes_and_dtypes(theta, generated)  # exactly the module's tree (minus private)
    assert set(generated) == set(LINEN_NAMES.values()) - set(private)
    # the private heads start from ConvNet's (the initialisers differ: torch-uniform vs lecun-normal)
    s0 = s0._replace(clients=s0.clients._replace(private=rename(ref_s0.clients.private, LINEN_NAMES)))
    s, metrics = run(alg, s0, data)
    for m, r in zip(metrics, ref_metrics):
        np.testing.assert_array_equal(m.client_ids, r.client_ids)
        np.testing.assert_allclose(m.loss, r.loss, rtol=1e-5)
        np.testing.assert_allclose(m.delta_norm, r.delta_norm, rtol=1e-4)
    want = rename_hnet(ref_s.server.params, LINEN_NAMES)
    chex.assert_trees_all_close(s.server.params, want, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(s.clients.private, rename(ref_s.clients.private, LINEN_NAMES), rtol=1e-5, atol=1e-6)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ref_s.server.params),
                                                             jax.tree.leaves(ref_s0.server.params)))
    assert moved > 1e-4  # training moved φ far beyond the tolerance: the comparison can fail
    if private:
        check_pc_keeps_the_last_dense_private(alg, s0, s, metrics)


def check_pc_keeps_the_last_dense_private(alg, s0, s, metrics):
    """pFedHN-PC with a linen target: Dense_2 is never generated, lives on the clients, is theirs."""
    full = LINEN.init(jax.random.key(0))
    assert set(s.clients.private) == {"Dense_2"} and "Dense_2" not in s.server.params["heads"]
    chex.assert_trees_all_equal_shapes(s.clients.private, jax.tree.map(lambda a: jnp.zeros((N,) + a.shape),
                                                                          {"Dense_2": full["Dense_2"]}))
    # each client's head starts from its own values and moves only when the client trains
    head = lambda state, c: state.clients.private["Dense_2"]["kernel"][c]
    assert not np.array_equal(head(s0, 0), head(s0, 1))
    trained = set(np.concatenate([np.asarray(m.client_ids) for m in metrics]).tolist())
    for c in range(N):
        assert np.array_equal(head(s, c), head(s0, c)) == (c not in trained)
    personal = alg.personal_params(s, jnp.arange(N))
    chex.assert_trees_all_equal_structs(personal, full)
    chex.assert_trees_all_equal(personal["Dense_2"], s.clients.private["Dense_2"])


def test_nnx_target_trains_to_the_convnet_numbers(references, data):
    _, _, ref_s, ref_metrics = references("pfedhn")
    alg = make_alg(NNX, ())
    s0 = initial_state(alg)
    theta = alg.hnet.apply(s0.server.params, 1)
    chex.assert_trees_all_equal_shapes_and_dtypes(theta, nnx.to_pure_dict(nnx.state(NNXCNN(nnx.Rngs(0)), nnx.Param)))
    s, metrics = run(alg, s0, data)
    np.testing.assert_allclose(np.stack([m.loss for m in metrics]), np.stack([m.loss for m in ref_metrics]), rtol=1e-5)
    chex.assert_trees_all_close(s.server.params, rename_hnet(ref_s.server.params, NNX_NAMES), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_structs(alg.personal_params(s, jnp.arange(N)), NNX.init(jax.random.key(0)))


# ----------------------------------------------------------------------------- client order


def _key_data(tree):
    return jax.tree.map(lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a, tree)


def test_step_replays_given_client_ids(references, data):
    alg, s0, _, _ = references("pfedhn-pc")  # its private heads show which clients trained
    step = jax.jit(alg.step)
    s1, m1 = step(data, s0)
    sampled = np.asarray(m1.client_ids).tolist()
    # the sampled ids given back: bit-identical to sampling them
    chex.assert_trees_all_equal(_key_data(step(data, s0, m1.client_ids)), _key_data((s1, m1)))
    others = [c for c in range(N) if c not in sampled]  # the two clients not sampled
    s2, m2 = step(data, s0, jnp.array(others, jnp.int32))
    np.testing.assert_array_equal(m2.client_ids, others)
    np.testing.assert_array_equal(jax.random.key_data(s2.key), jax.random.key_data(s1.key))  # same key splits
    heads = lambda s, c: s.clients.private["fc3"]["kernel"][c]
    assert all(not np.array_equal(heads(s2, c), heads(s0, c)) for c in others)
    assert all(np.array_equal(heads(s2, c), heads(s0, c)) for c in sampled)
    with pytest.raises(ValueError, match="shape"):
        alg.step(data, s0, jnp.array([1]))
