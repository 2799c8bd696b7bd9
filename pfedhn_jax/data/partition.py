"""Federated label splits, in host NumPy, deterministic from a `np.random.Generator`.

A split is described by an `Assignment`: for each client, a list of (class, share) pairs.
Client i receives int(share * count_c) samples of class c, taken in client order from a shuffled
per-class index list, so no sample goes to two clients. The same assignment is applied to the
train, validation and test sets (each with its own shuffle), so every client's test distribution
matches its training distribution (docs/reference.md §4).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Assignment(NamedTuple):
    classes: np.ndarray  # (N, k) int: the classes each client holds (a class may repeat)
    shares: np.ndarray   # (N, k) float: the share of that class's samples the client gets


def reference_assignment(n_classes: int, num_clients: int, classes_per_client: int,
                         rng: np.random.Generator, low: float = 0.4, high: float = 0.6) -> Assignment:
    """The reference's pathological split (`gen_classes_per_node`).

    Every class gets S = c*N // n_classes + 1 slots with shares U(low, high) normalised to sum to 1;
    clients, in order, pick c times a class among those with the most free slots (ties at random),
    taking the class's last remaining share. The "+1" leaves one slot per class unused, so part of
    the data stays unassigned, as in the reference.
    """
    slots = classes_per_client * num_clients // n_classes + 1
    free = np.full(n_classes, slots)
    shares_left = []
    for _ in range(n_classes):
        p = rng.uniform(low, high, size=slots)
        shares_left.append(list(p / p.sum()))
    classes = np.zeros((num_clients, classes_per_client), np.int64)
    shares = np.zeros((num_clients, classes_per_client))
    for i in range(num_clients):
        for j in range(classes_per_client):
            c = rng.choice(np.flatnonzero(free == free.max()))
            free[c] -= 1
            classes[i, j] = c
        # The reference pops the shares after choosing all of the client's classes.
        shares[i] = [shares_left[c].pop() for c in classes[i]]
    return Assignment(classes, shares)


def dirichlet_assignment(n_classes: int, num_clients: int, alpha: float,
                         rng: np.random.Generator) -> Assignment:
    """Label-skewed split: each class is divided among clients by proportions ~ Dir(alpha * 1_N).

    Smaller alpha means more skew. Every client lists every class (k = n_classes).
    """
    props = rng.dirichlet(np.full(num_clients, alpha), size=n_classes)  # (n_classes, N)
    classes = np.tile(np.arange(n_classes), (num_clients, 1))
    return Assignment(classes, props.T.copy())


def split_indices(labels: np.ndarray, assignment: Assignment, n_classes: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Apply an assignment to one set (`gen_data_split`): per-client index arrays into `labels`."""
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    counts = [len(ix) for ix in by_class]
    start = np.zeros(n_classes, np.int64)
    out = []
    for cls, shr in zip(assignment.classes, assignment.shares):
        mine = []
        for c, p in zip(cls, shr):
            n = int(counts[c] * p)
            mine.append(by_class[c][start[c]:start[c] + n])
            start[c] += n
        out.append(np.concatenate(mine).astype(np.int64))
    return out


def validation_carve_out(n: int, val_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, val) index split of range(n), as the reference's `random_split`."""
    perm = rng.permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])
