"""Label-shifted federated splits for the novel-client experiment (paper Sec. 5.3), and the shift
measure: a Dirichlet split with α_train for the training clients and one α per novel client, and
the total-variation distance between label distributions. Plain NumPy, deterministic from a seed;
docs/novel_clients.md defines every quantity.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from pfedhn_jax.data import partition
from pfedhn_jax.data.federated import SplitSummary


class NovelSplit(NamedTuple):
    """Training and novel clients of one Dirichlet split; no sample belongs to two clients.

    Indices are positions in [x_train; x_test] (as `SplitSummary`), so `to_device` / `with_clients`
    take either part.
    """

    train: SplitSummary       # the N training clients
    novel: SplitSummary       # the M novel clients
    alpha_train: float        # concentration of every training client
    novel_alpha: np.ndarray   # (M,) concentration each novel client was drawn with
    drawn: np.ndarray         # (N + M, n_classes) the drawn label distributions q_i (train first)

    def combined(self) -> SplitSummary:
        """All N + M clients in one split, training clients first (one program evaluates them all)."""
        a, b = self.train, self.novel
        return SplitSummary(partition.Assignment(np.concatenate([a.assignment.classes, b.assignment.classes]),
                                                 np.concatenate([a.assignment.shares, b.assignment.shares])),
                            a.train + b.train, a.val + b.val, a.test + b.test)


def novel_alphas(sweep: Sequence[float], num_novel: int) -> np.ndarray:
    """The α of each novel client: the sweep repeated in order, (num_novel,) float64.

    novel_alphas([0.1, 1, 10], 5) -> [0.1, 1, 10, 0.1, 1]; a multiple of len(sweep) gives every α
    the same number of clients.
    """
    sweep = np.asarray(sweep, np.float64)
    if sweep.ndim != 1 or sweep.size == 0:
        raise ValueError(f"sweep must be a non-empty list of concentrations, got {sweep.tolist()}")
    if not np.all(np.isfinite(sweep) & (sweep > 0)):
        raise ValueError(f"every α of the sweep must be positive and finite, got {sweep.tolist()}")
    if num_novel < 1:
        raise ValueError(f"num_novel must be a positive integer, got {num_novel}")
    return np.resize(sweep, num_novel)


def dirichlet_shift_assignment(n_classes: int, alphas: np.ndarray, class_freq: np.ndarray,
                               rng: np.random.Generator) -> tuple[partition.Assignment, np.ndarray]:
    """Per-client label distributions q_i ~ Dir(α_i · 1_C), realised with equal client sizes.

    alphas (K,) one concentration per client; class_freq (C,) the class frequencies of the set the
    shares refer to (the training pool). Client i gets share s_ic = λ q_ic / f_c of class c, with
    the largest λ such that no class is over-assigned (Σ_i s_ic ≤ 1): every client then holds about
    λ·T samples of a set of T samples, in proportions q_i (up to flooring). Unlike
    `partition.dirichlet_assignment` (each CLASS divided among clients), this draws each CLIENT's
    distribution, so every client can have its own α (Hsu et al., 2019).
    Returns (Assignment with k = C, q (K, C)).
    """
    alphas = np.asarray(alphas, np.float64)
    class_freq = np.asarray(class_freq, np.float64)
    if class_freq.shape != (n_classes,) or np.any(class_freq <= 0):
        raise ValueError(f"class_freq must be ({n_classes},) positive frequencies (every class present), "
                         f"got {np.round(class_freq, 4).tolist()}")
    q = np.stack([rng.dirichlet(np.full(n_classes, a)) for a in alphas])  # (K, C)
    lam = float(np.min(class_freq / np.maximum(q.sum(0), 1e-300)))
    shares = lam * q / class_freq
    classes = np.tile(np.arange(n_classes), (len(alphas), 1))
    return partition.Assignment(classes, shares), q


def make_novel_split(y_train: np.ndarray, y_test: np.ndarray, n_classes: int, num_train_clients: int,
                     alpha_train: float, novel_alpha: Sequence[float], seed: int,
                     val_size: int = 0) -> NovelSplit:
    """Dirichlet split of a dataset into N training clients (α_train each) and M novel clients.

    y_train (n_train,), y_test (n_test,) int labels in [0, n_classes); novel_alpha (M,) the α of
    each novel client (see `novel_alphas`). All N + M clients are drawn and split together
    (`dirichlet_shift_assignment`, then `partition.split_indices` on each set with its own shuffle),
    so no sample goes to two clients, and each client's test labels follow its training labels.
    val_size images are first carved out of the training set for validation (0: none; the novel
    experiment selects nothing on validation). Deterministic from `seed` (SeedSequence -> Generators).
    Raises ValueError naming the bad argument, or when some client gets no train or test sample.
    """
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    novel_alpha = np.asarray(novel_alpha, np.float64).reshape(-1)
    if num_train_clients < 1:
        raise ValueError(f"num_train_clients must be a positive integer, got {num_train_clients}")
    if not (np.isfinite(alpha_train) and alpha_train > 0):
        raise ValueError(f"alpha_train must be positive and finite, got {alpha_train}")
    if novel_alpha.size == 0 or not np.all(np.isfinite(novel_alpha) & (novel_alpha > 0)):
        raise ValueError(f"novel_alpha must be a non-empty list of positive concentrations, got {novel_alpha.tolist()}")
    if not 0 <= val_size < len(y_train):
        raise ValueError(f"val_size must be in [0, {len(y_train)}), got {val_size}")
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= n_classes)):
            raise ValueError(f"{name} must be 1-D integer labels in [0, {n_classes}), got {y.dtype} {y.shape}")
    n, m = num_train_clients, novel_alpha.size
    r_val, r_dir, r_train, r_vsplit, r_test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    train_pool, val_pool = partition.validation_carve_out(len(y_train), val_size, r_val)
    freq = np.bincount(y_train[train_pool], minlength=n_classes) / len(train_pool)
    alphas = np.concatenate([np.full(n, float(alpha_train)), novel_alpha])
    assignment, q = dirichlet_shift_assignment(n_classes, alphas, freq, r_dir)
    train = [train_pool[ix] for ix in partition.split_indices(y_train[train_pool], assignment, n_classes, r_train)]
    val = [val_pool[ix] for ix in partition.split_indices(y_train[val_pool], assignment, n_classes, r_vsplit)]
    test = [ix + len(y_train) for ix in partition.split_indices(y_test, assignment, n_classes, r_test)]
    for name, lists in (("training", train), ("test", test)):
        empty = [i for i, ix in enumerate(lists) if len(ix) == 0]
        if empty:
            raise ValueError(f"{len(empty)} of {n + m} clients get no {name} samples (the most concentrated "
                             "classes run out); use fewer clients or larger α")
    part = lambda sl: SplitSummary(partition.Assignment(assignment.classes[sl], assignment.shares[sl]),
                                   train[sl], val[sl], test[sl])
    return NovelSplit(part(slice(0, n)), part(slice(n, n + m)), float(alpha_train), novel_alpha, q)


# ----------------------------------------------------------------------------- shift measure


def label_distribution(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Empirical label distribution of one client: labels (n,) int -> (n_classes,) summing to 1."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    return np.bincount(labels, minlength=n_classes) / labels.size


def pooled_distribution(labels_per_client: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """The pooled label distribution of several clients: all their labels together, (n_classes,).

    Equal to the average of their label distributions weighted by their sample counts.
    """
    if not len(labels_per_client):
        raise ValueError("labels_per_client must hold at least one client")
    return label_distribution(np.concatenate([np.asarray(y).reshape(-1) for y in labels_per_client]), n_classes)


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance 0.5 · Σ_c |p_c − q_c| between two distributions (C,), in [0, 1].

    p and q must be probability vectors of one length: non-negative and summing to 1 (±1e-6).
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"p and q must be 1-D of the same length, got shapes {p.shape} and {q.shape}")
    for name, d in (("p", p), ("q", q)):
        if not np.all(np.isfinite(d)) or np.any(d < 0) or abs(d.sum() - 1.0) > 1e-6:
            raise ValueError(f"{name} must be a probability vector (non-negative, sum 1), got sum {d.sum():.6g}")
    return float(0.5 * np.abs(p - q).sum())
