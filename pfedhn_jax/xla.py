"""XLA and precision policy: the compiler options, the convolution and the matmul precision our
programs use, chosen per backend by measurement (benchmarks/RESULTS.md), and a per-process cache
of jitted functions built with them. No dependence on algorithms or data.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, ContextManager

import jax

from pfedhn_jax.client import resolve_strategy
from pfedhn_jax.config import Config

def resolve_conv_impl(cfg: Config, vmapped: bool = False) -> str:
    """The convolution for cfg's target (`pfedhn_jax.layers`). 'auto': lax.conv off CPU; on CPU,
    measured (benchmarks/RESULTS.md), lax.conv with the NHWC VJP when each client's local loop runs
    on its own, im2col when local loops are vmapped (runs of a program under `vmap`, or the step's
    clients), where per-client kernels make lax.conv a grouped convolution.
    """
    if cfg.conv_impl != "auto":
        return cfg.conv_impl
    if jax.default_backend() != "cpu":
        return "xla"
    vmapped = vmapped or resolve_strategy(cfg.strategy, cfg.clients_per_step) == "vmap"
    return "im2col" if vmapped else "nhwc_vjp"


def compiler_options() -> dict[str, str | bool]:
    """XLA options for our jitted programs, chosen per backend by measurement (benchmarks/RESULTS.md).

    On CPU: XLA's YNNPACK fusions slow the small-batch training step down (im2col step 51 local
    steps/s with them off on a 2-core EPYC); and XLA's older fusion code generator compiles the
    default CIFAR-10 step in 7.6 s instead of 11.1 s, with the same step time (1.9 s). Both are
    switched off only where the user's XLA_FLAGS do not set them.
    """
    if jax.default_backend() != "cpu":
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    opts: dict[str, str | bool] = {}
    if "ynn_fusion" not in flags:
        opts["xla_cpu_experimental_ynn_fusion_type"] = ""
    if "fusion_emitters" not in flags:
        opts["xla_cpu_use_fusion_emitters"] = False
    return opts


def init_compiler_options() -> dict[str, str | bool]:
    """XLA options for the one-off initialisation program: on CPU, LLVM optimisation level 1.

    The initialiser runs once, so its compile time is what counts; level 1 compiled the earlier
    per-tensor initialiser 2-3x faster than the default, with bit-identical values (measured on
    this project's CPU for the tiny test config and the default CIFAR-10 / N=50 one). A level set
    in XLA_FLAGS wins, as for every other program.
    """
    if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return compiler_options()
    return {**compiler_options(), "xla_backend_optimization_level": "1"}


def matmul_precision(cfg: Config) -> ContextManager:
    """The context to trace cfg's programs in: `jax.default_matmul_precision(cfg.matmul_precision)`.

    'float32' (the default) keeps every matmul and convolution in float32, as the reference
    computes; on CPU it changes nothing (same programs, same numbers, same speed: measured). On
    NVIDIA GPUs XLA's own default is TensorFloat-32 and on TPUs bfloat16 passes (docs/reference.md
    §9); 'default' leaves JAX's setting (e.g. $JAX_DEFAULT_MATMUL_PRECISION) as it is.
    """
    if cfg.matmul_precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(cfg.matmul_precision)


def at_precision(cfg: Config, fn: Callable) -> Callable:
    """fn, traced under `matmul_precision(cfg)` whoever jits it (the precision goes into the program)."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with matmul_precision(cfg):
            return fn(*args, **kwargs)
    return traced



@functools.cache
def jit(fn: Callable, static_argnames: tuple[str, ...] = ()) -> Callable:
    """`fn` jitted once per process with `compiler_options()` (the novel-client fit, fine-tuning)."""
    return jax.jit(fn, static_argnames=static_argnames, compiler_options=compiler_options())
