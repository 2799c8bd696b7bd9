"""Data from anything (pfedhn_jax.data.arrays): your arrays and per-client positions -> FederatedData.

Round trips (positions, counts, padding, batches drawn only from the client's own samples), one
clear error per bad input, float features never divided by 255, label_split, and from_tfds offline:
against a fake `tensorflow_datasets` module, and against `tfds.testing.mock_data` when TFDS is installed.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax.data.arrays import ArrayError, client_lists, from_arrays, from_tfds, label_split, pixel_stats
from pfedhn_jax.data.federated import make_split, sample_batch
from pfedhn_jax.data.sources import DatasetInfo, RawDataset
from pfedhn_jax.errors import UserError

M = 120  # samples; x[m] is filled with the value m, so a gathered image tells its own position


def ids_images(m: int = M, shape=(2, 2, 3)) -> np.ndarray:
    return np.broadcast_to(np.arange(m, dtype=np.uint8).reshape(-1, 1, 1, 1), (m, *shape)).copy()


def lists():
    """3 clients with 7, 3 and 12 training samples (out of order, disjoint), val and test lists."""
    train = [np.array([5, 1, 9, 40, 41, 42, 3]), np.array([60, 61, 62]), np.arange(70, 82)]
    val = [np.array([100]), np.array([101, 102]), np.array([], np.int64)]
    test = [np.array([110, 111]), np.array([112]), np.array([113, 114, 115])]
    return train, val, test


@pytest.fixture(scope="module")
def data():
    train, val, test = lists()
    y = np.arange(M) % 4
    return from_arrays(ids_images(), y, train, val, test, batch_size=8, mean=0.0, std=1.0)


def positions_of(images: jax.Array) -> np.ndarray:
    """Invert ids_images under mean 0, std 1: images (B, H, W, C) -> positions (B,)."""
    return np.rint(np.asarray(images)[:, 0, 0, 0] * 255).astype(int)


# ----------------------------------------------------------------------------- round trips


def test_round_trip_positions_counts_padding(data):
    train, val, test = lists()
    assert data.num_clients == 3
    for split, want in ((data.train, train), (data.val, val), (data.test, test)):
        np.testing.assert_array_equal(np.asarray(split.count), [len(ix) for ix in want])
        for got, ix in zip(client_lists(split), want):
            np.testing.assert_array_equal(got, ix)
    assert data.train.index.shape == (3, 12)  # the longest client (12 > batch_size 8)
    assert data.val.index.shape == (3, 2) and data.test.index.shape == (3, 3)
    np.testing.assert_array_equal(np.asarray(data.train.index)[1, 3:], 60)  # padding repeats the first
    assert data.x.dtype == jnp.uint8 and data.y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(data.y), np.arange(M) % 4)
    np.testing.assert_allclose(np.asarray(data.images(jnp.arange(M)))[:, 0, 0, 0], np.arange(M) / 255, rtol=1e-6)


def test_batches_come_only_from_the_clients_own_samples(data):
    train, _, _ = lists()
    for client, own in enumerate(train):
        for k in range(5):
            x, y, mask = sample_batch(data, data.train, jnp.int32(client), jax.random.key(k), 8)
            pos, mask = positions_of(x), np.asarray(mask)
            assert mask.sum() == min(8, len(own))
            assert set(pos[mask]) <= set(own.tolist()) and len(set(pos[mask])) == mask.sum()  # no repeats
            np.testing.assert_array_equal(np.asarray(y), pos % 4)
    x, _, mask = sample_batch(data, data.train, jnp.int32(1), jax.random.key(0), 8)  # 3 samples: all of them
    assert set(positions_of(x)[np.asarray(mask)]) == {60, 61, 62}


def test_batch_larger_than_every_client_is_padded_and_masked():
    d = from_arrays(ids_images(), np.zeros(M, int), [np.arange(3), np.arange(3, 5)], None,
                    [np.arange(5, 8), np.arange(8, 9)], batch_size=16)
    assert d.train.index.shape == (2, 16)
    _, _, mask = sample_batch(d, d.train, jnp.int32(0), jax.random.key(0), 16)
    assert int(mask.sum()) == 3


def test_val_none_or_all_empty_selects_on_test():
    train, _, test = lists()
    for val in (None, [[], [], []]):
        d = from_arrays(ids_images(), np.zeros(M, int), train, val, test, batch_size=4)
        for a, b in zip(d.val, d.test):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_uint8_default_normalisation_is_the_training_statistics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 3, 2), np.uint8)
    train = [np.array([0, 1, 2, 2]), np.array([10, 11])]  # a repeated position counts once
    d = from_arrays(x, np.zeros(50, int), train, None, [np.array([20]), np.array([21])], batch_size=2)
    rows = x[[0, 1, 2, 10, 11]].astype(np.float64) / 255
    np.testing.assert_allclose(np.asarray(d.mean), rows.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(d.std), rows.std((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(pixel_stats(x, np.array([0, 1, 2, 10, 11]), chunk=2)[0], rows.mean((0, 1, 2)))


# ----------------------------------------------------------------------------- float features


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_features_are_used_as_given_never_divided_by_255(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 50.0, (30, 6)).astype(dtype)  # (M, D) features
    args = ([np.arange(10), np.arange(10, 20)], None, [np.arange(20, 25), np.arange(25, 30)])
    d = from_arrays(x, np.zeros(30, int), *args, batch_size=4)
    assert d.x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(d.images(jnp.arange(30))), x, rtol=1e-5, atol=1e-5)
    mean, std = rng.normal(size=6), rng.uniform(1, 3, 6)
    d = from_arrays(x, np.zeros(30, int), *args, batch_size=4, mean=mean, std=std)
    np.testing.assert_allclose(np.asarray(d.images(jnp.arange(30))), (x - mean) / std, rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class MLP:
    """A Target for (B, D) features: D -> hidden -> n_classes."""

    d: int = 6
    hidden: int = 5
    n_classes: int = 3

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"h": {"kernel": jax.random.normal(k1, (self.d, self.hidden)) * 0.3, "bias": jnp.zeros(self.hidden)},
                "out": {"kernel": jax.random.normal(k2, (self.hidden, self.n_classes)) * 0.3,
                        "bias": jnp.zeros(self.n_classes)}}

    def apply(self, params, x):
        h = jax.nn.relu(x @ params["h"]["kernel"] + params["h"]["bias"])
        return h @ params["out"]["kernel"] + params["out"]["bias"]


def test_float_features_train_and_evaluate_with_a_custom_target():
    from pfedhn_jax import HyperNetwork, PFedHN, evaluate_clients, summarize
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, 6)).astype(np.float32) + 2.0 * y[:, None]
    d = from_arrays(x, y, [np.arange(0, 20), np.arange(20, 40)], None, [np.arange(40, 50), np.arange(50, 60)],
                    batch_size=8, mean=x.mean(0), std=x.std(0), n_classes=3)
    alg = PFedHN(HyperNetwork(MLP(), num_clients=2, embed_dim=2, hidden_dim=8, n_hidden=1),
                 inner_steps=2, batch_size=8)
    state = jax.jit(alg.init)(jax.random.key(0))
    state, metrics = jax.jit(alg.step)(d, state)
    assert np.isfinite(np.asarray(metrics.loss)).all()
    test = summarize(evaluate_clients(alg.target.apply, alg.personal_params(state, jnp.arange(2)), d, d.test))
    assert 0.0 <= test["acc"] <= 1.0 and len(test["per_client"]) == 2
    # a model for 3 clients meets the data of 2: one clear error where the two meet
    three = PFedHN(HyperNetwork(MLP(), num_clients=3, embed_dim=2, hidden_dim=8, n_hidden=1), inner_steps=2,
                   batch_size=8)
    with pytest.raises(ValueError, match=r"evaluate: the model has 3 clients .* but the data has 2"):
        three.evaluate(jax.jit(three.init)(jax.random.key(0)), d, d.test)
    from pfedhn_jax.data.federated import check_clients
    with pytest.raises(ValueError, match=r"has 3 clients but the data has 2"):
        check_clients(d, 3)
    with pytest.raises(ValueError, match=r"from_arrays\(\.\.\., batch_size=32\)"):
        check_clients(d, 2, batch_size=32)
    check_clients(d, 2, batch_size=8)


# ----------------------------------------------------------------------------- one clear error each


def bad(**change):
    """from_arrays kwargs: a valid call with `change` applied."""
    train, val, test = lists()
    kw = dict(x=ids_images(), y=np.arange(M) % 4, train=train, val=val, test=test, batch_size=8)
    kw.update(change)
    return kw


BAD_INPUTS = {
    "index out of range": (bad(train=[[5, 1], [60, 120], [70]]),
                           r"train\[1\]: position 120 is out of range .*0\.\.119"),
    "negative index": (bad(test=[[110], [-1], [113]]), r"test\[1\]: position -1 is out of range"),
    "client without training samples": (bad(train=[[5], [], [70]]), r"train\[1\]: client 1 has no train samples"),
    "client without test samples": (bad(test=[[110], [111], []]), r"test\[2\]: client 2 has no test samples"),
    "float positions": (bad(train=[[5.0], [60.0], [70.0]]), r"train\[0\]: positions must be integers"),
    "flat array instead of per-client lists": (bad(train=np.arange(10)), r"train\[0\]: expected a 1-D array"),
    "not a list of clients": (bad(train=None), r"train: expected one array of sample positions per client"),
    "client counts differ": (bad(val=[[100], [101]]), r"val: has 2 clients but train has 3"),
    "float labels": (bad(y=np.zeros(M, np.float32)), r"y: labels must be integers"),
    "negative labels": (bad(y=np.arange(M) - 1), r"y: labels must be >= 0"),
    "labels beyond n_classes": (bad(n_classes=3), r"y: label 3 is out of range for n_classes=3"),
    "2-D labels": (bad(y=np.zeros((M, 1), int)), r"y: labels must be a 1-D array"),
    "lengths differ": (bad(y=np.zeros(M - 1, int)), r"y: has 119 labels but x has 120 samples"),
    "integer pixels": (bad(x=ids_images().astype(np.int32)), r"x: dtype int32 is neither uint8 .*astype\(np\.uint8\)"),
    "bool x": (bad(x=np.zeros((M, 2), bool)), r"x: dtype bool is neither"),
    "1-D x": (bad(x=np.zeros(M, np.float32)), r"x: expected \(M, H, W, C\) images or \(M, \.\.\.\) features"),
    "nan features": (bad(x=np.full((M, 2), np.nan, np.float32)), r"x: float features contain NaN"),
    "batch_size zero": (bad(batch_size=0), r"batch_size: must be a positive int"),
    "batch_size float": (bad(batch_size=8.0), r"batch_size: must be a positive int"),
    "mean of the wrong shape": (bad(mean=[0.5, 0.5]), r"mean: expected a scalar or one value per channel, shape \(3"),
    "zero std": (bad(std=0.0), r"std: must be finite and > 0"),
    "uint8 mean on the 0..255 scale": (bad(mean=[125.0, 123.0, 114.0]), r"mean, std: for uint8 images .*\[0, 1\]"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_gives_one_clear_error(case):
    kw, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message) as err:
        from_arrays(**kw)
    assert isinstance(err.value, ArrayError) and isinstance(err.value, UserError)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- label_split


def test_label_split_is_the_cli_split_and_indexes_train_then_test():
    rng = np.random.default_rng(3)
    y_tr, y_te = rng.integers(0, 5, 400), rng.integers(0, 5, 100)
    s = label_split(y_tr, y_te, 4, classes_per_client=2, val_size=50, seed=7)
    raw = RawDataset(np.zeros((400, 1)), y_tr.astype(np.int32), np.zeros((100, 1)), y_te.astype(np.int32), "t", None)
    ref = make_split(raw, DatasetInfo("t", 5, (0,), (1,), 2, ()), 4, 2, 7, 50, "reference")
    for a, b in zip(s.train + s.val + s.test, ref.train + ref.val + ref.test):
        np.testing.assert_array_equal(a, b)
    y = np.concatenate([y_tr, y_te])
    for i in range(4):
        assert set(y[s.train[i]]) <= set(s.assignment.classes[i]) and (s.test[i] >= 400).all()
    d = label_split(y_tr, y_te, 3, split="dirichlet", alpha=100.0)
    assert all(len(ix) for ix in d.train)


@pytest.mark.parametrize("kw, message", [
    (dict(split="iid"), r"split: unknown split 'iid'"),
    (dict(classes_per_client=9), r"classes_per_client: must be in 1\.\.5"),
    (dict(split="dirichlet", alpha=0.0), r"alpha: the Dirichlet concentration must be > 0"),
    (dict(val_size=400), r"val_size: must be in \[0, 400\)"),
    (dict(num_clients=0), r"num_clients: must be a positive int"),
])
def test_label_split_errors(kw, message):
    y = np.arange(400) % 5
    args = dict(num_clients=kw.pop("num_clients", 4))
    with pytest.raises(ValueError, match=message):
        label_split(y, y[:100], args["num_clients"], **kw)


def test_label_split_refuses_a_slice_of_class_sorted_rows(data_dir):
    """The real cifar10.npz is sorted by class: its first 6000 training rows hold classes 0 and 1."""
    with np.load(data_dir / "cifar10.npz") as f:
        y_train, y_test = f["y_train"], f["y_test"]
    with pytest.raises(ArrayError, match=r"y_train: 8 of the 10 classes have no samples \(class 2, 3, .*shuffle|"
                                         r"y_train: 8 of the 10 classes have no samples \(class 2, 3, .*random subset"):
        label_split(y_train[:6000], y_test, 50)
    with pytest.warns(UserWarning, match="every client holds every class"):  # both sliced alike: 2 classes
        label_split(y_train[:10000], y_test[:2000], 10, classes_per_client=2)
    ix = np.random.default_rng(0).permutation(len(y_train))[:6000]  # the fix: a random subset
    s = label_split(y_train[ix], y_test, 50, classes_per_client=2)
    assert len({int(c) for c in s.assignment.classes.ravel()}) == 10


# ----------------------------------------------------------------------------- from_tfds


def fake_tfds(splits: dict) -> types.ModuleType:
    """A stand-in for tensorflow_datasets: data_source(name, split=...) -> a list of example dicts."""
    mod = types.ModuleType("tensorflow_datasets")

    def data_source(name, split, download, data_dir):
        assert name == "fake_mnist" and download is False
        x, y = splits[split]
        return [{"image": xi, "label": yi} for xi, yi in zip(x, y)]

    mod.data_source = data_source
    return mod


def test_from_tfds_reads_splits_and_builds_info(monkeypatch):
    rng = np.random.default_rng(4)
    splits = {"train": (rng.integers(0, 256, (200, 6, 6, 1), np.uint8), rng.integers(0, 4, 200)),
              "test": (rng.integers(0, 256, (60, 6, 6, 1), np.uint8), rng.integers(0, 4, 60))}
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(splits))
    data, info = from_tfds("fake_mnist", num_clients=3, batch_size=5, classes_per_client=2, seed=1)
    assert (info.n_classes, info.image_shape) == (4, (6, 6, 1))
    np.testing.assert_allclose(info.mean, [splits["train"][0].mean() / 255], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(data.mean), info.mean, rtol=1e-6)
    assert data.x.shape == (260, 6, 6, 1) and data.num_clients == 3
    s = label_split(splits["train"][1], splits["test"][1], 3, classes_per_client=2, seed=1)
    for got, want in zip(client_lists(data.train), s.train):
        np.testing.assert_array_equal(got, want)


def test_from_tfds_without_tensorflow_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"from_tfds: TensorFlow Datasets is not installed; `pip install -e \.\[tfds"):
        from_tfds("mnist")


def test_from_tfds_with_tfds_mock_data(tmp_path):
    """A real TFDS dataset's features (MNIST: (28, 28, 1) uint8 images, 10 labels), random values, offline."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=300):
        data, info = from_tfds("mnist", tmp_path, num_clients=4, batch_size=8, split="dirichlet", alpha=5.0)
    assert info.name == "mnist" and info.image_shape == (28, 28, 1) and info.n_classes <= 10
    assert data.x.shape == (600, 28, 28, 1) and data.x.dtype == jnp.uint8 and data.num_clients == 4
    assert int(data.train.count.sum()) > 0 and (np.asarray(data.test.index) >= 300).all()
