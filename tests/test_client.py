"""local_update against a plain Python loop in float64, and every execution strategy against each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax import client, optim


def _batches(target, n=40, seed=0, dtype=None):
    rng = np.random.default_rng(seed)  # NumPy draws: no compiled sampler per shape
    x = jnp.asarray(rng.normal(size=(n,) + target.input_shape), dtype or jnp.float64)
    y = jnp.asarray(rng.integers(0, target.n_classes, n), jnp.int32)
    return x, y


def _batch_fn(x, y, b=8):
    def fn(key):
        idx = jax.random.choice(key, x.shape[0], (b,), replace=False)
        return x[idx], y[idx], jnp.ones(b, bool)
    return fn


def _reference_loop(target, params, batch_fn, key, steps, lr, momentum, wd, clip):
    """The reference inner loop, written out: clip_grad_norm_, then SGD with weight decay and momentum."""
    loss = lambda p, x, y: client.masked_cross_entropy(target.apply(p, x), y, jnp.ones(len(y), bool))
    grad = jax.jit(jax.value_and_grad(loss))  # one program instead of one per op; the update below is NumPy
    p = jax.tree.map(np.asarray, params)
    buf = None
    losses = []
    for k in jax.random.split(key, steps):
        x, y, _ = batch_fn(k)
        l, g = grad(p, x, y)
        losses.append(float(l))
        g = jax.tree.map(np.asarray, g)
        norm = np.sqrt(sum(np.sum(a ** 2) for a in jax.tree.leaves(g)))
        coef = min(1.0, clip / (norm + 1e-6))
        d = jax.tree.map(lambda gg, pp: gg * coef + wd * pp, g, p)
        buf = d if buf is None else jax.tree.map(lambda b_, d_: momentum * b_ + d_, buf, d)
        p = jax.tree.map(lambda pp, b_: pp - lr * b_, p, buf)
    return p, np.mean(losses)


@pytest.mark.parametrize("clip", [50.0, 0.2])
def test_local_update_equals_python_loop_float64(tiny_target, clip):
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), tiny_target.init(jax.random.key(0)))
        x, y = _batches(tiny_target)
        fn = _batch_fn(x, y)
        opt = optim.torch_sgd(0.05, 0.9, 1e-3, clip)
        noop = optim.torch_sgd(0.05, 0.9, 1e-3)
        res = client.local_update(tiny_target.apply, params, {}, noop.init({}), fn, jax.random.key(5), 6, opt, noop)
        want, want_loss = _reference_loop(tiny_target, params, fn, jax.random.key(5), 6, 0.05, 0.9, 1e-3, clip)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), res.theta, want)
        np.testing.assert_allclose(res.loss, want_loss, rtol=1e-10)


def test_fresh_optimizer_state_every_round(tiny_target):
    """Two rounds of K steps differ from one run of 2K steps: momentum restarts each round."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), tiny_target.init(jax.random.key(0)))
        x, y = _batches(tiny_target)
        fixed = lambda k: (x[:8], y[:8], jnp.ones(8, bool))
        opt = optim.torch_sgd(0.05, 0.9)
        run = lambda p, k: client.local_update(tiny_target.apply, p, {}, opt.init({}), fixed, jax.random.key(0), k, opt, opt).theta
        two_rounds = run(run(params, 3), 3)
        one_round = run(params, 6)
        diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(two_rounds), jax.tree.leaves(one_round)))
        assert diff > 1e-6


def test_mask_excludes_padding(tiny_target):
    p = tiny_target.init(jax.random.key(0))
    x, y = _batches(tiny_target, 8, dtype=jnp.float32)
    logits = tiny_target.apply(p, x)
    mask = jnp.arange(8) < 5
    np.testing.assert_allclose(client.masked_cross_entropy(logits, y, mask),
                               client.masked_cross_entropy(logits[:5], y[:5], jnp.ones(5, bool)), rtol=1e-6)


def test_strategies_give_the_same_numbers(tiny_target):
    x, y = _batches(tiny_target, dtype=jnp.float32)
    opt = optim.torch_sgd(0.05, 0.9, 5e-5, 50.0)
    keys = jax.random.split(jax.random.key(1), 3)
    thetas = jax.vmap(tiny_target.init)(jax.random.split(jax.random.key(2), 3))

    def one(th, k):
        return client.local_update(tiny_target.apply, th, {}, opt.init({}), _batch_fn(x, y), k, 4, opt, opt)

    outs = {s: jax.jit(lambda a, b, s=s: client.run_clients(one, (a, b), s))(thetas, keys)
            for s in ("vmap", "map", "loop")}
    for s in ("map", "loop"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), outs[s], outs["vmap"])
    assert client.resolve_strategy("auto", 1) in ("loop", "vmap")
    with pytest.raises(ValueError, match="strategy"):
        client.resolve_strategy("pmap", 1)
