"""The convolution implementations (`pfedhn_jax.layers`): same values and VJPs as lax.conv's own."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pfedhn_jax import layers
from pfedhn_jax.xla import resolve_conv_impl
from pfedhn_jax.config import Config


def lax_conv(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def assert_same_value_and_vjp(f, ref, x, k, ct):
    """f(x, k) and its VJP at cotangent ct equal ref's, to float64 rounding (one program each)."""
    both = lambda g: jax.jit(lambda x, k, ct: (lambda y, vjp: (y, vjp(ct)))(*jax.vjp(g, x, k)))(x, k, ct)
    (y, grads), (y_ref, grads_ref) = both(f), both(ref)
    assert y.dtype == jnp.float64 and y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):  # d/dx and d/dkernel
        np.testing.assert_allclose(g, g_ref, rtol=1e-11, atol=1e-11)


# (input shape, kernel shape, padding): odd and even kernels, non-square inputs, SAME and VALID
CASES = [((2, 9, 7, 3), (5, 5, 3, 4), "VALID"), ((3, 6, 8, 2), (3, 3, 2, 5), "SAME"),
         ((2, 7, 6, 3), (4, 4, 3, 2), "SAME"), ((2, 6, 5, 1), (2, 2, 1, 3), "VALID")]


@pytest.mark.parametrize("impl", ["nhwc_vjp", "im2col"])
def test_conv_impls_equal_lax_conv_and_its_vjp_in_float64(impl):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for xs, ks, padding in CASES:
            x, k, b = (jnp.asarray(rng.normal(size=s)) for s in (xs, ks, ks[-1:]))
            ref = lambda x, k: lax_conv(x, k, padding) + b
            ct = jnp.asarray(rng.normal(size=jax.eval_shape(ref, x, k).shape))
            assert_same_value_and_vjp(lambda x, k: layers.conv2d(x, k, b, padding, impl), ref, x, k, ct)


def test_nhwc_vjp_gradient_convolutions_are_all_nhwc():
    """The point of 'nhwc_vjp': every convolution of the gradient, in a loop too, is NHWC x HWIO ->
    NHWC (the form XLA:CPU runs with its library kernel); lax.conv's own VJP is not."""
    x, k = jnp.zeros((4, 8, 8, 3)), jnp.zeros((3, 3, 3, 5))

    def dim_labels(impl):
        def loss(k, x):
            return jnp.tanh(layers.conv2d(x, k, 0.0, "VALID", impl)).sum()
        def body(k, x):
            gk, gx = jax.grad(loss, argnums=(0, 1))(k, x)  # both gradient convolutions
            return k - gk - gx.sum(), None
        hlo = jax.jit(lambda k: jax.lax.scan(body, k, jnp.stack([x, x]))[0]).lower(k).as_text()
        return [line.split("dim_numbers = ")[1].split(", window")[0] for line in hlo.splitlines() if "convolution" in line]

    ours, theirs = dim_labels("nhwc_vjp"), dim_labels("xla")
    assert len(ours) == 3 and set(ours) == {"[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"}
    assert len(theirs) == 3 and set(theirs) != set(ours)
    assert dim_labels("auto") == (ours if jax.default_backend() == "cpu" else theirs)  # ConvNet's default


def test_nhwc_vjp_under_vmap_and_scan_equals_xla():
    """Per-client kernels (vmap over the custom VJP) inside a scan: the clients' local loop shape."""
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(2, 3, 4, 10, 10, 2)), jnp.float32)  # (clients, steps, B, H, W, C)
    k0 = jnp.asarray(rng.normal(size=(2, 3, 3, 2, 4)), jnp.float32)

    def local(impl):
        def step(k, x):
            return k - 0.01 * jax.grad(lambda k: jnp.tanh(layers.conv2d(x, k, 0.0, "SAME", impl)).sum())(k), None
        return jax.jit(jax.vmap(lambda k, x: jax.lax.scan(step, k, x)[0]))(k0, xs)

    np.testing.assert_allclose(local("nhwc_vjp"), local("xla"), rtol=1e-5, atol=1e-5)


def test_flax_style_drop_in_equals_lax_in_float64():
    """`layers.conv_general_dilated` called the way flax's Conv calls lax (dimension numbers as
    ConvDimensionNumbers, padding as a string or pairs), and calls it hands back to lax (strided)."""
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x, k = jnp.asarray(rng.normal(size=(2, 7, 8, 3))), jnp.asarray(rng.normal(size=(3, 3, 3, 4)))
        dn = lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
        for strides, padding in (((1, 1), "SAME"), ((1, 1), [(2, 0), (1, 1)]), ((1, 1), "VALID"), ((2, 1), "SAME")):
            f = lambda lib: lambda x, k: lib.conv_general_dilated(x, k, strides, padding, lhs_dilation=(1, 1),
                                                                  rhs_dilation=(1, 1), dimension_numbers=dn)
            ct = jnp.asarray(rng.normal(size=jax.eval_shape(f(lax), x, k).shape))
            assert_same_value_and_vjp(f(layers), f(lax), x, k, ct)


def test_auto_conv_impl_per_backend_and_vmap():
    one = Config()
    assert resolve_conv_impl(dataclasses.replace(one, conv_impl="xla"), vmapped=True) == "xla"
    if jax.default_backend() == "cpu":  # measured choices (benchmarks/RESULTS.md)
        assert resolve_conv_impl(one) == "nhwc_vjp"
        assert resolve_conv_impl(one, vmapped=True) == "im2col"
        assert resolve_conv_impl(dataclasses.replace(one, clients_per_step=4, strategy="vmap")) == "im2col"
        assert resolve_conv_impl(dataclasses.replace(one, clients_per_step=4)) == "nhwc_vjp"  # auto: loop
    else:
        assert resolve_conv_impl(one) == resolve_conv_impl(one, vmapped=True) == "xla"
