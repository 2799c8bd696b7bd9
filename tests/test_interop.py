"""PyTorch-layout interop: exact round trips, and agreement with the reference's semantics
(a float64 NumPy re-implementation of the reference forward pass and of `CNNHyper`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax import targets
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.interop import (from_torch_hypernet, generate_torch_layout, hypernet_from_torch_state,
                                target_from_torch, target_to_torch, to_torch_hypernet)

CIFAR = HyperNetwork(targets.cifar_cnn(), num_clients=5, hidden_dim=16)
CIFAR_PC = HyperNetwork(targets.cifar_cnn(), num_clients=5, hidden_dim=16, private=("fc3",))
# Non-square input, SAME padding, odd spatial sizes: exercises the CHW <-> HWC reorder of fc1.
ODD = targets.ConvNet((11, 14, 2), (3, 4), 3, "SAME", (6,), 5)
OMNIGLOT = targets.omniglot_cnn(7, image_size=28)


def rand_init(model, seed):
    """Random params with the structure of `model.init` (NumPy: no per-shape XLA compiles)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return jax.tree.map(lambda s: rng.uniform(-0.3, 0.3, s.shape).astype(np.float32), shapes)


def tree_equal(a, b):
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


# ----------------------------------------------------------------------------- reference (NumPy)


def ref_forward(theta_t, x, padding="VALID"):
    """The reference CNNTarget in float64 NumPy: NCHW input, OIHW conv, (out, in) dense."""
    x = np.asarray(x, np.float64)
    n_conv = sum(k.startswith("conv") and k.endswith(".weight") for k in theta_t)
    n_fc = sum(k.startswith("fc") and k.endswith(".weight") for k in theta_t)
    for i in range(1, n_conv + 1):
        w, b = (np.asarray(theta_t[f"conv{i}.{s}"], np.float64) for s in ("weight", "bias"))
        k = w.shape[-1]
        if padding == "SAME":
            x = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        h, wd = x.shape[2] - k + 1, x.shape[3] - k + 1
        y = sum(np.einsum("nchw,oc->nohw", x[:, :, i:i + h, j:j + wd], w[:, :, i, j])
                for i in range(k) for j in range(k))
        y = np.maximum(y + b[None, :, None, None], 0)
        n, c, h, wd = y.shape
        x = y[:, :, :h // 2 * 2, :wd // 2 * 2].reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    x = x.reshape(x.shape[0], -1)  # (C, H, W) order
    for i in range(1, n_fc + 1):
        x = x @ np.asarray(theta_t[f"fc{i}.weight"], np.float64).T + np.asarray(theta_t[f"fc{i}.bias"], np.float64)
        if i < n_fc:
            x = np.maximum(x, 0)
    return x


TORCH_SHAPES = {"conv1": (16, 3, 5, 5), "conv2": (32, 16, 5, 5), "fc1": (120, 800), "fc2": (84, 120), "fc3": (10, 84)}
HEADS = {"conv1": "c1", "conv2": "c2", "fc1": "l1", "fc2": "l2", "fc3": "l3"}


def random_torch_state(rng, num_clients=5, embed_dim=2, hidden=16, n_hidden=3, pc=False):
    """A CNNHyper state_dict built from the official names and shapes only."""
    s = {"embeddings.weight": rng.normal(size=(num_clients, embed_dim))}
    dims = [embed_dim] + [hidden] * (n_hidden + 1)
    for i in range(n_hidden + 1):
        s[f"mlp.{2 * i}.weight"] = rng.uniform(-1, 1, (dims[i + 1], dims[i])) / np.sqrt(dims[i])
        s[f"mlp.{2 * i}.bias"] = rng.uniform(-1, 1, dims[i + 1]) / np.sqrt(dims[i])
    for layer, shape in TORCH_SHAPES.items():
        if pc and layer == "fc3":
            continue
        for suffix, n in (("weights", int(np.prod(shape))), ("bias", shape[0])):
            s[f"{HEADS[layer]}_{suffix}.weight"] = rng.uniform(-1, 1, (n, hidden)) / np.sqrt(hidden)
            s[f"{HEADS[layer]}_{suffix}.bias"] = rng.uniform(-1, 1, n) / np.sqrt(hidden)
    return {k: v.astype(np.float32) for k, v in s.items()}


def ref_generate(state, i):
    """CNNHyper.forward in float64 NumPy: heads reshaped straight to the PyTorch shapes."""
    h = np.asarray(state["embeddings.weight"][i], np.float64)
    n_mlp = sum(k.startswith("mlp.") and k.endswith(".weight") for k in state)
    for j in range(n_mlp):
        if j:
            h = np.maximum(h, 0)
        h = h @ state[f"mlp.{2 * j}.weight"].T.astype(np.float64) + state[f"mlp.{2 * j}.bias"]
    out = {}
    for layer, shape in TORCH_SHAPES.items():
        if f"{HEADS[layer]}_weights.weight" in state:
            lin = lambda n: h @ state[f"{n}.weight"].T.astype(np.float64) + state[f"{n}.bias"]
            out[f"{layer}.weight"] = lin(f"{HEADS[layer]}_weights").reshape(shape)
            out[f"{layer}.bias"] = lin(f"{HEADS[layer]}_bias")
    return out


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("hnet", [HyperNetwork(targets.cifar_cnn(), num_clients=5), CIFAR_PC],
                         ids=["cifar", "pc"])
def test_hypernet_round_trip_is_exact(hnet):
    params = rand_init(hnet, 0)
    state = to_torch_hypernet(params, hnet)
    assert hypernet_from_torch_state(state) == hnet
    linears = [f"mlp.{i}" for i in (0, 2, 4, 6)] + [f"{HEADS[l]}_{s}" for l in hnet.target_shapes()
                                                    for s in ("weights", "bias")]
    assert set(state) == {"embeddings.weight"} | {f"{n}.{t}" for n in linears for t in ("weight", "bias")}
    for layer in hnet.target_shapes():
        assert state[f"{HEADS[layer]}_weights.weight"].shape == (np.prod(TORCH_SHAPES[layer]), hnet.hidden_dim)
    assert tree_equal(from_torch_hypernet(state, hnet), params)
    assert tree_equal(from_torch_hypernet(state), params)  # config inferred
    assert tree_equal(to_torch_hypernet(from_torch_hypernet(state), hnet), state)


@pytest.mark.parametrize("target", [targets.cifar_cnn(), ODD, OMNIGLOT], ids=["cifar", "odd", "omniglot"])
def test_target_round_trip_is_exact(target):
    theta = rand_init(target, 1)
    theta_t = target_to_torch(theta, target)
    for layer, (ks, _, _) in target.layer_shapes().items():
        oihw = (ks[3], ks[2], ks[0], ks[1]) if layer.startswith("conv") else ks[::-1]
        assert theta_t[f"{layer}.weight"].shape == oihw
    assert tree_equal(target_from_torch(theta_t, target), theta)


@pytest.mark.parametrize("conv_impl", ["xla", "im2col"])
def test_generated_weights_match_reference_forward(conv_impl):
    hnet = dataclasses.replace(CIFAR, target=targets.cifar_cnn(conv_impl=conv_impl))
    params = rand_init(hnet, 2)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3))
    for i in (0, 4):
        theta, theta_t = hnet.apply(params, i), generate_torch_layout(params, hnet, i)
        assert {k: v.shape for k, v in theta_t.items()} == {
            **{f"{l}.weight": s for l, s in TORCH_SHAPES.items()},
            **{f"{l}.bias": s[:1] for l, s in TORCH_SHAPES.items()}}
        ref = ref_forward(theta_t, x.transpose(0, 3, 1, 2))
        with jax.enable_x64(True):
            theta64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), theta)
            ours = jax.jit(hnet.target.apply)(theta64, jnp.asarray(x))
            assert ours.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("target", [ODD, OMNIGLOT], ids=["odd", "omniglot"])
def test_target_layout_matches_reference_forward_same_padding(target):
    theta = rand_init(target, 3)
    x = np.random.default_rng(1).normal(size=(2, *target.input_shape))
    ref = ref_forward(target_to_torch(jax.tree.map(np.asarray, theta), target), x.transpose(0, 3, 1, 2), "SAME")
    with jax.enable_x64(True):
        ours = jax.jit(target.apply)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), theta), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pc", [False, True], ids=["cifar", "pc"])
def test_independent_torch_state_loads_with_reference_semantics(pc):
    state = random_torch_state(np.random.default_rng(2), pc=pc)
    hnet = hypernet_from_torch_state(state)
    assert hnet == HyperNetwork(targets.cifar_cnn(), 5, hidden_dim=16, private=("fc3",) if pc else ())
    assert hnet.embedding_dim == 2
    params = from_torch_hypernet(state)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    # pFedHN-PC: the classifier is a private, client-held layer (here random, in PyTorch layout).
    private = {"fc3.weight": rng.uniform(-0.1, 0.1, (10, 84)).astype(np.float32),
               "fc3.bias": rng.uniform(-0.1, 0.1, 10).astype(np.float32)} if pc else {}
    for i in (1, 3):
        expected = ref_generate(state, i)
        got = generate_torch_layout(params, hnet, i)
        assert set(got) == set(expected) and ("fc3.weight" in got) != pc
        # e.g. fc1.weight straight from the state dict: (mlp features) @ l1_weights.weight.T + bias -> 120 x 800.
        for k in expected:
            np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
        # The comparison above is exact up to the permutation's self-consistency; the semantics are pinned
        # end to end: our NHWC forward on h(v_i) == the reference's NCHW forward on CNNHyper's output.
        theta = {**hnet.apply(params, i), **target_from_torch(private, hnet.target)}
        logits = jax.jit(hnet.target.apply)(theta, x)
        ref = ref_forward({**expected, **private}, x.transpose(0, 3, 1, 2))
        np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_gradient_maps_to_torch_layout_gradient():
    """to_torch_hypernet(grad wrt our params) == grad wrt the reference's (torch-layout) parameters."""
    hnet, i = CIFAR, 2
    params = rand_init(hnet, 4)
    rng = np.random.default_rng(5)
    weights = {f"{l}.{t}": rng.normal(size=s if t == "weight" else s[:1]).astype(np.float32)
               for l, s in TORCH_SHAPES.items() for t in ("weight", "bias")}

    def loss_t(theta_t):  # a nonlinear scalar function of the PyTorch-layout target weights
        return sum(jnp.sum(weights[k] * jnp.tanh(v)) for k, v in theta_t.items())

    def torch_generate(state):  # CNNHyper.forward written against the torch state_dict, in jnp
        h = state["embeddings.weight"][i]
        for j in range(hnet.n_hidden + 1):
            h = (jax.nn.relu(h) if j else h) @ state[f"mlp.{2 * j}.weight"].T + state[f"mlp.{2 * j}.bias"]
        lin = lambda n: h @ state[f"{n}.weight"].T + state[f"{n}.bias"]
        return {**{f"{l}.weight": lin(f"{HEADS[l]}_weights").reshape(s) for l, s in TORCH_SHAPES.items()},
                **{f"{l}.bias": lin(f"{HEADS[l]}_bias") for l in TORCH_SHAPES}}

    grads = jax.jit(jax.grad(lambda p: loss_t(generate_torch_layout(p, hnet, i))))(params)
    got = to_torch_hypernet(grads, hnet)
    state = to_torch_hypernet(params, hnet)
    expected = jax.jit(jax.grad(lambda s: loss_t(torch_generate(s))))(state)
    assert set(got) == set(expected) == set(state)
    for k, g in expected.items():
        g = np.asarray(g)
        assert got[k].shape == g.shape == state[k].shape
        np.testing.assert_allclose(got[k], g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=k)
    # Chain rule on a head, in NumPy: dL/dW_torch = outer(dL/dtheta_t, h), dL/db_torch = dL/dtheta_t.
    theta_t = ref_generate(state, i)
    h = np.asarray(hnet.features(params, i), np.float64)
    g_fc1 = (weights["fc1.weight"] * (1 - np.tanh(theta_t["fc1.weight"]) ** 2)).ravel()
    np.testing.assert_allclose(got["l1_weights.bias"], g_fc1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["l1_weights.weight"], np.outer(g_fc1, h), rtol=1e-4, atol=1e-5)


def test_generate_torch_layout_jit_vjp_and_batched():
    hnet = CIFAR_PC
    params = rand_init(hnet, 6)
    theta = jax.tree.map(np.asarray, jax.jit(hnet.apply)(params, jnp.array([3, 0])))
    expected = target_to_torch(theta, hnet.target)  # the NumPy path, with a leading client dim
    assert expected["conv1.weight"].shape == (2, 16, 3, 5, 5) and "fc3.weight" not in expected
    generate = jax.jit(generate_torch_layout, static_argnums=1)
    single, batched = generate(params, hnet, jnp.int32(3)), generate(params, hnet, jnp.array([3, 0]))
    assert set(single) == set(batched) == set(expected)
    for k in expected:
        # one client is a matrix-vector product, two a matrix product: XLA may sum the 100 hidden
        # features in another order, so float32 rounding (seen: 1.2e-7 on a value of 0.015) is allowed
        np.testing.assert_allclose(single[k], expected[k][0], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(batched[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)

    @jax.jit
    def pullback(params, ct):
        _, vjp = jax.vjp(lambda p: generate_torch_layout(p, hnet, 3), params)
        return vjp(ct)[0]

    rng = np.random.default_rng(7)
    ct = {k: rng.normal(size=v.shape[1:]).astype(np.float32) for k, v in expected.items()}
    g = pullback(params, ct)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    # The head-bias cotangent is the torch-layout cotangent permuted back into our layout.
    ct_ours = target_from_torch(ct, hnet.target)
    for layer in hnet.target_shapes():
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(g["heads"][layer][leaf]["bias"], np.ravel(ct_ours[layer][leaf]))


def test_mismatched_state_is_rejected():
    state = random_torch_state(np.random.default_rng(8))
    hnet = hypernet_from_torch_state(state)
    with pytest.raises(ValueError, match="unexpected"):
        from_torch_hypernet({**state, "extra.weight": np.zeros(1)}, hnet)
    with pytest.raises(ValueError, match="missing"):
        from_torch_hypernet({k: v for k, v in state.items() if k != "l2_bias.bias"}, hnet)
    with pytest.raises(ValueError, match="expected shape"):
        from_torch_hypernet({**state, "l1_weights.weight": state["l1_weights.weight"][:, :-1]}, hnet)
