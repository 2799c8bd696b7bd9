import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax.xla import init_compiler_options
from pfedhn_jax.layers import max_pool2
from pfedhn_jax.targets import ConvNet, cifar_cnn, num_params, omniglot_cnn


def test_cifar_cnn_matches_reference_size():
    t = cifar_cnn()
    shapes = jax.tree.map(lambda s: s.shape, t.param_shapes())
    assert shapes["conv1"]["kernel"] == (5, 5, 3, 16) and shapes["conv2"]["kernel"] == (5, 5, 16, 32)
    assert shapes["fc1"]["kernel"] == (800, 120) and shapes["fc3"]["kernel"] == (84, 10)
    assert num_params(t.init(jax.random.key(0))) == 121_182
    assert t.head == "fc3"
    assert num_params(cifar_cnn(100).param_shapes()) == 121_182 + 90 * 85


def test_torch_default_init_bounds():
    p = cifar_cnn().init(jax.random.key(1))
    for name, fan in (("conv1", 75), ("conv2", 400), ("fc1", 800), ("fc2", 120), ("fc3", 84)):
        for leaf in p[name].values():
            bound = 1 / np.sqrt(fan)
            assert float(jnp.abs(leaf).max()) <= bound
            if leaf.size > 100:  # a uniform fills its range
                assert float(jnp.abs(leaf).max()) > 0.9 * bound
                assert abs(float(leaf.std()) - bound / np.sqrt(3)) < 0.1 * bound


@pytest.mark.parametrize("make", [cifar_cnn, lambda **kw: omniglot_cnn(20, **kw)])
@pytest.mark.parametrize("impl", ["im2col", "nhwc_vjp"])
def test_conv_impls_equal_lax_conv(make, impl):  # the paper's targets; each layer's VJP: tests/test_layers.py
    t = make(conv_impl="xla")
    p = jax.jit(t.init, compiler_options=init_compiler_options())(jax.random.key(0))  # one program, not one per op
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3,) + t.input_shape), jnp.float32)
    ref = jax.jit(t.apply)(p, x)
    t2 = dataclasses.replace(t, conv_impl=impl)
    np.testing.assert_allclose(jax.jit(t2.apply)(p, x), ref, rtol=1e-4, atol=1e-5)
    g1 = jax.jit(jax.grad(lambda q: t.apply(q, x).sum()))(p)
    g2 = jax.jit(jax.grad(lambda q: t2.apply(q, x).sum()))(p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), g1, g2)


def test_bfloat16_close_to_float32():
    t = cifar_cnn()
    p = t.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 32, 32, 3)), jnp.float32)
    ref = t.apply(p, x)
    low = dataclasses.replace(t, compute_dtype="bfloat16", conv_impl="im2col").apply(p, x)
    assert low.dtype == jnp.float32
    assert float(jnp.abs(low - ref).max()) < 0.02 * float(jnp.abs(ref).max()) + 1e-3
    assert float(jnp.abs(low - ref).max()) > 0  # really computed in lower precision


def test_max_pool_floor_mode():
    x = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1)
    y = max_pool2(x)
    assert y.shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 8], [16, 18]])


def test_bad_options_and_too_small_input():
    with pytest.raises(ValueError, match="conv_impl"):
        ConvNet(conv_impl="fft")
    with pytest.raises(ValueError, match="too small"):
        ConvNet((8, 8, 1), (4, 4, 4, 4), 3, "SAME", (), 3).param_shapes()
