"""The one interface every federated algorithm implements, and the per-step metrics it returns.

The run machinery (`programs`, `loop`, `history`, `resume`, `grid`) knows an algorithm only
through `FederatedAlgorithm`, in the spirit of optax's `GradientTransformation(init, update)` and
FedJAX's `FederatedAlgorithm(init, apply)`: pure functions over a pytree state, so R runs batch
into one program (`vmap` / `lax.map` over a leading run axis) and the clients of a round spread
over devices. docs/library.md ("The algorithm interface") and docs/algorithms.md describe it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

from pfedhn_jax.data.federated import ClientIndex, FederatedData
from pfedhn_jax.evaluate import ClientMetrics


class StepMetrics(NamedTuple):
    """What one round reports about each of its C clients (host-checked for divergence)."""

    client_ids: jax.Array   # (C,) int32, the round's clients
    loss: jax.Array         # (C,) mean local training loss of each client
    delta_norm: jax.Array   # (C,) ||w_sent − w_returned||, the size of each client's update


class FederatedAlgorithm(Protocol):
    """A federated algorithm as a frozen dataclass of hyperparameters and pure functions.

    Frozen and hashable: the record is a key of the compiled-program cache. The state is any
    pytree (a NamedTuple); leaves that belong to clients lead with the client axis N. Every
    method is traceable, so `jax.jit(alg.step)` with `data` as an argument is one program.

    clients_per_step: C, the clients of one round (sampled without replacement, or given).
    client_sharding: a `jax.sharding.Sharding` of the client axis, or None; set by the run
      machinery (`dataclasses.replace`) to spread a round's clients over devices.
    learning_rate: the default of the one hyperparameter a runs axis sweeps (`--lr`, `--lrs`);
      it lives in the state, so runs of one program can each have their own
      (`with_learning_rate`); which rate it is (hypernetwork, client, meta) is the algorithm's.
    """

    clients_per_step: int
    client_sharding: Any

    @property
    def learning_rate(self) -> float: ...

    def init(self, key: jax.Array) -> Any:
        """The initial state from one PRNG key (split inside; the same key gives the same state)."""

    def step(self, data: FederatedData, state: Any, client_ids: jax.Array | None = None) -> tuple[Any, StepMetrics]:
        """One round: sample C clients (or take `client_ids`, (C,) int32), train them, update the
        server. The PRNG key is split the same way whether or not ids are given."""

    def evaluate(self, state: Any, data: FederatedData, split: ClientIndex, clients_per_batch: int | None = None,
                 sharding: Any = None) -> ClientMetrics:
        """Every client 0..N-1 with the model it would use, on its own samples of `split`; leaves (N,).
        clients_per_batch / sharding: as `evaluate.evaluate_clients` (speed only)."""

    def with_learning_rate(self, state: Any, lr: Any) -> Any:
        """`state` with another swept learning rate: a scalar, or one per run of a batched state."""

    def describe(self) -> dict:
        """The algorithm's entry in results.json (name, what --lr means, sizes), JSON-able."""

    def communication(self, num_steps: int) -> dict:
        """Bytes down and up per client and per round, and in all over `num_steps` rounds
        (keys bytes_down_per_client, bytes_up_per_client, bytes_down_per_round, bytes_up_per_round,
        bytes_total), plus what never travels."""

    def summarize(self, metrics: ClientMetrics) -> dict:
        """`evaluate.summarize` of every client's metrics, plus anything algorithm-specific
        (heterogeneous pFedHN adds "per_arch")."""
