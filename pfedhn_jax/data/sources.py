"""Where the raw arrays come from: `<data_dir>/<name>.npz` files, or TensorFlow Datasets.

Every source yields a `RawDataset` of uint8 NHWC images and int labels for the official train
and test splits. Nothing here downloads unless asked (`download=True`, TFDS only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pfedhn_jax.errors import DataError

DATA_DIR_ENV = "PFEDHN_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: label count, per-channel normalisation, paper defaults."""

    name: str
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes_per_client: int
    image_shape: tuple[int, int, int]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 2, (32, 32, 3)),
    "cifar100": DatasetInfo("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 10, (32, 32, 3)),
}


class RawDataset(NamedTuple):
    x_train: np.ndarray  # (n_train, H, W, C) uint8
    y_train: np.ndarray  # (n_train,) int32
    x_test: np.ndarray   # (n_test, H, W, C) uint8
    y_test: np.ndarray   # (n_test,) int32
    source: str          # human-readable origin (path or 'tfds:<name>')
    sha256: str | None   # checksum of the source file, when there is one


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory from the argument, else from $PFEDHN_DATA_DIR, else None."""
    d = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    return Path(d).expanduser() if d is not None else None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_npz_header(path: Path, fix: str, error: type[Exception] = DataError) -> None:
    """Refuse a file that is not a zip archive before numpy sees it: on such bytes `np.load` guesses
    a pickle and advises `allow_pickle=True`, which is wrong and unsafe to follow."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise error(f"{path}: cannot read the file ({e.strerror or e}); {fix}") from None
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise error(f"{path}: not an npz archive (no zip header): the file is corrupt or of another format; {fix}")


def npz_problem(e: Exception) -> str:
    """What went wrong reading an npz archive, in words (never numpy's advice to allow pickles)."""
    text = str(e)
    if "pickle" in text:
        return "it holds no npz archive"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_split(path: Path, x: np.ndarray, y: np.ndarray, split: str, info: DatasetInfo) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != info.image_shape:
        raise DataError(f"{path}: x_{split} must be uint8 of shape (n, {', '.join(map(str, info.image_shape))}), "
                        f"got {x.dtype} {x.shape}; regenerate the file in the layout of cifar10.npz")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y_{split} must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= info.n_classes):
        raise DataError(f"{path}: y_{split} has labels outside 0..{info.n_classes - 1}")


def load_npz(path: Path, info: DatasetInfo) -> RawDataset:
    """Load and validate an npz with keys x_train, y_train, x_test, y_test.

    The arrays (read-only) are kept for the life of the process, keyed by the file's path, size
    and modification time, so several runs in one process (a grid, a test suite) read it once.
    """
    return _load_npz(*file_key(path), info)._replace(source=str(path))


def file_key(path: str | os.PathLike) -> tuple[Path, int, int]:
    """(resolved path, size, modification time): the key under which a loader caches a file's
    arrays, so a replaced file is read again."""
    st = Path(path).stat()
    return Path(path).resolve(), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _load_npz(path: Path, size: int, mtime_ns: int, info: DatasetInfo) -> RawDataset:
    del size, mtime_ns  # cache key only: a replaced file is read again
    fix = f"replace it with a good copy (docs/data.md says how to make {path.name})"
    check_npz_header(path, fix)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; expected the layout of cifar10.npz")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read the file ({npz_problem(e)}): it is truncated or corrupt; {fix}") from e
    for split in ("train", "test"):
        _check_split(path, arrays[f"x_{split}"], arrays[f"y_{split}"], split, info)
    arrays = {k: v.astype(np.int32) if k.startswith("y") else v for k, v in arrays.items()}
    for a in arrays.values():
        a.setflags(write=False)
    return RawDataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], str(path),
                      sha256_file(path))


def load_tfds(info: DatasetInfo, data_dir: Path | None, download: bool) -> RawDataset:
    """Read a TFDS dataset (array_record via `tfds.data_source`, else `tfds.load`)."""
    try:
        import tensorflow_datasets as tfds  # imported lazily: an optional extra
    except ImportError as e:
        raise DataError("TensorFlow Datasets is not installed: `pip install -e .[tfds]`, "
                        f"or put {info.name}.npz in --data-dir") from e
    kw = dict(data_dir=str(data_dir) if data_dir else None)
    try:
        if download:
            tfds.builder(info.name, file_format="array_record", **kw).download_and_prepare()  # data_source reads it
        splits = {}
        for split in ("train", "test"):
            try:
                ds = tfds.data_source(info.name, split=split, download=False, **kw)
                items = [ds[i] for i in range(len(ds))]
                x = np.stack([it["image"] for it in items])
                y = np.array([it["label"] for it in items])
            except Exception:  # tfrecord-format data: needs TensorFlow
                batch = tfds.as_numpy(tfds.load(info.name, split=split, batch_size=-1, download=False, **kw))
                x, y = batch["image"], batch["label"]
            splits[split] = (np.asarray(x, np.uint8), np.asarray(y, np.int32))
    except Exception as e:
        raise DataError(f"TFDS could not read '{info.name}' from {kw['data_dir'] or 'its default folder'} ({e}); "
                        "prepare it with --download, or put the npz in --data-dir") from e
    src = f"tfds:{info.name}"
    for split, (x, y) in splits.items():
        _check_split(Path(src), x, y, split, info)
    return RawDataset(*splits["train"], *splits["test"], src, None)


def load_raw(name: str, data_dir: str | os.PathLike | None = None, source: str = "auto",
             download: bool = False) -> RawDataset:
    """Load dataset `name` from `<data_dir>/<name>.npz` (source 'npz'), TFDS ('tfds'), or either ('auto')."""
    if name not in DATASETS:
        raise DataError(f"--dataset: unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    d = resolve_data_dir(data_dir)
    npz = d / f"{name}.npz" if d is not None else None
    if source in ("auto", "npz") and npz is not None and npz.is_file():
        return load_npz(npz, info)
    if source == "tfds" or (source == "auto" and download):
        return load_tfds(info, d, download)
    raise not_found(name, npz)


def not_found(name: str, npz: Path | None) -> DataError:
    """The one message for a dataset that no source provides, listing the ways to provide it."""
    where = f"{npz} does not exist" if npz is not None else f"no --data-dir given and ${DATA_DIR_ENV} is unset"
    return DataError(f"--data-dir: dataset '{name}' not found ({where}); put {name}.npz in --data-dir "
                     f"(or set ${DATA_DIR_ENV}), or read it with TensorFlow Datasets: --data-source tfds "
                     "[--download] (needs `pip install -e .[tfds]`)")
