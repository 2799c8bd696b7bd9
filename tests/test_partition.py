"""Invariants of the reference split (docs/reference.md §4) on generated labels and on real CIFAR-10."""

import numpy as np
import pytest

from pfedhn_jax.data.federated import make_split
from pfedhn_jax.data.sources import DATASETS, load_raw
from pfedhn_jax.data.partition import (dirichlet_assignment, reference_assignment, split_indices,
                                       validation_carve_out)
from pfedhn_jax.errors import UserError


@pytest.mark.parametrize("n_classes,n,c", [(10, 50, 2), (10, 10, 2), (100, 50, 10), (10, 7, 3)])
def test_reference_assignment_slots(n_classes, n, c):
    a = reference_assignment(n_classes, n, c, np.random.default_rng(0))
    assert a.classes.shape == a.shares.shape == (n, c)
    slots = c * n // n_classes + 1
    used = np.bincount(a.classes.ravel(), minlength=n_classes)
    assert used.max() <= slots and used.sum() == n * c
    # each class's shares come from S numbers in [0.4, 0.6] normalised to 1: bounded, and sum < 1
    lo, hi = 0.4 / (0.4 + 0.6 * (slots - 1)), 0.6 / (0.6 + 0.4 * (slots - 1))
    assert (a.shares >= lo - 1e-12).all() and (a.shares <= hi + 1e-12).all()
    for cls in range(n_classes if (c * n) % n_classes == 0 else 0):
        total = a.shares[a.classes == cls].sum()
        assert total < 1 - lo + 1e-9  # at least one slot unused (the "+1")


def test_most_free_slots_rule():
    """Clients always pick among the classes with the most free slots, so usage stays balanced."""
    a = reference_assignment(10, 50, 2, np.random.default_rng(3))
    free = np.full(10, 11)
    for row in a.classes:
        for cls in row:
            assert free[cls] == free.max()
            free[cls] -= 1


def test_split_indices_counts_and_disjointness():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 3000)
    a = reference_assignment(10, 20, 2, np.random.default_rng(1))
    parts = split_indices(labels, a, 10, np.random.default_rng(2))
    all_ix = np.concatenate(parts)
    assert len(np.unique(all_ix)) == len(all_ix)  # no sample in two clients
    counts = np.bincount(labels, minlength=10)
    for ix, cls, shr in zip(parts, a.classes, a.shares):
        assert set(labels[ix]) <= set(cls)
        assert len(ix) == sum(int(counts[c] * s) for c, s in zip(cls, shr))


def test_dirichlet_assignment():
    a = dirichlet_assignment(10, 30, 0.3, np.random.default_rng(0))
    np.testing.assert_allclose(a.shares.sum(0), 1.0)
    assert a.classes.shape == (30, 10)
    top = a.shares.max(axis=0).mean()  # the largest client's share of each class
    assert top > 0.2  # alpha = 0.3 is strongly skewed (uniform would be 1/30)


def test_validation_carve_out():
    tr, va = validation_carve_out(100, 30, np.random.default_rng(0))
    assert len(va) == 30 and len(tr) == 70 and not set(tr) & set(va)


@pytest.fixture(scope="module")
def cifar(data_dir):
    return load_raw("cifar10", data_dir)


def test_real_cifar_split_invariants(cifar):
    info = DATASETS["cifar10"]
    s = make_split(cifar, info, 50, 2, seed=42)
    train, val, test = (np.concatenate(x) for x in (s.train, s.val, s.test))
    for arr in (train, val, test):
        assert len(np.unique(arr)) == len(arr)
    assert not set(train) & set(val)  # validation is carved out of the training images
    y = np.concatenate([cifar.y_train, cifar.y_test])
    assert train.max() < 50_000 and val.max() < 50_000 and test.min() >= 50_000
    for i in range(50):  # the same class assignment in every split
        for ix in (s.train[i], s.val[i], s.test[i]):
            assert set(y[ix]) <= set(s.assignment.classes[i])
    unassigned = 1 - len(train) / 40_000
    assert 0.06 < unassigned < 0.12  # ~9% for CIFAR-10 with 50 clients
    assert 650 < np.mean([len(x) for x in s.train]) < 800 and 160 < np.mean([len(x) for x in s.test]) < 200
    # per-client counts are what the procedure implies, per split
    counts_test = np.bincount(cifar.y_test, minlength=10)
    for i in range(50):
        want = sum(int(counts_test[c] * p) for c, p in zip(s.assignment.classes[i], s.assignment.shares[i]))
        assert len(s.test[i]) == want


def test_ten_clients_leave_a_third_unassigned(cifar):
    s = make_split(cifar, DATASETS["cifar10"], 10, 2, seed=1)
    assert 0.25 < 1 - sum(len(x) for x in s.train) / 40_000 < 0.45


def test_split_is_deterministic(cifar):
    info = DATASETS["cifar10"]
    a, b = make_split(cifar, info, 20, 2, seed=7), make_split(cifar, info, 20, 2, seed=7)
    c = make_split(cifar, info, 20, 2, seed=8)
    for x, y in zip(a.train + a.val + a.test, b.train + b.val + b.test):
        np.testing.assert_array_equal(x, y)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a.train, c.train))


def test_too_many_clients_is_refused(cifar):
    with pytest.raises(UserError, match="--num-clients"):
        make_split(cifar, DATASETS["cifar10"], 30_000, 2, seed=0)
