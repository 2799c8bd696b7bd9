"""`prepare`: one federation's split written as per-client shards, for SuperNodes on other machines.

A federation folder holds
  federation.json     the run's Config, the data description (checksum, per-client counts) and
                      each split's padded length L (the simulation's)
  client-<i>.npz      client i's own images only (train, val and test), its index arrays into
                      them padded to the federation's L, and its initial private state
                      (pFedHN-PC's head and its optimizer state; nothing for pFedHN)
The split is `builders.load_data(cfg)`'s, the one `scripts/train.py` trains on, and each client's
index rows keep the simulation's padded length, so a client's batches and evaluation compute the
simulation's numbers. A SuperNode loads only its own shard (`load_shard`); nothing here imports flwr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import results as rio
from pfedhn_jax.config import NOT_THE_RUN, Config
from pfedhn_jax.data.federated import ClientIndex, FederatedData
from pfedhn_jax.errors import UserError

FORMAT = 1
SPLITS = ("train", "val", "test")


def federation_file(fed_dir: str | Path) -> Path:
    return Path(fed_dir) / "federation.json"


def shard_file(fed_dir: str | Path, client: int) -> Path:
    return Path(fed_dir) / f"client-{client}.npz"


def check_supported(cfg: Config) -> None:
    """The Flower deployment runs pFedHN and pFedHN-PC on one target; refuse the rest with one line."""
    if cfg.widths:
        raise UserError("--client-widths: heterogeneous targets are not supported by the Flower deployment yet")
    if cfg.init_from is not None:
        raise UserError("--init-from: a reference run's initial weights are not supported by the Flower deployment")


def initial_state(alg, cfg: Config):
    """The run's initial TrainState exactly as `programs.GroupPrograms.init` makes it for one run
    (`vmap(alg.init)` over a run axis of 1, the hypernetwork lr set in its optimizer state), run
    axis squeezed. The server keeps the hypernetwork part; `prepare` gives each client its private part."""
    from pfedhn_jax import server
    from pfedhn_jax.xla import init_compiler_options

    def init(key_data, lrs):
        state = jax.vmap(alg.init)(jax.random.wrap_key_data(key_data))
        return state._replace(server=state.server._replace(
            opt_state=server.set_learning_rate(state.server.opt_state, lrs)))

    key_data = np.asarray(jax.random.key_data(jax.random.key(cfg.seed)))[None]
    state = jax.jit(init, compiler_options=init_compiler_options())(key_data, np.asarray([cfg.effective_lr], np.float32))
    return jax.tree.map(lambda a: a[0], state)


def prepare(cfg: Config, fed_dir: str | Path) -> dict:
    """Write federation.json and one shard per client; returns the federation record."""
    from pfedhn_jax.builders import build_algorithm, load_data
    from pfedhn_jax.data.registry import validate
    cfg = validate(cfg)
    check_supported(cfg)
    fed_dir = Path(fed_dir)
    fed_dir.mkdir(parents=True, exist_ok=True)
    data, _, desc = load_data(cfg)
    alg = build_algorithm(cfg)
    state = initial_state(alg, cfg)
    x, y = np.asarray(data.x), np.asarray(data.y)
    host = {s: (np.asarray(getattr(data, s).index), np.asarray(getattr(data, s).count)) for s in SPLITS}
    private = jax.tree.map(np.asarray, state.clients)
    record = {"format": FORMAT, "config": dataclasses.replace(cfg, out=None).to_dict(), "data": desc,
              "padded_length": {s: int(host[s][0].shape[1]) for s in SPLITS}}
    record["federation_id"] = federation_id(record)
    for i in range(cfg.num_clients):
        own = np.unique(np.concatenate([host[s][0][i, :host[s][1][i]] for s in SPLITS]))
        arrays = {"x": x[own], "y": y[own], "mean": np.asarray(data.mean), "std": np.asarray(data.std)}
        for s in SPLITS:
            row = host[s][0][i]
            local = np.searchsorted(own, row)
            valid = (local < len(own)) & (own[np.minimum(local, len(own) - 1)] == row)
            arrays[f"{s}_index"] = np.where(valid, local, 0).astype(np.int32)  # padding past count: never read
            arrays[f"{s}_count"] = np.int32(host[s][1][i])
        leaves = jax.tree.leaves(jax.tree.map(lambda a: a[i], private))
        for j, leaf in enumerate(leaves):
            arrays[f"private_{j}"] = leaf
        arrays["client_id"] = np.int32(i)
        arrays["federation"] = np.asarray(json.dumps({k: record[k] for k in ("format", "config", "federation_id")}))
        tmp = shard_file(fed_dir, i).with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(shard_file(fed_dir, i))
    rio.write_json(federation_file(fed_dir), record)
    return record


def federation_id(record: dict) -> str:
    """A short fingerprint of the run's config and data: a SuperNode whose shard has another is refused."""
    cfg = {k: v for k, v in record["config"].items() if k not in NOT_THE_RUN}
    text = json.dumps({"config": cfg, "sha256": record["data"].get("sha256")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_federation(fed_dir: str | Path) -> tuple[Config, dict]:
    """(Config, record) of a prepared federation folder; one line when it is missing or foreign."""
    rec = rio.read_json(federation_file(fed_dir))
    if rec is None:
        raise UserError(f"{federation_file(fed_dir)}: no federation here; run `scripts/flower.py prepare` first")
    if rec.get("format") != FORMAT:
        raise UserError(f"{federation_file(fed_dir)}: format {rec.get('format')}, expected {FORMAT}; prepare it again")
    return Config(**rec["config"]), rec


class Shard(NamedTuple):
    client_id: int
    config: Config
    federation_id: str
    data: FederatedData     # one client: ClientIndex leaves (1, L), the images its own
    private: object         # pytree of its initial private state (ClientState leaves, no client axis)


def read_header(path: str | Path) -> tuple[int, Config, str]:
    """(client id, Config, federation id) of a shard, reading nothing else."""
    with np.load(path) as f:
        head = json.loads(str(f["federation"]))
        cid = int(f["client_id"])
    if head.get("format") != FORMAT:
        raise UserError(f"{path}: shard format {head.get('format')}, expected {FORMAT}; prepare it again")
    return cid, Config(**head["config"]), head["federation_id"]


def load_shard(path: str | Path, template) -> Shard:
    """A client's shard; `template` is a ClientState of one client (its tree structure)."""
    cid, cfg, fid = read_header(path)
    with np.load(path) as f:
        a = {k: f[k] for k in f.files if k != "federation"}
    idx = {s: ClientIndex(jnp.asarray(a[f"{s}_index"][None]), jnp.asarray(a[f"{s}_count"].reshape(1)))
           for s in SPLITS}
    data = FederatedData(jnp.asarray(a["x"]), jnp.asarray(a["y"]), jnp.asarray(a["mean"]), jnp.asarray(a["std"]),
                         idx["train"], idx["val"], idx["test"])
    leaves, treedef = jax.tree.flatten(template)
    n = sum(k.startswith("private_") for k in a)
    if n != len(leaves):
        raise UserError(f"{path}: holds {n} private arrays, the config's algorithm has {len(leaves)}; prepare again")
    private = jax.tree.unflatten(treedef, [jnp.asarray(a[f"private_{j}"]) for j in range(n)])
    return Shard(cid, cfg, fid, data, private)


