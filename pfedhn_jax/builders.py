"""Config -> the pieces of a run: target, algorithm, device-resident data (XLA policy: `xla`).

The one place where flags become objects; the dataset-specific parts come from the registry.
"""

from __future__ import annotations

from typing import Sequence

from pfedhn_jax.algorithms import spec as algorithm_spec
from pfedhn_jax.config import Config
from pfedhn_jax.data.federated import FederatedData, SplitSummary, to_device
from pfedhn_jax.data.registry import spec
from pfedhn_jax.xla import resolve_conv_impl


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
