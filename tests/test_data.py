"""Data sources (npz, errors) and the device-side batch sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax.data.federated import sample_batch
from pfedhn_jax.data.sources import DATASETS, load_raw
from pfedhn_jax.data.federated import FederatedData, pad_clients
from pfedhn_jax.errors import DataError


def _write_npz(path, n=20, shape=(32, 32, 3), labels=10, **over):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (n,) + shape, dtype=np.uint8), y_train=rng.integers(0, labels, n),
                  x_test=rng.integers(0, 256, (n // 2,) + shape, dtype=np.uint8), y_test=rng.integers(0, labels, n // 2))
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_loads_with_checksum(tmp_path):
    _write_npz(tmp_path / "cifar10.npz")
    raw = load_raw("cifar10", tmp_path)
    assert raw.x_train.shape == (20, 32, 32, 3) and raw.y_train.dtype == np.int32
    assert len(raw.sha256) == 64 and raw.source.endswith("cifar10.npz")


def test_data_dir_from_environment(tmp_path, monkeypatch):
    _write_npz(tmp_path / "cifar100.npz", labels=100)
    monkeypatch.setenv("PFEDHN_DATA_DIR", str(tmp_path))
    assert load_raw("cifar100").y_test.max() < 100


@pytest.mark.parametrize("kind,match", [
    ("missing", "not found"), ("truncated", "truncated or corrupt"), ("shape", "must be uint8 of shape"),
    ("keys", "missing arrays"), ("labels", "labels outside"),
    ("random bytes", "not an npz archive \\(no zip header\\): the file is corrupt"),
    ("pickle", "not an npz archive")])
def test_bad_data_files_are_refused(tmp_path, monkeypatch, kind, match):
    monkeypatch.delenv("PFEDHN_DATA_DIR", raising=False)
    p = tmp_path / "cifar10.npz"
    if kind == "truncated":
        _write_npz(p)
        p.write_bytes(p.read_bytes()[:5000])
    elif kind == "shape":
        _write_npz(p, shape=(28, 28, 3))
    elif kind == "keys":
        _write_npz(p, y_test=None)
    elif kind == "labels":
        _write_npz(p, labels=10, y_train=np.full(20, 12))
    elif kind == "random bytes":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "pickle":
        p.write_bytes(b"\x80\x04K\x01.")  # a pickle: numpy would advise allow_pickle=True
    with pytest.raises(DataError, match=match) as e:
        load_raw("cifar10", tmp_path)
    assert "allow_pickle" not in str(e.value) and "\n" not in str(e.value)
    if kind == "missing":
        assert "--data-dir" in str(e.value) and "tfds" in str(e.value)
    else:
        assert str(p) in str(e.value)


def test_unknown_dataset():
    with pytest.raises(DataError, match="--dataset"):
        load_raw("mnist", ".")


def _toy_data(counts, batch):
    lists, start = [], 0
    for c in counts:
        lists.append(np.arange(start, start + c))
        start += c
    x = jnp.asarray(np.arange(start, dtype=np.uint8).reshape(start, 1, 1, 1).repeat(2, 1))
    idx = pad_clients(lists, min_len=batch)
    return FederatedData(x, jnp.arange(start, dtype=jnp.int32), jnp.zeros(1), jnp.full(1, 1 / 255), idx, idx, idx), lists


def test_sample_batch_without_replacement_from_own_samples():
    data, lists = _toy_data([30, 100, 12], 16)
    for client in range(3):
        for seed in range(5):
            x, y, mask = sample_batch(data, data.train, client, jax.random.key(seed), 16)
            got = np.asarray(y)[np.asarray(mask)]
            assert set(got) <= set(lists[client])
            assert len(np.unique(got)) == len(got) == min(16, len(lists[client]))
            np.testing.assert_allclose(np.asarray(x)[:, 0, 0, 0], np.asarray(y))  # images follow labels


def test_sample_batch_covers_all_samples():
    data, lists = _toy_data([40], 8)
    seen = set()
    for seed in range(60):
        seen |= set(np.asarray(sample_batch(data, data.train, 0, jax.random.key(seed), 8)[1]).tolist())
    assert seen == set(lists[0])
