"""Omniglot: loading the real omniglot.npz, the per-alphabet federated split, and its errors."""

import numpy as np
import pytest

from pfedhn_jax.data.omniglot import (MAX_CHARACTERS, N_ALPHABETS, OMNIGLOT, OmniglotRaw, area_matrix, downsample,
                                      load_omniglot, make_omniglot_split, omniglot_info)
from pfedhn_jax.errors import DataError, UserError


@pytest.fixture(scope="module")
def omni(data_dir) -> OmniglotRaw:
    return load_omniglot(data_dir)


@pytest.fixture(scope="module")
def split(omni):
    return make_omniglot_split(omni, N_ALPHABETS, seed=0)


def test_shapes_and_dtypes(omni):
    raw = omni.raw
    assert raw.x_train.shape == (32460, 28, 28, 1) and raw.x_train.dtype == np.uint8
    assert raw.y_train.shape == (32460,) and raw.y_train.dtype == np.int32
    assert raw.x_test.shape == (0, 28, 28, 1) and raw.x_test.dtype == np.uint8 and raw.y_test.shape == (0,)
    for a in (omni.alphabet, omni.character, omni.drawer):
        assert a.shape == (32460,) and a.dtype == np.int32
    assert len(np.unique(omni.alphabet)) == 50 and len(np.unique(omni.character)) == 1623
    assert raw.y_train.min() == 0 and raw.y_train.max() == MAX_CHARACTERS - 1
    assert len(raw.sha256) == 64 and raw.source.endswith("omniglot.npz")
    assert OMNIGLOT.image_shape == (28, 28, 1) and OMNIGLOT.n_classes == 55
    assert omniglot_info(32).image_shape == (32, 32, 1)


def test_ink_polarity_and_normalisation_constants(omni):
    x = omni.raw.x_train.astype(np.float64) / 255.0
    assert (x > 0.5).mean() < 0.2                         # ink is 1 and sparse; background is 0
    assert (x == 0).mean() > 0.5
    assert x.mean() == pytest.approx(OMNIGLOT.mean[0], abs=1e-3)
    assert x.std() == pytest.approx(OMNIGLOT.std[0], abs=1e-3)


def test_area_downsample_is_exact_box_filter():
    rng = np.random.default_rng(0)
    img = rng.random((3, 105, 105)) < 0.2
    for size, k in ((35, 3), (21, 5)):                    # integer factors: plain block means
        want = img.reshape(3, size, k, size, k).mean(axis=(2, 4))
        assert np.abs(downsample(img, size)[..., 0] / 255.0 - want).max() <= 0.5 / 255 + 1e-6
    a = area_matrix(28)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)          # every output is an average
    np.testing.assert_allclose(a.sum(axis=0), 28 / 105, rtol=1e-6)     # every input pixel counts equally
    fine = img.repeat(4, axis=1).repeat(4, axis=2)       # 420 = 4 * 105 = 15 * 28: exact area average
    want = fine.reshape(3, 28, 15, 28, 15).mean(axis=(2, 4))
    assert np.abs(downsample(img, 28)[..., 0] / 255.0 - want).max() <= 0.5 / 255 + 1e-6


def test_clients_are_alphabets(omni, split):
    y, alphabet = omni.raw.y_train, omni.alphabet
    assert split.assignment is None and len(split.train) == len(split.val) == len(split.test) == 50
    for i in range(50):
        rows = np.concatenate([split.train[i], split.val[i], split.test[i]])
        assert set(alphabet[rows]) == {i}
        assert len(rows) == (alphabet == i).sum()          # the whole alphabet, nothing else
        n_chars = len(np.unique(omni.character[alphabet == i]))
        assert y[rows].min() == 0 and y[rows].max() == n_chars - 1
        assert len(np.unique(y[rows])) == n_chars


def test_no_drawing_in_two_splits_or_clients(omni, split):
    everything = np.concatenate(split.train + split.val + split.test)
    assert len(everything) == len(np.unique(everything)) == len(omni.raw.y_train)


@pytest.mark.parametrize("n_train,n_val", [(14, 3), (5, 0)])
def test_per_character_counts(omni, n_train, n_val):
    s = make_omniglot_split(omni, N_ALPHABETS, seed=1, n_train=n_train, n_val=n_val)
    n = 1623
    for lists, want in ((s.train, n_train), (s.val, n_val), (s.test, 20 - n_train - n_val)):
        rows = np.concatenate(lists)
        np.testing.assert_array_equal(np.bincount(omni.character[rows], minlength=n), want)


def test_split_is_deterministic_and_prefix_stable(omni, split):
    again = make_omniglot_split(omni, N_ALPHABETS, seed=0)
    other = make_omniglot_split(omni, N_ALPHABETS, seed=1)
    few = make_omniglot_split(omni, 7, seed=0)
    for a, b in zip(split, again):
        if a is not None:
            assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(split.train, other.train))
    assert len(few.train) == 7
    assert all(np.array_equal(u, v) for u, v in zip(few.test, split.test[:7]))


def test_bad_arguments_are_refused(omni, data_dir):
    with pytest.raises(UserError, match="--num-clients"):
        make_omniglot_split(omni, 51, seed=0)
    with pytest.raises(UserError, match="--num-clients"):
        make_omniglot_split(omni, 0, seed=0)
    with pytest.raises(UserError, match="--n-val"):
        make_omniglot_split(omni, 50, seed=0, n_train=15, n_val=5)
    with pytest.raises(UserError, match="--image-size"):
        load_omniglot(data_dir, image_size=200)


def test_bad_files_are_refused(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("PFEDHN_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir") as e:
        load_omniglot(tmp_path)
    assert "omniglot.npz" in str(e.value) and "tfds" in str(e.value)
    p = tmp_path / "omniglot.npz"
    p.write_bytes((data_dir / "omniglot.npz").read_bytes()[:100_000])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        load_omniglot(tmp_path)
    assert str(p) in str(e.value)
    np.savez(p, images_packed=np.zeros((4, 105, 14), np.uint8))
    with pytest.raises(DataError, match="missing arrays") as e:
        load_omniglot(tmp_path)
    assert str(p) in str(e.value)
    np.savez(p, **{k: np.zeros(4, np.int16) for k in ("alphabet_id", "character_id", "character_in_alphabet",
                                                       "drawer_id")}, images_packed=np.zeros((4, 105, 105), np.uint8))
    with pytest.raises(DataError, match="images_packed must be uint8") as e:
        load_omniglot(tmp_path)
    assert str(p) in str(e.value)


def test_data_dir_from_environment(data_dir, monkeypatch):
    monkeypatch.setenv("PFEDHN_DATA_DIR", str(data_dir))
    assert load_omniglot(None, image_size=14).raw.x_train.shape == (32460, 14, 14, 1)


def test_split_feeds_the_device_dataset(omni, split):
    import jax

    from pfedhn_jax.data.federated import sample_batch, to_device
    fd = to_device(omni.raw, OMNIGLOT, split, batch_size=32)
    assert fd.x.shape == (32460, 28, 28, 1) and fd.num_clients == 50
    x, y, mask = sample_batch(fd, fd.train, jax.numpy.int32(8), jax.random.PRNGKey(0), 32)
    assert x.shape == (32, 28, 28, 1) and bool(mask.all())
    assert set(np.asarray(y)) <= set(omni.raw.y_train[omni.alphabet == 8])


def test_tfds_path_with_a_stand_in_module(data_dir, monkeypatch):
    """The TFDS reader's renumbering, on a fake `tensorflow_datasets` serving the npz's first character of
    each alphabet in TFDS's conventions (alphabet ids by sorted name, 0-based char id, RGB, shuffled)."""
    import sys
    import types

    with np.load(data_dir / "omniglot.npz") as f:
        keep = np.flatnonzero(f["character_in_alphabet"] == 1)
        names, alphabet = f["alphabet_names"], f["alphabet_id"][keep]
        background = f["is_background"][keep]
        white = np.unpackbits(f["images_packed"][keep], axis=-1, count=105).astype(np.uint8) * 255
    tfds_id = np.argsort(np.argsort(names))[alphabet]        # TFDS: ClassLabel over all 50 names, sorted
    rng = np.random.default_rng(0)

    def data_source(name, split, download, data_dir):
        rows = rng.permutation(np.flatnonzero(background == (split == "train")))
        return [dict(image=np.repeat(white[r][..., None], 3, axis=-1), alphabet=tfds_id[r], alphabet_char_id=0,
                     label=0) for r in rows]

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source))
    got = load_omniglot(None, source="tfds")
    assert got.raw.source == "tfds:omniglot" and got.raw.x_train.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(got.alphabet, np.repeat(np.arange(50), 20))
    np.testing.assert_array_equal(got.character, got.alphabet)
    np.testing.assert_array_equal(got.raw.y_train, 0)
    ref = load_omniglot(data_dir).raw.x_train[keep]          # rows sorted by (alphabet, drawer) there
    for a in (0, 29, 30, 49):                                  # same drawings per alphabet, in some order
        mine = got.raw.x_train[got.alphabet == a].reshape(20, -1)
        theirs = ref[alphabet == a].reshape(20, -1)
        assert sorted(map(bytes, mine)) == sorted(map(bytes, theirs))
    assert sorted(got.drawer[:20]) == list(range(20))
