"""Omniglot as a federated dataset: one client per alphabet (docs/reference.md §7).

The paper's Omniglot experiment has 50 clients, one alphabet each, and a 4-conv target with
one output per character class. The split, the resolution and the label space were never
published; the choices below are ours, fixed, and used for every result.

Decisions and why:

- **Clients = alphabets.** Client i holds alphabet i (0..49): the 30 background alphabets, then
  the 20 evaluation alphabets, each group sorted by name (the order of `omniglot.npz`). With
  `num_clients = N < 50` the clients are alphabets 0..N-1; more than 50 is refused.
- **Labels = the character's index inside its alphabet** (0..54), so the target has
  `n_classes = 55` outputs (the largest alphabet, Tifinagh, has 55 characters). A client only sees
  its own alphabet's labels, 0..(its characters - 1); the head's other outputs are never targets
  for it. This keeps one small head shared by every client (a head over all 1,623 characters would
  be 30x larger and 97% unused by any client), and the hypernetwork learns which label means what
  for each alphabet, which is exactly the personalisation the paper measures.
- **Images: ink = 1, downsampled to `image_size` (default 28) by exact area averaging** (each
  output pixel is the mean ink over its 105/S x 105/S footprint, fractional pixels weighted by
  overlap, i.e. upsampling by 4 then taking 15x15 block means for S = 28; OpenCV's INTER_AREA,
  not PIL's BOX, which rounds each footprint to whole pixels), done once on the host, then
  stored as uint8 0..255, shape (M, S, S, 1). Ink = 1 makes the mostly-empty background zero,
  as in MNIST; 28x28 is the resolution of the few-shot Omniglot literature and keeps the 4-conv
  target cheap. Area averaging is antialiased (strokes survive as grey levels instead of
  aliasing away) and preserves the mean ink exactly. Two float32 matmuls per chunk: ~2 s for
  all 32,460 images on a 2-core CPU, no JAX needed.
- **Per-character split of the 20 drawings into train / val / test = 14 / 3 / 3** by default
  (`n_train`, `n_val`; test is the rest), each character's drawings ordered by a permutation
  drawn from `np.random.default_rng(SeedSequence(seed))`. Every character of a client is in all
  three splits, so test accuracy measures new drawings of known characters (the task of a
  client's classifier), and no drawing is in two splits. The permutation covers all 1,623
  characters whatever `num_clients` is, so a client's split does not depend on how many other
  clients there are.
- **Positions.** All images are in `x_train` of the `RawDataset` (`x_test` is empty with the right
  shape), so `SplitSummary` positions are plain row indices; `federated.to_device` works unchanged.
- **Normalisation** (`OMNIGLOT.mean/std`): the mean and std of the uint8 ink images at 28x28 on the
  [0, 1] scale, over all 32,460 images, computed once from `omniglot.npz` and hard-coded (the test
  checks them against the data). Other sizes reuse them: area averaging keeps the mean, and the
  std only needs to be a fixed, sensible scale.

Sources: `<data_dir>/omniglot.npz` (layout in docs/data.md), or TensorFlow Datasets
`omniglot` (splits train + test; `small1`/`small2` are subsets of train and are not read).
"""

from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pfedhn_jax.data.federated import SplitSummary
from pfedhn_jax.data.sources import (DatasetInfo, RawDataset, check_npz_header, file_key, npz_problem, not_found, resolve_data_dir,
                                     sha256_file)
from pfedhn_jax.errors import DataError, UserError

N_ALPHABETS = 50
MAX_CHARACTERS = 55    # characters of the largest alphabet: the target's output count
SIDE = 105             # original resolution
DEFAULT_IMAGE_SIZE = 28
# Ink images at 28x28, uint8 -> [0, 1], over all 32,460 images of omniglot.npz.
OMNIGLOT_MEAN = 0.0805
OMNIGLOT_STD = 0.2340


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or not 1 <= image_size <= SIDE:
        raise UserError(f"--image-size: must be an integer in 1..{SIDE} for Omniglot, got {image_size!r}")


def omniglot_info(image_size: int = DEFAULT_IMAGE_SIZE) -> DatasetInfo:
    """Static facts for Omniglot at `image_size` x `image_size` (classes_per_client is unused: -1)."""
    _check_image_size(image_size)
    return DatasetInfo("omniglot", MAX_CHARACTERS, (OMNIGLOT_MEAN,), (OMNIGLOT_STD,), -1,
                       (image_size, image_size, 1))


OMNIGLOT = omniglot_info(DEFAULT_IMAGE_SIZE)


class OmniglotRaw(NamedTuple):
    """The images and labels (`raw`) plus per-row metadata; rows sorted by (character, drawer)."""

    raw: RawDataset        # x_train (M, S, S, 1) uint8, ink = 255; y_train = character in alphabet; x_test empty
    alphabet: np.ndarray   # (M,) int32 0..49: the client that owns the row
    character: np.ndarray  # (M,) int32 0..1622: global character id
    drawer: np.ndarray     # (M,) int32 0..19: who drew it


def area_matrix(size: int, side: int = SIDE) -> np.ndarray:
    """(size, side) float32 matrix A with A @ img @ A.T the exact area average of img to size x size."""
    edges = np.arange(size + 1) * (side / size)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(side)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return (overlap / (side / size)).astype(np.float32)


def downsample(ink: np.ndarray, size: int) -> np.ndarray:
    """(n, 105, 105) ink in [0, 1] (bool or float) -> (n, size, size, 1) uint8 by area averaging."""
    a = area_matrix(size, ink.shape[-1])
    out = a @ (ink.astype(np.float32) @ a.T)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)[..., None]


def _assemble(x: np.ndarray, label: np.ndarray, alphabet: np.ndarray, character: np.ndarray,
              drawer: np.ndarray, source: str, sha256: str | None) -> OmniglotRaw:
    y = label.astype(np.int32)
    raw = RawDataset(x, y, np.zeros((0,) + x.shape[1:], np.uint8), np.zeros((0,), np.int32), source, sha256)
    return OmniglotRaw(raw, alphabet.astype(np.int32), character.astype(np.int32), drawer.astype(np.int32))


NPZ_KEYS = ("images_packed", "alphabet_id", "character_id", "character_in_alphabet", "drawer_id")


def load_omniglot_npz(path: Path, image_size: int = DEFAULT_IMAGE_SIZE, chunk: int = 2048) -> OmniglotRaw:
    """Load and validate `omniglot.npz` (layout of docs/data.md), downsampled to image_size.

    Cached per (file, size, modification time, image_size), read-only arrays: the cells of a grid
    in one process unpack and downsample the file once."""
    _check_image_size(image_size)
    return _load_omniglot_npz(*file_key(path), image_size, chunk)


@functools.lru_cache(maxsize=2)
def _load_omniglot_npz(path: Path, size: int, mtime_ns: int, image_size: int, chunk: int) -> OmniglotRaw:
    del size, mtime_ns  # cache key only: a replaced file is read again
    fix = "replace it with a good copy of omniglot.npz (see docs/data.md)"
    check_npz_header(path, fix)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = set(NPZ_KEYS) - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; {fix}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read the file ({npz_problem(e)}): it is truncated or corrupt; {fix}") from e
    packed = arrays["images_packed"]
    m = len(packed)
    if packed.dtype != np.uint8 or packed.shape[1:] != (SIDE, (SIDE + 7) // 8):
        raise DataError(f"{path}: images_packed must be uint8 of shape (n, {SIDE}, {(SIDE + 7) // 8}), "
                        f"got {packed.dtype} {packed.shape}; {fix}")
    for k in NPZ_KEYS[1:]:
        v = arrays[k]
        if v.shape != (m,) or not np.issubdtype(v.dtype, np.integer):
            raise DataError(f"{path}: {k} must be integers of shape ({m},), got {v.dtype} {v.shape}; {fix}")
    alphabet, char_in = arrays["alphabet_id"], arrays["character_in_alphabet"]
    if m == 0 or alphabet.min() < 0 or alphabet.max() >= N_ALPHABETS or char_in.min() < 1 \
            or char_in.max() > MAX_CHARACTERS:
        raise DataError(f"{path}: alphabet_id must be in 0..{N_ALPHABETS - 1} and character_in_alphabet in "
                        f"1..{MAX_CHARACTERS}; {fix}")
    x = np.empty((m, image_size, image_size, 1), np.uint8)
    for s in range(0, m, chunk):
        background = np.unpackbits(packed[s:s + chunk], axis=-1, count=SIDE)  # 1 = white background
        x[s:s + chunk] = downsample(1 - background, image_size)
    out = _assemble(x, char_in - 1, alphabet, arrays["character_id"], arrays["drawer_id"], str(path),
                    sha256_file(path))
    for a in (*out.raw[:4], *out[1:]):
        a.setflags(write=False)
    return out


def load_omniglot_tfds(data_dir: Path | None, image_size: int = DEFAULT_IMAGE_SIZE,
                       download: bool = False) -> OmniglotRaw:
    """TensorFlow Datasets `omniglot`, splits train (background) + test (evaluation).

    Tested offline with `tfds.testing.mock_data` (tests/test_tfds.py); written against the TFDS 4.9 builder:
    features image (105,105,3) uint8 with white background, alphabet (ClassLabel over all 50
    names sorted), alphabet_char_id (0-based). Alphabets are renumbered to the npz order
    (background sorted, then evaluation sorted); TFDS keeps no drawer, so `drawer` is the
    drawing's rank inside its character in read order.
    """
    _check_image_size(image_size)
    try:
        import tensorflow_datasets as tfds  # optional extra, imported lazily
    except ImportError as e:
        raise DataError("TensorFlow Datasets is not installed: `pip install -e .[tfds]`, "
                        "or put omniglot.npz in --data-dir") from e
    kw = dict(data_dir=str(data_dir) if data_dir else None)
    parts = []
    try:
        if download:
            tfds.builder("omniglot", file_format="array_record", **kw).download_and_prepare()  # data_source reads it
        for split in ("train", "test"):
            ds = tfds.data_source("omniglot", split=split, download=False, **kw)
            items = [ds[i] for i in range(len(ds))]
            ink = np.stack([np.asarray(it["image"])[..., 0] < 128 for it in items])
            parts.append((downsample(ink, image_size), np.array([it["alphabet"] for it in items]),
                          np.array([it["alphabet_char_id"] for it in items])))
    except Exception as e:
        raise DataError(f"TFDS could not read 'omniglot' from {kw['data_dir'] or 'its default folder'} ({e}); "
                        "prepare it with --download, or put omniglot.npz in --data-dir") from e
    # TFDS alphabet ids follow the sorted names of all 50: background ones (in train) first, then the rest.
    ids = np.concatenate([p[1] for p in parts])
    char_ids = np.concatenate([p[2] for p in parts])
    if ids.min() < 0 or ids.max() >= N_ALPHABETS or char_ids.min() < 0 or char_ids.max() >= MAX_CHARACTERS:
        raise DataError(f"TFDS 'omniglot': alphabet ids must be in 0..{N_ALPHABETS - 1} and alphabet_char_id in "
                        f"0..{MAX_CHARACTERS - 1}; the prepared data is not TFDS's omniglot 3.x, prepare it again")
    bg = np.unique(parts[0][1])
    ev = np.setdiff1d(np.unique(parts[1][1]), bg)  # (disjoint in the real data)
    remap = np.zeros(N_ALPHABETS, np.int64)
    remap[np.concatenate([bg, ev])] = np.arange(len(bg) + len(ev))
    x = np.concatenate([p[0] for p in parts])
    alphabet = remap[np.concatenate([p[1] for p in parts])]
    char_in = np.concatenate([p[2] for p in parts])
    order = np.lexsort((np.arange(len(x)), char_in, alphabet))  # stable: (alphabet, character, read order)
    x, alphabet, char_in = x[order], alphabet[order], char_in[order]
    key = alphabet * MAX_CHARACTERS + char_in
    _, character = np.unique(key, return_inverse=True)
    drawer = np.arange(len(x)) - np.searchsorted(key, key, side="left")
    return _assemble(x, char_in, alphabet, character, drawer, "tfds:omniglot", None)


def load_omniglot(data_dir: str | os.PathLike | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                  source: str = "auto", download: bool = False) -> OmniglotRaw:
    """Omniglot from `<data_dir>/omniglot.npz` ('npz'), TFDS ('tfds'), or either ('auto')."""
    if source not in ("auto", "npz", "tfds"):
        raise UserError(f"--data-source: unknown source '{source}'; choose auto, npz or tfds")
    d = resolve_data_dir(data_dir)
    npz = d / "omniglot.npz" if d is not None else None
    if source in ("auto", "npz") and npz is not None and npz.is_file():
        return load_omniglot_npz(npz, image_size)
    if source == "tfds" or (source == "auto" and download):
        return load_omniglot_tfds(d, image_size, download)
    raise not_found("omniglot", npz)


def make_omniglot_split(data: OmniglotRaw, num_clients: int = N_ALPHABETS, seed: int = 0,
                        n_train: int = 14, n_val: int = 3) -> SplitSummary:
    """Client i = alphabet i; each character's drawings split n_train / n_val / rest, from `seed`."""
    if not 1 <= num_clients <= N_ALPHABETS:
        raise UserError(f"--num-clients: Omniglot has {N_ALPHABETS} alphabets, one per client; "
                        f"got {num_clients}, use 1..{N_ALPHABETS}")
    counts = np.bincount(data.character)
    fewest = int(counts[counts > 0].min())
    if n_train < 1:
        raise UserError(f"--n-train: need at least 1 training drawing per character, got {n_train}")
    if n_val < 0 or n_train + n_val >= fewest:
        raise UserError(f"--n-val: n_train + n_val must leave test drawings (characters have {fewest}); "
                        f"got n_train={n_train}, n_val={n_val}")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    order = np.lexsort((rng.random(len(data.character)), data.character))  # by character, shuffled within
    sorted_char = data.character[order]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(sorted_char, sorted_char, side="left")
    train, val, test = [], [], []
    for client in range(num_clients):
        rows = np.flatnonzero(data.alphabet == client)
        r = rank[rows]
        train.append(rows[r < n_train])
        val.append(rows[(r >= n_train) & (r < n_train + n_val)])
        test.append(rows[r >= n_train + n_val])
    return SplitSummary(None, train, val, test)
