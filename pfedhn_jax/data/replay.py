"""Replay a run of the reference trainer: its federated split, initial weights and client order.

The reference (docs/reference.md §3-§4) draws its split, its initial hypernetwork (and, for
pFedHN-PC, each client's private head) and the client of every outer step from its own RNGs.
A tool that runs the unchanged reference trainer dumps what it drew into one npz:

    split/{train,val,test}/<c>   int, raw indices of client c: train and val are positions in
                                 x_train (val is carved out of it), test positions in x_test
    hnet/<name>                  the initial hypernetwork state_dict (PyTorch layout, numpy)
    local/<c>/<name>             pFedHN-PC: client c's initial private nn.Linear, `*weight`
                                 (out, in) and `*bias` (out,) (the reference names them
                                 `layer.0.weight` / `layer.0.bias`)
    client_order                 (num_steps,) int, the client drawn at each outer step

The loaders read one part each (--split-file and --client-order here, --init-from in
`pfedhn_jax/replay.py`, beside `interop`, since it builds algorithm state), so that a run of ours can
start from exactly the reference's draws; only the batch sampling then differs. Every bad input
raises one `UserError` line naming the flag, the file and the fix.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pfedhn_jax.data.federated import SplitSummary
from pfedhn_jax.data.sources import check_npz_header, npz_problem
from pfedhn_jax.errors import UserError

SPLIT_FLAG = "--split-file"
INIT_FLAG = "--init-from"
ORDER_FLAG = "--client-order"
SPLITS = ("train", "val", "test")
DUMP_HINT = "write it with run_official.py and PFEDHN_OFFICIAL_DUMP=<file>.npz"


# ----------------------------------------------------------------------------- helpers


def _ids(ids: Iterable) -> str:
    """A short printable list: at most 8 items, then the count."""
    ids = list(ids)
    head = ", ".join(map(str, ids[:8]))
    return f"[{head}{f', ... ({len(ids)} in all)' if len(ids) > 8 else ''}]"


def _read_npz(path: str | Path, flag: str, prefixes: tuple[str, ...] = ("",)) -> dict[str, np.ndarray]:
    """The arrays of an npz file whose names start with one of `prefixes` (the others stay unread).

    One UserError if the file is missing, unreadable or not an npz.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag}: {p} does not exist; pass the npz dumped by the reference ({DUMP_HINT})")
    try:
        check_npz_header(p, DUMP_HINT, UserError)
    except UserError:
        raise UserError(f"{flag}: {p} is not a readable npz file (no zip header: corrupt, or of another format); "
                        f"{DUMP_HINT}") from None
    try:
        f = np.load(p, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an npz archive")
        with f:
            return {k: f[k] for k in f.files if k.startswith(prefixes)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{flag}: {p} is not a readable npz file ({npz_problem(e)}); {DUMP_HINT}") from e


def _is_id(s: str) -> bool:
    """'0', '17' are client ids; '01', '-1', 'x' are not."""
    return s.isdigit() and str(int(s)) == s


def _check_clients(names: Iterable[str], num_clients: int, flag: str, path: str | Path, what: str) -> None:
    """Raise unless the client-id strings `names` are exactly '0'..'N-1' (saying which are missing/extra)."""
    names = set(names)
    missing = sorted(set(range(num_clients)) - {int(s) for s in names if _is_id(s)})
    extra = sorted(s for s in names if not _is_id(s) or int(s) >= num_clients)
    if missing or extra:
        detail = "; ".join(s for s in (f"missing clients {_ids(missing)}" if missing else "",
                                       f"unexpected clients {_ids(extra)}" if extra else "") if s)
        raise UserError(f"{flag}: {path}: {what} must cover exactly clients 0..{num_clients - 1}: {detail}; "
                        f"dump the reference with --num-nodes {num_clients}, or set --num-clients to the "
                        "dump's client count")


def _index_array(a: np.ndarray, key: str, bound: int, bound_name: str, path: str | Path) -> np.ndarray:
    """A validated 1-D integer index array with values in [0, bound)."""
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise UserError(f"{SPLIT_FLAG}: {path}: {key} must be a 1-D integer array, got {a.dtype} {a.shape}; "
                        f"{DUMP_HINT}")
    if a.size and (a.min() < 0 or a.max() >= bound):
        bad = a[(a < 0) | (a >= bound)]
        raise UserError(f"{SPLIT_FLAG}: {path}: {key} has {bad.size} indices outside 0..{bound - 1} "
                        f"(first {int(bad[0])}; {bound_name} has {bound} samples); the dump was made on "
                        "another dataset: use that one")
    return a.astype(np.int64)


def _first_duplicate(lists: list[np.ndarray]) -> tuple[int, int, int, int] | None:
    """(sample, client a, client b, number of duplicated samples) for indices held twice, else None."""
    if not lists:
        return None
    flat = np.concatenate(lists)
    owner = np.repeat(np.arange(len(lists)), [len(ix) for ix in lists])
    order = np.argsort(flat, kind="stable")
    flat, owner = flat[order], owner[order]
    dup = np.flatnonzero(flat[1:] == flat[:-1])
    if not dup.size:
        return None
    i = dup[0]
    return int(flat[i]), int(owner[i]), int(owner[i + 1]), int(np.unique(flat[dup]).size)


# ----------------------------------------------------------------------------- split


def load_split_file(path: str | Path, n_train: int, n_test: int, num_clients: int) -> SplitSummary:
    """The reference's federated split from a dump (`split/{train,val,test}/<c>`).

    n_train, n_test: sizes of the raw dataset's x_train and x_test (the ranges of the raw
    indices). Returns a `SplitSummary` (assignment None) whose lists are positions in
    [x_train; x_test], i.e. test indices shifted by n_train, ready for `federated.to_device`.
    Checked: readable npz, exactly clients 0..N-1 in each split, 1-D integer arrays in range,
    no sample in two clients of one split, no sample in both train and val, no client without
    training samples.
    """
    arrays = _read_npz(path, SPLIT_FLAG, ("split/",))
    out = {}
    for part in SPLITS:
        prefix = f"split/{part}/"
        _check_clients((k[len(prefix):] for k in arrays if k.startswith(prefix)), num_clients, SPLIT_FLAG, path,
                       f"the {part} split ({prefix}<c>)")
        bound, name = (n_test, "x_test") if part == "test" else (n_train, "x_train")
        lists = [_index_array(arrays[f"{prefix}{c}"], f"{prefix}{c}", bound, name, path) for c in range(num_clients)]
        dup = _first_duplicate(lists)
        if dup is not None:
            s, a, b, n = dup
            where = f"clients {a} and {b}" if a != b else f"client {a} twice"
            raise UserError(f"{SPLIT_FLAG}: {path}: {n} samples of the {part} split are assigned twice "
                            f"(e.g. {name}[{s}] in {where}); the file is corrupt or hand-edited: dump it again")
        out[part] = lists
    both = np.intersect1d(np.concatenate(out["train"]), np.concatenate(out["val"]))
    if both.size:
        raise UserError(f"{SPLIT_FLAG}: {path}: {both.size} samples are in both the train and the val split "
                        f"(e.g. x_train[{int(both[0])}]); the file is corrupt or hand-edited: dump it again")
    empty = [c for c, ix in enumerate(out["train"]) if not len(ix)]
    if empty:
        raise UserError(f"{SPLIT_FLAG}: {path}: clients {_ids(empty)} have no training samples; "
                        "dump a split with fewer clients (--num-nodes)")
    return SplitSummary(None, out["train"], out["val"], [ix + n_train for ix in out["test"]])


# ----------------------------------------------------------------------------- client order


def load_client_order(path: str | Path, num_clients: int, num_steps: int) -> np.ndarray:
    """The reference's client of each outer step (`client_order`), first `num_steps` of them.

    Returns int32 (num_steps,). The reference draws one client per step, so a replay runs with
    clients_per_step = 1 and feeds `order[t:t+1]` to step t.
    """
    arrays = _read_npz(path, ORDER_FLAG, ("client_order",))
    if "client_order" not in arrays:
        raise UserError(f"{ORDER_FLAG}: {path} has no 'client_order' array; {DUMP_HINT}")
    order = arrays["client_order"]
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise UserError(f"{ORDER_FLAG}: {path}: client_order must be a 1-D integer array, got "
                        f"{order.dtype} {order.shape}; {DUMP_HINT}")
    if len(order) < num_steps:
        raise UserError(f"{ORDER_FLAG}: {path} holds {len(order)} client draws, fewer than --num-steps "
                        f"{num_steps}; lower --num-steps to {len(order)} or dump a reference run of "
                        f"{num_steps} steps")
    order = order[:num_steps]
    bad = order[(order < 0) | (order >= num_clients)]
    if bad.size:
        raise UserError(f"{ORDER_FLAG}: {path}: client_order draws client {int(bad[0])}, outside "
                        f"0..{num_clients - 1}; set --num-clients to the dump's client count")
    return order.astype(np.int32)


# ----------------------------------------------------------------------------- initial weights
