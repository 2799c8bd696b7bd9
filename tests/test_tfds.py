"""The TensorFlow Datasets paths of every dataset, offline: `tfds.testing.mock_data` serves random
examples with each dataset's real features (no download, no TensorFlow), through the same loaders
and the same training entry point as the npz files."""

from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from pfedhn_jax.config import Config  # noqa: E402
from pfedhn_jax.data.omniglot import load_omniglot  # noqa: E402
from pfedhn_jax.data.sources import load_raw  # noqa: E402
from pfedhn_jax.loop import train  # noqa: E402


@pytest.mark.parametrize("name,n_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_tfds(tmp_path, name, n_classes):
    with tfds.testing.mock_data(num_examples=64):
        raw = load_raw(name, tmp_path, source="tfds")
    assert raw.source == f"tfds:{name}" and raw.sha256 is None
    assert raw.x_train.shape == (64, 32, 32, 3) and raw.x_train.dtype == np.uint8
    assert raw.y_train.dtype == np.int32 and 0 <= raw.y_train.min() and raw.y_train.max() < n_classes
    assert raw.x_test.shape == (64, 32, 32, 3)


def omniglot_source(builder, split, *args, **kwargs):
    """TFDS omniglot's features with values in the real ranges (random ids would not be): train holds
    'background' alphabets 3 and 7, test 'evaluation' alphabet 5; 4 characters, 5 drawings each."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    alphabets = [3, 7] if split == "train" else [5]
    return [{"image": rng.choice(np.array([0, 255], np.uint8), (105, 105, 3)), "alphabet": a,
             "alphabet_char_id": c, "label": 0} for a in alphabets for c in range(4) for _ in range(5)]


def test_omniglot_from_tfds(tmp_path):
    with tfds.testing.mock_data(as_data_source_fn=omniglot_source):
        omni = load_omniglot(tmp_path, image_size=16, source="tfds")
    x = omni.raw.x_train
    assert x.shape == (60, 16, 16, 1) and x.dtype == np.uint8 and len(omni.raw.x_test) == 0
    assert sorted(set(omni.alphabet.tolist())) == [0, 1, 2]     # background alphabets first, then evaluation
    assert (omni.alphabet[:40] < 2).all() and (omni.alphabet[40:] == 2).all()
    assert len(set(omni.character.tolist())) == 12 and sorted(set(omni.drawer.tolist())) == [0, 1, 2, 3, 4]
    assert sorted(set(omni.raw.y_train.tolist())) == [0, 1, 2, 3]


def test_training_reads_tfds(tmp_path):
    """The whole run: --data-source tfds through the registry, split, compile and one step."""
    cfg = Config(data_source="tfds", data_dir=str(tmp_path), num_clients=2, val_size=100, num_steps=1,
                 inner_steps=1, batch_size=8, eval_every=1, n_kernels=2, hyper_hid=8, n_hidden=1)
    with tfds.testing.mock_data(num_examples=400):
        res = train(cfg, progress=False)
    assert res["data"]["source"] == "tfds:cifar10" and res["status"] == "finished"
    assert sum(res["data"]["client_counts"]["train"]) > 0
