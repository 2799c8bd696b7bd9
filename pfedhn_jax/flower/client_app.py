"""The Flower ClientApp: one client's data and private state, the simulation's jitted local update.

A SuperNode is given its shard (`--node-config 'shard="fed/client-3.npz"'`, optionally
`state-dir="..."`); under Flower's simulation engine the shard is `<federation>/client-<partition-id>.npz`
(run config `federation`). It answers three messages:
  query     its client id and federation id (the server maps clients to nodes and refuses strangers)
  train     θ_i and a local PRNG key in; `local_update` on its own data; δ_i = θ_i − θ̃_i out
  evaluate  θ_i in; its validation and test counts (correct, total, mean loss) out
pFedHN-PC's private head and its optimizer state never leave the client: they live in
`<state-dir>/<run>/private-<t>.npz`, the state after t rounds of the run. A round t uses the newest
file with t' ≤ t, so a server restarted from an older checkpoint replays the client's head from
where that checkpoint was; files the server's checkpoint no longer needs are pruned.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pfedhn_jax.flower import codec
from pfedhn_jax.flower.rounds import ClientRunner
from pfedhn_jax.flower.shards import load_shard, shard_file

_CLIENTS: dict = {}   # one FlowerClient per shard in this process (a simulation actor serves many rounds)


class FlowerClient:
    def __init__(self, shard: str | Path, state_dir: str | Path | None = None):
        from pfedhn_jax.builders import build_algorithm
        from pfedhn_jax.flower.shards import read_header
        self.path = Path(shard)
        cid, cfg, _ = read_header(self.path)
        self.alg = build_algorithm(cfg)
        template = codec.one_client(jax.eval_shape(lambda: self.alg.init(jax.random.key(0)).clients))
        self.shard = load_shard(self.path, template)
        self.client_id, self.cfg = self.shard.client_id, self.shard.config
        self.runner = ClientRunner(self.alg, self.cfg)
        self.theta_template = codec.theta_template(self.alg)
        self.state_dir = Path(state_dir) if state_dir else self.path.parent / "state" / f"client-{self.client_id}"

    # ---------------------------------------------------------------- private state on disk
    def _versions(self, run: str) -> dict[int, Path]:
        d = self.state_dir / run
        if not d.is_dir():
            return {}
        return {int(m.group(1)): p for p in d.iterdir() if (m := re.fullmatch(r"private-(\d+)\.npz", p.name))}

    def load_private(self, run: str, step: int):
        """The private state after the newest round t' ≤ step of this run (the shard's initial one if none)."""
        older = [t for t in self._versions(run) if t <= step]
        if not older:
            return self.shard.private
        with np.load(self._versions(run)[max(older)]) as f:
            leaves = [f[f"private_{j}"] for j in range(len(f.files))]
        return jax.tree.unflatten(jax.tree.structure(self.shard.private), leaves)

    def save_private(self, run: str, step: int, private, committed: int) -> None:
        """Keep the state after round `step`; drop states of a timeline the server abandoned (> step)
        and ones older than the newest state at or before the server's checkpoint (`committed`)."""
        d = self.state_dir / run
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"private-{step}.tmp.npz"
        np.savez(tmp, **{f"private_{j}": np.asarray(x) for j, x in enumerate(jax.tree.leaves(private))})
        os.replace(tmp, d / f"private-{step}.npz")
        versions = self._versions(run)
        keep_from = max([t for t in versions if t <= committed], default=0)
        for t, p in versions.items():
            if t > step or t < keep_from:
                p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- the three messages
    def query(self) -> RecordDict:
        return RecordDict({"client": ConfigRecord({"client_id": self.client_id,
                                                   "federation_id": self.shard.federation_id})})

    def _theta(self, msg: Message, cfg: ConfigRecord):
        if int(cfg["client_id"]) != self.client_id:
            raise ValueError(f"this node holds client {self.client_id}, the message is for client {cfg['client_id']}")
        return codec.from_record(msg.content["theta"], self.theta_template, "theta")

    def train(self, msg: Message) -> RecordDict:
        cfg = msg.content["config"]
        run, step = str(cfg["run"]), int(cfg["step"])
        theta = self._theta(msg, cfg)
        key = np.asarray(cfg["key"], np.uint32)
        private = self.load_private(run, step)
        res = self.runner.train(self.shard.data, theta, private.private, private.opt_state, key)
        self.save_private(run, step + 1, private._replace(private=res.private, opt_state=res.private_opt_state),
                          int(cfg["committed"]))
        return RecordDict({"delta": codec.to_record(res.delta),
                           "metrics": MetricRecord({"loss": float(res.loss), "delta_norm": float(res.delta_norm),
                                                    "client_id": self.client_id, "step": step})})

    def evaluate(self, msg: Message) -> RecordDict:
        cfg = msg.content["config"]
        run, step = str(cfg["run"]), int(cfg["step"])
        theta = self._theta(msg, cfg)
        private = self.load_private(run, step)
        val, test = jax.device_get(self.runner.evaluate(self.shard.data, theta, private.private))
        m = {"client_id": self.client_id, "step": step}
        for name, cm in (("val", val), ("test", test)):
            m.update({f"{name}_correct": int(cm.correct[0]), f"{name}_total": int(cm.total[0]),
                      f"{name}_loss": float(cm.loss[0])})
        return RecordDict({"metrics": MetricRecord(m)})


def client_for(context: Context, federation: str | None = None) -> FlowerClient:
    """This node's client: the shard named by its node config, or by partition-id in a simulation
    (in the folder `federation`, default the run config's)."""
    nc, rc = context.node_config, context.run_config
    federation = federation or rc.get("federation")
    if "shard" in nc:
        shard, state_dir = str(nc["shard"]), nc.get("state-dir")
    elif "partition-id" in nc and federation:
        shard = str(shard_file(str(federation), int(nc["partition-id"])))
        state_dir = None
    else:
        raise ValueError("this SuperNode has no shard: start it with --node-config 'shard=\"<fed>/client-<i>.npz\"'")
    if shard not in _CLIENTS:
        _CLIENTS[shard] = FlowerClient(shard, None if state_dir in (None, "") else str(state_dir))
    return _CLIENTS[shard]


def handle(msg: Message, context: Context, federation: str | None = None) -> Message:
    """The reply of this node's client to a query, train or evaluate message."""
    c = client_for(context, federation)
    kind = msg.metadata.message_type.split(".")[0]
    content = {"query": lambda: c.query(), "train": lambda: c.train(msg), "evaluate": lambda: c.evaluate(msg)}[kind]()
    return Message(content, reply_to=msg)


def make_app(federation: str | None = None) -> ClientApp:
    """A ClientApp; `federation` overrides the run config's (the simulation engine's clients)."""
    client = ClientApp()
    for register in (client.query, client.train, client.evaluate):
        register()(lambda m, c: handle(m, c, federation))
    return client


app = make_app()
