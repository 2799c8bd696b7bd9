"""pFedHN on Flower (pfedhn_jax/flower): Flower's simulation engine computes scripts/train.py's
numbers, and the server refuses bad replies without touching the hypernetwork.

The engine test runs the real ServerApp and ClientApp under `flwr.simulation.run_simulation`
(Ray) with N = 4 tiny clients and a fixed client order, against `loop.train` (scripts/train.py
--client-order) on the same split. The fault test drives the real server strategy and the real
ClientApp through an in-memory Grid that corrupts some replies on their way back.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs the [flower] extra: pip install -e '.[flower]'")

from flwr.app import Array, Context, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from conftest import TINY_RUN  # noqa: E402
from pfedhn_jax.config import Config  # noqa: E402
from pfedhn_jax.flower import client_app, codec  # noqa: E402
from pfedhn_jax.flower.shards import prepare, shard_file  # noqa: E402

ORDER = [2, 0, 3, 1, 2, 2]   # the fixed client of each round (replayed with --client-order)


@pytest.fixture(scope="module")
def federation(small_cifar_dir, tmp_path_factory):
    """A prepared 4-client federation of the suite's tiny run, with a fixed client order."""
    d = tmp_path_factory.mktemp("flower")
    np.savez(d / "order.npz", client_order=np.asarray(ORDER, np.int64))
    cfg = Config(**TINY_RUN, data_dir=str(small_cifar_dir), num_steps=4, eval_every=2,
                 client_order=str(d / "order.npz"))
    prepare(cfg, d / "fed")
    return cfg, d


def test_simulation_engine_equals_train_with_client_order(federation, tmp_path):
    from pfedhn_jax.flower.simulation import run
    from pfedhn_jax.loop import train
    cfg, d = federation
    ref = train(dataclasses.replace(cfg, out=str(tmp_path / "train")), progress=False)
    fl = run(str(d / "fed"), str(tmp_path / "flower"), round_timeout=120, node_wait=120, progress=False)
    assert fl["status"] == "finished" and not fl["flower"]["faults"]
    keys = ("step", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss")
    got = [[p[k] for k in keys] for p in fl["curves"]]
    want = [[p[k] for k in keys] for p in ref["curves"]]
    assert [g[0] for g in got] == [1, 3, 4]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=0)  # float32 rounding at most
    assert fl["best"]["best_step"] == ref["best"]["best_step"]
    np.testing.assert_allclose(fl["best"]["test_per_client"], ref["best"]["test_per_client"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7),
                 jax.device_get(fl["state"].server.params), jax.device_get(ref["state"].server.params))
    # the same files as scripts/train.py: results.json, curves.png, an orbax checkpoint of the last round
    assert {p.name for p in (tmp_path / "flower").iterdir()} >= {"results.json", "curves.png", "checkpoints"}
    assert (tmp_path / "flower" / "checkpoints" / "4").is_dir()
    w = fl["flower"]["wire"]
    assert w["counts"]["train"][0] == 4
    assert w["train_bytes_down_per_round"] > fl["communication"]["bytes_down_per_round"]


class CorruptingGrid(Grid):
    """An in-memory Grid: each node is the real ClientApp on its shard; `corrupt[step]` rewrites
    the train reply of that round on its way back (a fake network, not a fake client)."""

    def __init__(self, fed, corrupt):
        from flwr.supercore.task_identity import TaskIdentity
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # as run_simulation sets them
        self.nodes = {100 + i: Context(run_id=1, node_id=100 + i, node_config={"shard": str(shard_file(fed, i))},
                                       state=RecordDict(), run_config={}) for i in range(4)}
        self.corrupt, self.replies, self.ids = corrupt, {}, itertools.count()

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        out = []
        for m in messages:
            mid = f"m{next(self.ids)}"
            m.metadata.__dict__["_message_id"] = mid   # as Flower's InMemoryGrid does
            reply = client_app.handle(m, self.nodes[m.metadata.dst_node_id])
            if m.metadata.message_type == "train" and int(m.content["config"]["step"]) in self.corrupt:
                self.corrupt[int(m.content["config"]["step"])](reply.content["delta"])
            self.replies[mid] = reply
            out.append(mid)
        return out

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _first(record):
    return next(iter(record.keys()))


CORRUPTIONS = {
    "shape": lambda r: r.__setitem__(_first(r), Array(np.zeros((3,), np.float32))),
    "dtype": lambda r: r.__setitem__(_first(r), Array(r[_first(r)].numpy().astype(np.float64))),
    "non-finite": lambda r: r.__setitem__(_first(r), Array(np.full(r[_first(r)].shape, np.nan, np.float32))),
}


def test_bad_replies_are_refused_and_leave_the_hypernetwork_unchanged(federation, tmp_path, capfd):
    from pfedhn_jax.flower.rounds import ServerRunState
    from pfedhn_jax.flower.server_app import PFedHNServer
    from pfedhn_jax.flower.shards import initial_state
    cfg, d = federation
    fed = str(d / "fed")
    grid = CorruptingGrid(fed, {s: f for s, f in enumerate(CORRUPTIONS.values())})
    srv = PFedHNServer(grid, fed, str(tmp_path / "out"), round_timeout=30, node_wait=30)
    init = initial_state(srv.alg, srv.cfg)
    state = ServerRunState(init.step, init.server, init.key)
    assert srv.clients.wait_for(range(4), 10) == []
    capfd.readouterr()
    for step, name in enumerate(CORRUPTIONS):
        new, metrics = srv.train_round(state, np.asarray([ORDER[step]]), 0)
        assert metrics is None, name
        assert int(new.step) == step + 1
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.server), jax.device_get(state.server))
        lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        assert f"node {100 + ORDER[step]} (client {ORDER[step]})" in lines[0] and "refused" in lines[0], lines[0]
        assert {"shape": "shape (3,)", "dtype": "float64", "non-finite": "non-finite"}[name] in lines[0]
        state = new
    new, metrics = srv.train_round(state, np.asarray([ORDER[3]]), 0)   # an honest reply is applied
    assert metrics is not None and np.isfinite(metrics.loss).all()
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(new.server.params),
                           jax.device_get(state.server.params))
    assert any(jax.tree.leaves(changed))
    assert [f["step"] for f in srv.faults] == [1, 2, 3]


def test_update_from_differences_is_server_update(federation):
    """The server's update from δ = θ − θ̃ is the library's `server.server_update` from θ̃."""
    from pfedhn_jax import server
    from pfedhn_jax.builders import build_algorithm
    from pfedhn_jax.flower.rounds import ServerRound
    from pfedhn_jax.flower.shards import initial_state
    cfg, _ = federation
    alg = build_algorithm(cfg)
    rounds = ServerRound(alg, cfg)
    srv = initial_state(alg, cfg).server
    ids = jax.numpy.asarray([1], jax.numpy.int32)
    theta = alg.hnet.apply(srv.params, ids)
    tilde = jax.tree.map(lambda t: t * 0.9 + 0.01, theta)
    want = server.server_update(alg.hnet, alg.server_optimizer(), srv, ids, tilde)
    got = rounds.update(srv, ids, jax.tree.map(lambda a, b: a - b, theta, tilde))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got.params, want.params)


def test_reply_decoding_names_what_differs():
    template = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((4,), np.float32)}
    rec = codec.to_record(template)
    out = codec.from_record(rec, template, "delta")
    jax.tree.map(np.testing.assert_array_equal, out, template)
    del rec["['b']"]
    with pytest.raises(codec.BadReply, match="missing"):
        codec.from_record(rec, template, "delta")


def test_certs_command_writes_the_files_and_refuses_bad_flags(tmp_path, capsys):
    """`scripts/flower.py certs`: the CA, the SuperLink's certificate for its hosts, node key pairs
    (private ones 0600); a bad flag is one line naming it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("flower_script", Path(__file__).parents[1] / "scripts" / "flower.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["certs", "--dir", str(tmp_path / "c"), "--nodes", "2", "--hosts", "localhost,127.0.0.1"]) == 0
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert names == {"ca.crt", "ca.key", "server.pem", "server.key", "node-0", "node-0.pub", "node-1", "node-1.pub"}
    assert all((tmp_path / "c" / n).stat().st_mode & 0o077 == 0 for n in ("ca.key", "server.key", "node-0"))
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert (tmp_path / "c" / "node-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    capsys.readouterr()
    assert mod.main(["certs", "--dir", str(tmp_path / "d"), "--nodes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --nodes 0: give at least 1 (one key pair per SuperNode)"]
