"""The federated dataset on the device, and batch sampling inside jit.

Images live once on the device as uint8 (normalised when gathered); each split (train / val /
test) is a padded (N, L) array of positions into the image array plus per-client counts. A local
step samples its batch with `jax.random`, so nothing crosses between host and device per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax.data import partition
from pfedhn_jax.data.sources import DatasetInfo, RawDataset
from pfedhn_jax.errors import UserError


class ClientIndex(NamedTuple):
    """Per-client sample positions, padded: index[i, :count[i]] are client i's samples."""

    index: jax.Array  # (N, L) int32 positions into FederatedData.x (padding repeats a valid one)
    count: jax.Array  # (N,) int32


class FederatedData(NamedTuple):
    x: jax.Array     # (M, H, W, C) uint8: all images of all splits, stored once
    y: jax.Array     # (M,) int32
    mean: jax.Array  # (C,) float32, on the [0, 1] scale
    std: jax.Array   # (C,) float32
    train: ClientIndex
    val: ClientIndex
    test: ClientIndex

    @property
    def num_clients(self) -> int:
        return self.train.count.shape[0]

    def images(self, positions: jax.Array) -> jax.Array:
        """Gather and normalise: positions (...,) -> images (..., H, W, C) in mean's dtype (float32;
        float64 in the reference tests)."""
        return (self.x[positions].astype(self.mean.dtype) / 255.0 - self.mean) / self.std


def pad_clients(lists: list[np.ndarray], min_len: int = 1) -> ClientIndex:
    """Per-client index lists -> padded (N, L) array; padding repeats each client's first index."""
    length = max(min_len, max(len(ix) for ix in lists))
    index = np.zeros((len(lists), length), np.int32)
    for i, ix in enumerate(lists):
        index[i, :len(ix)] = ix
        index[i, len(ix):] = ix[0] if len(ix) else 0
    return ClientIndex(jnp.asarray(index), jnp.asarray([len(ix) for ix in lists], jnp.int32))


def check_clients(data: FederatedData, num_clients: int, batch_size: int | None = None, who: str = "the model") -> None:
    """One ValueError where an algorithm meets data built for other clients or another batch size
    (at trace time: shapes only). num_clients: the algorithm's (e.g. `HyperNetwork(num_clients=N)`);
    batch_size: the local batch it samples, which the training index must be padded to."""
    have = data.train.count.shape[-1]
    if have != num_clients:
        raise ValueError(f"{who} has {num_clients} clients but the data has {have} (one per train list given to "
                         f"from_arrays); build both for the same clients, e.g. HyperNetwork(..., num_clients={have})")
    length = data.train.index.shape[-1]
    if batch_size is not None and batch_size > length:
        raise ValueError(f"batch_size {batch_size} exceeds the data's training index (padded to {length}); build the "
                         f"data with from_arrays(..., batch_size={batch_size}), or lower batch_size to {length}")


def sample_batch(data: FederatedData, split: ClientIndex, client: jax.Array, key: jax.Array,
                 batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A random batch of one client's samples, without replacement (a fresh shuffle's first batch).

    Returns images (B, H, W, C), labels (B,), and a mask (B,) that is False past the client's
    count when it holds fewer than B samples (the reference's batch is then just smaller).
    """
    length = split.index.shape[1]
    if batch_size > length:
        raise ValueError(f"batch_size {batch_size} exceeds the padded length {length} of this split; build the data "
                         f"with from_arrays(..., batch_size={batch_size}) (or pad_clients(lists, min_len={batch_size})), "
                         "or lower batch_size")
    count = split.count[client]
    u = jnp.where(jnp.arange(length) < count, jax.random.uniform(key, (length,)), 2.0)
    _, pos = jax.lax.top_k(-u, batch_size)
    positions = split.index[client, pos]
    return data.images(positions), data.y[positions], jnp.arange(batch_size) < count


class SplitSummary(NamedTuple):
    """Host-side record of the split, for results and tests.

    Indices are positions in the concatenation [x_train; x_test] of the raw dataset.
    """

    assignment: partition.Assignment | None
    train: list[np.ndarray]  # per-client positions of training samples
    val: list[np.ndarray]    # per-client positions of validation samples (carved out of x_train)
    test: list[np.ndarray]   # per-client positions of test samples


def make_split(raw: RawDataset, info: DatasetInfo, num_clients: int, classes_per_client: int,
               seed: int, val_size: int = 10_000, split: str = "reference",
               alpha: float = 0.5) -> SplitSummary:
    """The federated split of a raw dataset, deterministic from `seed` (docs/reference.md §4)."""
    seq = np.random.SeedSequence(seed)
    r_val, r_assign, r_train, r_vsplit, r_test = (np.random.default_rng(s) for s in seq.spawn(5))
    if not 0 <= val_size < len(raw.y_train):
        raise UserError(f"--val-size: must be in [0, {len(raw.y_train)}), got {val_size}")
    train_pool, val_pool = partition.validation_carve_out(len(raw.y_train), val_size, r_val)
    if split == "reference":
        assignment = partition.reference_assignment(info.n_classes, num_clients, classes_per_client, r_assign)
    elif split == "dirichlet":
        assignment = partition.dirichlet_assignment(info.n_classes, num_clients, alpha, r_assign)
    else:
        raise UserError(f"--split: unknown split '{split}'; choose 'reference' or 'dirichlet'")
    train = [train_pool[ix] for ix in partition.split_indices(raw.y_train[train_pool], assignment, info.n_classes, r_train)]
    val = [val_pool[ix] for ix in partition.split_indices(raw.y_train[val_pool], assignment, info.n_classes, r_vsplit)]
    test = [ix + len(raw.y_train) for ix in partition.split_indices(raw.y_test, assignment, info.n_classes, r_test)]
    for name, lists, flag in (("training", train, "--num-clients"), ("test", test, "--num-clients")):
        empty = [i for i, ix in enumerate(lists) if len(ix) == 0]
        if empty:
            raise UserError(f"{flag}: {len(empty)} of {num_clients} clients get no {name} samples; "
                            "use fewer clients (or a larger --alpha for the Dirichlet split)")
    return SplitSummary(assignment, train, val, test)


def to_device(raw: RawDataset, info: DatasetInfo, split: SplitSummary | list[SplitSummary],
              batch_size: int) -> FederatedData:
    """Put the images on the device once and the per-client index arrays beside them.

    split: one split, or a list of R splits (one per run of a group, e.g. per seed): then every
    ClientIndex leaf gets a leading run axis, (R, N, L) and (R, N), padded to a common L. Padding
    never changes a draw: batches are sampled among the first `count` positions, and
    `jax.random.uniform` draws for a longer row start with the same numbers.
    """
    runs = split if isinstance(split, list) else [split]
    x = jnp.asarray(np.concatenate([raw.x_train, raw.x_test]))
    y = jnp.asarray(np.concatenate([raw.y_train, raw.y_test]).astype(np.int32))
    vals = [s.val if any(len(v) for v in s.val) else s.test for s in runs]  # val_size=0: select on test

    def index(lists_per_run: list[list[np.ndarray]], min_len: int = 1) -> ClientIndex:
        length = max([min_len] + [len(ix) for lists in lists_per_run for ix in lists])
        padded = [pad_clients(lists, length) for lists in lists_per_run]
        if not isinstance(split, list):
            return padded[0]
        return ClientIndex(*(jnp.stack(a) for a in zip(*padded)))

    return FederatedData(
        x, y, jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32),
        train=index([s.train for s in runs], min_len=batch_size), val=index(vals),
        test=index([s.test for s in runs]))
