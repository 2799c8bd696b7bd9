"""The server update: the VJP against an explicit Jacobian, finite differences, the hand-computed
chain rule, and the optimizer against a hand-written PyTorch-SGD step, all in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.server import ServerState, hyper_optimizer, hypernet_grads, server_update


@pytest.fixture(scope="module")
def setup(tiny_target):
    rng = np.random.default_rng(1)  # NumPy draws: no compiled sampler per shape
    with jax.enable_x64(True):
        h = HyperNetwork(tiny_target, 5, hidden_dim=8, n_hidden=2)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), h.init(jax.random.key(0)))
        ids = jnp.array([3, 1])
        theta = h.apply(params, ids)
        noise = jax.tree.map(lambda a: 0.05 * jnp.asarray(rng.normal(size=a.shape)), theta)
        theta_tilde = jax.tree.map(jnp.add, theta, noise)
        yield h, params, ids, theta, theta_tilde


def test_vjp_equals_explicit_jacobian_transpose_product(setup):
    h, params, ids, theta, theta_tilde = setup
    g = hypernet_grads(h, params, ids, theta_tilde)
    flat_p, unravel = ravel_pytree(params)
    gen = lambda fp: ravel_pytree(h.apply(unravel(fp), ids))[0]
    jac = jax.jit(jax.jacrev(gen))(flat_p)  # (T, P), one program
    cot = (ravel_pytree(theta)[0] - ravel_pytree(theta_tilde)[0]) / len(ids)
    np.testing.assert_allclose(ravel_pytree(g)[0], jac.T @ cot, rtol=1e-10, atol=1e-12)


def test_vjp_matches_finite_differences(setup):
    h, params, ids, theta, theta_tilde = setup
    g = hypernet_grads(h, params, ids, theta_tilde)
    flat_p, unravel = ravel_pytree(params)
    flat_tt = ravel_pytree(theta_tilde)[0]
    loss = lambda fp: 0.5 * jnp.sum((ravel_pytree(h.apply(unravel(fp), ids))[0] - flat_tt) ** 2) / len(ids)
    for seed in range(3):
        d = jnp.asarray(np.random.default_rng(10 + seed).normal(size=flat_p.shape))
        eps = 1e-6
        fd = (loss(flat_p + eps * d) - loss(flat_p - eps * d)) / (2 * eps)
        np.testing.assert_allclose(jnp.dot(ravel_pytree(g)[0], d), fd, rtol=1e-6)


def test_hand_computed_chain_rule(setup):
    h, params, ids, theta, theta_tilde = setup
    g = hypernet_grads(h, params, ids, theta_tilde)
    feats = h.features(params, ids)  # (C, H)
    delta = np.asarray(theta["fc1"]["kernel"] - theta_tilde["fc1"]["kernel"]).reshape(len(ids), -1)
    # theta = feats @ W + b  =>  dW = sum_i feats_i ⊗ delta_i / C,  db = sum_i delta_i / C
    np.testing.assert_allclose(g["heads"]["fc1"]["kernel"]["kernel"], feats.T @ delta / len(ids), rtol=1e-10)
    np.testing.assert_allclose(g["heads"]["fc1"]["kernel"]["bias"], delta.mean(0), rtol=1e-10)
    # only the sampled clients' embedding rows get gradient
    rows = np.abs(np.asarray(g["embeddings"])).sum(1)
    assert (rows[[3, 1]] > 0).all() and (rows[[0, 2, 4]] == 0).all()
    # the sign: a step against g moves theta toward theta_tilde
    step = jax.tree.map(lambda p, gg: p - 1e-3 * gg, params, g)
    dist = lambda p: float(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(h.apply(p, ids)), jax.tree.leaves(theta_tilde))))
    assert dist(step) < dist(params)


def _torch_sgd_reference(params, grads_seq, lr, embed_lr, wd, momentum, clip):
    """PyTorch's clip_grad_norm_ then SGD(momentum, weight_decay) with an embedding group, by hand."""
    p = {k: np.array(v) for k, v in params.items()}
    buf = {}
    for grads in grads_seq:
        norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in grads.values()))
        coef = min(1.0, clip / (norm + 1e-6))
        for k in p:
            d = np.asarray(grads[k]) * coef + wd * p[k]
            buf[k] = d if k not in buf else momentum * buf[k] + d
            p[k] = p[k] - (embed_lr if k == "embeddings" else lr) * buf[k]
    return p


@pytest.mark.parametrize("clip", [50.0, 0.05])
def test_sgd_update_matches_torch_semantics(setup, clip):
    h, params, ids, theta, theta_tilde = setup
    with jax.enable_x64(True):
        opt = hyper_optimizer("sgd", lr=0.1, embed_lr=0.3, weight_decay=1e-2, clip_norm=clip)
        state = ServerState(params, opt.init(params))
        grads_seq = []
        for k in range(3):  # three steps: momentum buffers matter
            tt = jax.tree.map(lambda a: a + 0.01 * (k + 1), h.apply(state.params, ids))
            grads_seq.append(hypernet_grads(h, state.params, ids, tt))
            state = server_update(h, opt, state, ids, tt)
        flat = lambda tree: {jax.tree_util.keystr(kp): v for kp, v in jax.tree_util.tree_leaves_with_path(tree)}
        named = {("embeddings" if "embeddings" in k else k): v for k, v in flat(params).items()}
        seq = [{("embeddings" if "embeddings" in k else k): v for k, v in flat(g).items()} for g in grads_seq]
        want = _torch_sgd_reference(named, seq, 0.1, 0.3, 1e-2, 0.9, clip)
        got = {("embeddings" if "embeddings" in k else k): v for k, v in flat(state.params).items()}
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_adam_option_runs_and_moves_toward_theta_tilde(setup):
    h, params, ids, theta, theta_tilde = setup
    with jax.enable_x64(True):
        opt = hyper_optimizer("adam", lr=1e-3)
        s = server_update(h, opt, ServerState(params, opt.init(params)), ids, theta_tilde)
        d0 = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta_tilde)))
        d1 = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(h.apply(s.params, ids)), jax.tree.leaves(theta_tilde)))
        assert d1 < d0
