"""Federated data from anything: your own arrays and per-client index lists, or a TFDS dataset by name.

    data = from_arrays(x, y, train=[ix_0, ix_1, ...], val=None, test=[...], batch_size=64)

x holds every sample of every split once, (M, H, W, C) images or (M, ...) features; each client's
train / val / test samples are given as 1-D integer arrays of positions into x. The result is the
same device-resident `FederatedData` the CLI trains on, so `PFedHN.step` and `evaluate_clients`
take it as is.

Input dtypes (`FederatedData.images` computes `(x / 255 - mean) / std`):
  uint8      images on 0..255: divided by 255, then normalised by `mean` / `std` given on the
             [0, 1] scale, by default the per-channel statistics of the clients' training samples.
  float      features used AS GIVEN, never divided by 255: normalised as `(x - mean) / std` on the
             features' own scale when `mean` / `std` are given, else left unchanged (identity).
             Stored as float32 with mean and std scaled by 1/255, which is the same computation.
  other      refused (int32 pixels, bool, ...): cast to uint8 (pixels 0..255) or float32.

No client is split for you by `from_arrays`; `label_split` makes the library's label-skewed
splits (the paper's "reference" split or a Dirichlet one) from the labels alone, and `from_tfds`
does load + split + `from_arrays` for any TFDS image-classification dataset. Every bad input
raises one `ArrayError` (a `ValueError`) naming the argument and the fix.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from pfedhn_jax.data.federated import ClientIndex, FederatedData, SplitSummary, make_split, pad_clients
from pfedhn_jax.data.sources import DatasetInfo, RawDataset
from pfedhn_jax.errors import DataError

ArrayLike = np.ndarray  # anything `np.asarray` takes: numpy or JAX arrays, lists
SPLITS = ("reference", "dirichlet")


class ArrayError(DataError, ValueError):
    """Bad arrays or index lists: a ValueError for library users, a UserError for the CLI."""


# ----------------------------------------------------------------------------- validation


def check_labels(y: ArrayLike, name: str = "y", n_classes: int | None = None) -> np.ndarray:
    """Labels (M,) of an integer dtype, >= 0 and < n_classes when given -> int32 array."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ArrayError(f"{name}: labels must be a 1-D array (M,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ArrayError(f"{name}: labels must be integers (class ids 0..K-1), got dtype {y.dtype}; "
                         f"convert them, e.g. {name}.astype(np.int32), or map class names to ids first")
    if len(y) and y.min() < 0:
        raise ArrayError(f"{name}: labels must be >= 0, got {int(y.min())}; relabel the classes as 0..K-1")
    if n_classes is not None and len(y) and y.max() >= n_classes:
        raise ArrayError(f"{name}: label {int(y.max())} is out of range for n_classes={n_classes}; "
                         f"labels must be in 0..{n_classes - 1} (raise n_classes or relabel)")
    if len(y) and y.max() > np.iinfo(np.int32).max:
        raise ArrayError(f"{name}: label {int(y.max())} does not fit in int32; relabel the classes as 0..K-1")
    return y.astype(np.int32)


def check_positions(lists: Sequence[ArrayLike], name: str, num_samples: int,
                    num_clients: int | None = None, allow_empty: bool = False) -> list[np.ndarray]:
    """Per-client position lists -> int64 arrays, each 1-D and inside 0..num_samples-1.

    lists: a sequence with one entry per client (a list of arrays, or a 2-D array, one row each).
    num_clients: the expected number of entries (that of `train`), when known.
    allow_empty: whether a client may have no samples (else an error names it).
    """
    if isinstance(lists, (str, bytes)) or not hasattr(lists, "__len__"):
        raise ArrayError(f"{name}: expected one array of sample positions per client (a list of 1-D "
                         f"integer arrays), got {type(lists).__name__}")
    if num_clients is not None and len(lists) != num_clients:
        raise ArrayError(f"{name}: has {len(lists)} clients but train has {num_clients}; give one list per client")
    if len(lists) == 0:
        raise ArrayError(f"{name}: no clients; give one array of sample positions per client")
    out = []
    for i, ix in enumerate(lists):
        ix = np.asarray(ix)
        if ix.ndim != 1:
            raise ArrayError(f"{name}[{i}]: expected a 1-D array of positions into x, got shape {ix.shape}; "
                             f"pass one array per client, e.g. {name}=[positions_0, positions_1, ...]")
        if ix.size == 0:
            if allow_empty:
                out.append(np.zeros(0, np.int64))
                continue
            raise ArrayError(f"{name}[{i}]: client {i} has no {name} samples; every client needs at least one "
                             f"(drop the client, or move some of its samples into {name})")
        if not np.issubdtype(ix.dtype, np.integer):
            raise ArrayError(f"{name}[{i}]: positions must be integers, got dtype {ix.dtype}")
        bad = ix[(ix < 0) | (ix >= num_samples)]
        if bad.size:
            raise ArrayError(f"{name}[{i}]: position {int(bad[0])} is out of range for x with {num_samples} "
                             f"samples (valid: 0..{num_samples - 1}); positions index the rows of x")
        out.append(ix.astype(np.int64))
    return out


def _channel_stats(value: float | ArrayLike | None, name: str, channels: int) -> np.ndarray | None:
    """A scalar or (C,) mean / std -> float64 (C,), or None."""
    if value is None:
        return None
    v = np.asarray(value, np.float64)
    if v.shape not in ((), (channels,)):
        raise ArrayError(f"{name}: expected a scalar or one value per channel, shape ({channels},) (the last axis "
                         f"of x), got shape {v.shape}")
    v = np.broadcast_to(v, (channels,)).copy()
    if not np.all(np.isfinite(v)) or (name == "std" and np.any(v <= 0)):
        raise ArrayError(f"{name}: must be finite{' and > 0' if name == 'std' else ''}, got {v.tolist()}")
    return v


def pixel_stats(x: np.ndarray, positions: np.ndarray | None = None,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (C,) of uint8 images on the [0, 1] scale, over x[positions].

    Counted as one 256-bin histogram per channel (exact, and no float copy of the images), over
    chunks of rows; a repeated position counts once. A constant channel gets std 1.
    """
    rows = np.arange(len(x)) if positions is None else np.unique(positions)
    c = x.shape[-1]
    offset = 256 * np.arange(c)
    hist = np.zeros(256 * c, np.int64)
    for start in range(0, len(rows), chunk):
        block = x[rows[start:start + chunk]].reshape(-1, c)
        hist += np.bincount((block + offset).ravel(), minlength=256 * c)
    hist = hist.reshape(c, 256)
    v = np.arange(256) / 255.0
    n = hist.sum(1)
    mean = hist @ v / n
    std = np.sqrt(np.maximum(hist @ v ** 2 / n - mean ** 2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def normalisation(x: np.ndarray, train_positions: np.ndarray, mean: float | ArrayLike | None,
                  std: float | ArrayLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, std) as `FederatedData` stores them: images() computes (x / 255 - mean) / std.

    uint8 x: kept; mean / std on the [0, 1] scale, by default the statistics of x[train_positions].
    float x: float32; mean / std (default 0 and 1) scaled by 1/255, so that images() computes
    (x - mean) / std on the features' own scale. Any other dtype is refused.
    """
    channels = x.shape[-1]
    mean, std = _channel_stats(mean, "mean", channels), _channel_stats(std, "std", channels)
    if x.dtype == np.uint8:
        if (mean is not None and np.any(np.abs(mean) > 1)) or (std is not None and np.any(std > 1)):
            given = f"mean {None if mean is None else mean.tolist()}, std {None if std is None else std.tolist()}"
            raise ArrayError(f"mean, std: for uint8 images they are on the [0, 1] scale (x / 255), got {given}; "
                             "divide values given on the 0..255 scale by 255")
        if mean is None or std is None:
            m, s = pixel_stats(x, train_positions)
            mean, std = (m if mean is None else mean), (s if std is None else std)
        return x, mean, std
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ArrayError("x: float features contain NaN or inf; clean or impute them first")
        mean = np.zeros(channels) if mean is None else mean
        std = np.ones(channels) if std is None else std
        return x.astype(np.float32), mean / 255.0, std / 255.0
    raise ArrayError(f"x: dtype {x.dtype} is neither uint8 images nor float features; cast it: "
                     "x.astype(np.uint8) for pixels on 0..255 (divided by 255, then normalised), or "
                     "x.astype(np.float32) for features used as given (normalised by mean / std if given)")


# ----------------------------------------------------------------------------- from arrays


def from_arrays(x: ArrayLike, y: ArrayLike, train: Sequence[ArrayLike], val: Sequence[ArrayLike] | None,
                test: Sequence[ArrayLike], batch_size: int, mean: float | ArrayLike | None = None,
                std: float | ArrayLike | None = None, n_classes: int | None = None) -> FederatedData:
    """Your arrays and per-client position lists -> the device-resident `FederatedData`.

    x: (M, H, W, C) uint8 images, or (M, ...) float features (see the module docstring: floats
      are never divided by 255).
    y: (M,) integer labels >= 0 (< n_classes when given: pass the target's class count to catch
      labels the head cannot output).
    train, val, test: one 1-D integer array per client (N of each), positions into x. Every client
      needs at least one training and one test sample; val lists may be empty, and val=None (or
      all empty) validates on the test lists, as the CLI with --val-size 0. Positions may repeat
      and splits may overlap: that is your call.
    batch_size: the local batch size `PFedHN.batch_size` will sample. A client with fewer training
      samples gets a masked, smaller batch; the training index is padded to at least batch_size.
    mean, std: scalar or (C,) normalisation, C = x.shape[-1]: on the [0, 1] scale for uint8
      (default: statistics of the training samples), on the features' scale for floats (default:
      identity).
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ArrayError(f"x: expected (M, H, W, C) images or (M, ...) features, got shape {x.shape}")
    y = check_labels(y, "y", n_classes)
    if len(y) != len(x):
        raise ArrayError(f"y: has {len(y)} labels but x has {len(x)} samples; give one label per row of x")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ArrayError(f"batch_size: must be a positive int, got {batch_size!r}")
    train = check_positions(train, "train", len(x))
    test = check_positions(test, "test", len(x), len(train))
    val = None if val is None else check_positions(val, "val", len(x), len(train), allow_empty=True)
    if val is None or not any(len(v) for v in val):
        val = test  # no validation samples: select on test, as the CLI with --val-size 0
    x, mean, std = normalisation(x, np.concatenate(train), mean, std)
    return FederatedData(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32),
        train=pad_clients(train, min_len=batch_size), val=pad_clients(val), test=pad_clients(test))


def client_lists(split: ClientIndex) -> list[np.ndarray]:
    """Inverse of the padding: a `ClientIndex` -> each client's positions (host int arrays)."""
    index, count = np.asarray(split.index), np.asarray(split.count)
    return [index[i, :count[i]] for i in range(len(count))]


# ----------------------------------------------------------------------------- label-skewed splits


def label_split(y_train: ArrayLike, y_test: ArrayLike, num_clients: int, *, split: str = "reference",
                classes_per_client: int = 2, alpha: float = 0.5, val_size: int = 0, seed: int = 0,
                n_classes: int | None = None) -> SplitSummary:
    """The library's federated split of labelled train and test sets, from the labels alone.

    split: 'reference' (the paper's: each client gets `classes_per_client` classes) or 'dirichlet'
    (class shares ~ Dir(alpha)); val_size training samples are first carved out for validation.
    The same seed and labels give the CLI's split (`federated.make_split`). Positions index the
    concatenation [train; test], as for `from_arrays(np.concatenate([x_train, x_test]), ...)`.
    n_classes: default max label + 1.
    """
    y_train, y_test = check_labels(y_train, "y_train", n_classes), check_labels(y_test, "y_test", n_classes)
    k = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1 if n_classes is None else n_classes
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ArrayError(f"num_clients: must be a positive int, got {num_clients!r}")
    if split not in SPLITS:
        raise ArrayError(f"split: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "reference" and not 1 <= classes_per_client <= k:
        raise ArrayError(f"classes_per_client: must be in 1..{k} (the number of classes), got {classes_per_client}")
    if split == "dirichlet" and not alpha > 0:
        raise ArrayError(f"alpha: the Dirichlet concentration must be > 0, got {alpha}")
    if not 0 <= val_size < len(y_train):
        raise ArrayError(f"val_size: must be in [0, {len(y_train)}) (the training set's size), got {val_size}")
    for name, labels in (("y_train", y_train), ("y_test", y_test)):
        absent = np.setdiff1d(np.arange(k), labels)
        if absent.size:
            shown = ", ".join(map(str, absent[:8])) + (", ..." if absent.size > 8 else "")
            raise ArrayError(f"{name}: {absent.size} of the {k} classes have no samples (class {shown}); a split needs "
                             "every class in both sets. Rows sorted by class (as in the offline .npz files) give a "
                             "first slice such as x_train[:6000] only the first classes: draw a random subset "
                             "(e.g. rng.permutation(len(y))[:6000]) instead of slicing")
    if split == "reference" and classes_per_client >= k > 1:
        warnings.warn(f"label_split: classes_per_client={classes_per_client} >= the {k} classes in the labels, so every "
                      "client holds every class and the split has no label skew; if you expected more classes, "
                      "check that your labels were not sliced from class-sorted rows", UserWarning, stacklevel=2)
    raw = RawDataset(None, y_train, None, y_test, "arrays", None)  # make_split reads only the labels
    info = DatasetInfo("arrays", k, (0.0,), (1.0,), classes_per_client, ())
    return make_split(raw, info, num_clients, classes_per_client, seed, val_size, split, alpha)


# ----------------------------------------------------------------------------- TFDS


def _read_tfds(tfds, name: str, split: str, data_dir: str | None, image_key: str,
               label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One TFDS split as (images, labels): array_record via `tfds.data_source`, else `tfds.load`."""
    try:
        ds = tfds.data_source(name, split=split, download=False, data_dir=data_dir)
        items = [ds[i] for i in range(len(ds))]
        x, y = np.stack([it[image_key] for it in items]), np.array([it[label_key] for it in items])
    except Exception:  # tfrecord-format data: needs TensorFlow
        batch = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, download=False, data_dir=data_dir))
        x, y = batch[image_key], batch[label_key]
    return np.asarray(x), np.asarray(y)


def from_tfds(name: str, data_dir: str | os.PathLike | None = None, num_clients: int = 10, *,
              batch_size: int = 64, split: str = "reference", classes_per_client: int = 2, alpha: float = 0.5,
              val_size: int = 0, seed: int = 0, download: bool = False, train_split: str = "train",
              test_split: str = "test", image_key: str = "image",
              label_key: str = "label") -> tuple[FederatedData, DatasetInfo]:
    """Any TFDS image-classification dataset by name -> (FederatedData, DatasetInfo).

    Reads `train_split` and `test_split` (uint8 images of one fixed shape, integer labels), splits
    them with `label_split` (same arguments), and normalises by the per-channel mean / std of
    the whole training split. The DatasetInfo carries n_classes (max label + 1), mean, std and
    image_shape, e.g. for `ConvNet(info.image_shape, n_classes=info.n_classes)`. Nothing is
    downloaded unless download=True. Needs `tensorflow-datasets` (`pip install -e .[tfds]`).
    """
    try:
        import tensorflow_datasets as tfds  # an optional extra, imported only here
    except ImportError as e:
        raise ImportError("from_tfds: TensorFlow Datasets is not installed; `pip install -e .[tfds]` (or "
                          "`pip install tensorflow-datasets`), or load the arrays yourself and call from_arrays") from e
    d = str(data_dir) if data_dir is not None else None
    try:
        if download:
            tfds.builder(name, file_format="array_record", data_dir=d).download_and_prepare()  # data_source reads it
        (x_tr, y_tr), (x_te, y_te) = (_read_tfds(tfds, name, s, d, image_key, label_key)
                                      for s in (train_split, test_split))
    except Exception as e:
        raise DataError(f"from_tfds: TFDS could not read '{name}' ({train_split}, {test_split}) from "
                        f"{d or 'its default folder'} ({e}); prepare it with download=True") from e
    for s, x in ((train_split, x_tr), (test_split, x_te)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != x_tr.shape[1:]:
            raise ArrayError(f"from_tfds: '{name}' split '{s}' must hold uint8 images of one shape (n, H, W, C), "
                             f"got {x.dtype} {x.shape}; use from_arrays for other data")
    summary = label_split(y_tr, y_te, num_clients, split=split, classes_per_client=classes_per_client,
                          alpha=alpha, val_size=val_size, seed=seed)
    mean, std = pixel_stats(x_tr)
    info = DatasetInfo(name, int(max(y_tr.max(), y_te.max())) + 1, tuple(mean.tolist()), tuple(std.tolist()),
                       classes_per_client, tuple(x_tr.shape[1:]))
    data = from_arrays(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]), summary.train,
                       summary.val, summary.test, batch_size, mean, std)
    return data, info
