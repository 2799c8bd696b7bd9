"""Evaluation of every client with its own personal model, and the reference's bookkeeping.

Reported accuracy is POOLED (total correct / total samples over all clients), and the headline
is the test accuracy at the evaluation with the best pooled validation accuracy, with the
per-client min / max / std at that step (docs/reference.md §5).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pfedhn_jax.data.federated import ClientIndex, FederatedData
from pfedhn_jax.targets import Params


class ClientMetrics(NamedTuple):
    correct: jax.Array  # (N,) int32
    total: jax.Array    # (N,) int32
    loss: jax.Array     # (N,) mean cross-entropy over the client's samples


def evaluate_clients(apply_fn: Callable[[Params, jax.Array], jax.Array], params: Params,
                     data: FederatedData, split: ClientIndex, clients_per_batch: int | None = None) -> ClientMetrics:
    """Every client's model on its own samples of `split`. params leaves: (N, ...).

    Clients run through `lax.map`, `clients_per_batch` at a time under `vmap` (None: one at a
    time); padded positions are masked out.
    """
    length = split.index.shape[1]
    n_model, n_data = jax.tree.leaves(params)[0].shape[0], split.count.shape[0]
    if n_model != n_data:
        raise ValueError(f"evaluate: the model has {n_model} clients (e.g. HyperNetwork(num_clients={n_model})) but the "
                         f"data has {n_data} (one per train list given to from_arrays); build both for the same clients")

    def one(args):
        p, index, count = args
        mask = jnp.arange(length) < count
        logits = apply_fn(p, data.images(index))
        y = data.y[index]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = jnp.sum((jnp.argmax(logits, -1) == y) & mask)
        return correct, count, jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(count, 1)

    out = jax.lax.map(one, (params, split.index, split.count), batch_size=clients_per_batch)
    return ClientMetrics(*out)


def summarize(m: ClientMetrics) -> dict:
    """Pooled accuracy, mean per-client loss, and the per-client accuracy spread (host floats)."""
    correct, total, loss = (np.asarray(a, np.float64) for a in m)
    per_client = correct / np.maximum(total, 1)
    return {"acc": float(correct.sum() / total.sum()), "loss": float(loss.mean()),
            "min": float(per_client.min()), "max": float(per_client.max()), "std": float(per_client.std()),
            "per_client": per_client.tolist()}


@dataclasses.dataclass
class BestTracker:
    """Test metrics at the step of best pooled validation accuracy (strictly better replaces)."""

    best_val_acc: float = -1.0
    best_step: int = -1
    test_acc: float = float("nan")
    test_min: float = float("nan")
    test_max: float = float("nan")
    test_std: float = float("nan")
    test_per_client: list = dataclasses.field(default_factory=list)

    def update(self, step: int, val: dict, test: dict) -> bool:
        if not val["acc"] > self.best_val_acc:
            return False
        self.best_val_acc, self.best_step = val["acc"], step
        self.test_acc, self.test_min, self.test_max, self.test_std = (test[k] for k in ("acc", "min", "max", "std"))
        self.test_per_client = list(test["per_client"])
        return True
