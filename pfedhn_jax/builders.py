"""Config -> the pieces of a run: target, algorithm, device-resident data, compiler options.

The one place where flags become objects; the dataset-specific parts come from the registry.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, ContextManager, Sequence

import jax

from pfedhn_jax.algorithms import spec as algorithm_spec
from pfedhn_jax.client import resolve_strategy
from pfedhn_jax.config import Config
from pfedhn_jax.data.federated import FederatedData, SplitSummary, to_device
from pfedhn_jax.data.registry import spec
from pfedhn_jax.hypernet import HyperNetwork


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


def build_target(cfg: Config, vmapped: bool = False):
    """The paper's target for the dataset (the LeNet-like CNN for CIFAR, the 4-conv net for Omniglot);
    vmapped: whether its local loops will run under `vmap` (chooses the convolution)."""
    return spec(cfg.dataset).target(cfg, conv_impl=resolve_conv_impl(cfg, vmapped), compute_dtype=cfg.compute_dtype)


def build_algorithm(cfg: Config, vmapped: bool = False):
    """The algorithm record for a config (`algorithms.base.FederatedAlgorithm`), built by its
    registry spec from the dataset's target; vmapped as in `build_target`."""
    return algorithm_spec(cfg.algo).build(cfg, lambda c: build_target(c, vmapped))


def load_data(cfg: Config) -> tuple[FederatedData, SplitSummary, dict]:
    """Raw arrays -> the federated split of `cfg.seed` -> device arrays, plus a JSON-able description."""
    data, splits, descs = load_group_data(cfg, [cfg.seed], stack=False)
    return data, splits[0], descs[0]


def load_group_data(cfg: Config, seeds: Sequence[int], stack: bool = True
                    ) -> tuple[FederatedData, list[SplitSummary], list[dict]]:
    """The source read once, one federated split per seed, device arrays, and each run's description.

    stack: ClientIndex leaves get a leading run axis (R, N, L) (False: one seed, leaves (N, L)).
    The images are stored once whatever the number of runs.
    """
    ds = spec(cfg.dataset)
    unique = list(dict.fromkeys(seeds))  # a sweep and padding runs repeat seeds: split each seed once
    raw, by_seed = ds.load(cfg, unique)
    splits = [by_seed[unique.index(s)] for s in seeds]
    descs = []
    for split in splits:
        counts = {k: [len(ix) for ix in getattr(split, k)] for k in ("train", "val", "test")}
        desc = {"dataset": cfg.dataset, "label": ds.display_name(raw.sha256), "source": raw.source,
                "sha256": raw.sha256, "client_counts": counts}
        if split.assignment is not None:
            desc["client_classes"] = split.assignment.classes.tolist()
            desc["unassigned_train_fraction"] = 1 - sum(counts["train"]) / (len(raw.y_train) - cfg.val_size)
        descs.append(desc)
    return to_device(raw, ds.info(cfg), splits if stack else splits[0], cfg.batch_size), splits, descs
