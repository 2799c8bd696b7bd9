"""Several processes: two processes under jax.distributed on localhost (gloo CPU collectives), one
CPU device each, train two seeds sharded over them and get the numbers of one process; only
process 0 writes results. Also the --cpu-devices / multi-host flag checks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_RUN, xla_env
from pfedhn_jax import distributed
from pfedhn_jax.errors import UserError

SCRIPT = """
import json, sys
from pfedhn_jax import distributed
distributed.initialize(sys.argv[2], 2, int(sys.argv[3]))
import jax
from pfedhn_jax.config import Config
from pfedhn_jax.loop import train_seeds
cfg = Config(**json.loads(sys.argv[4]), out=sys.argv[1])
g = train_seeds(cfg, [5, 6], progress=False)
print("RESULT " + json.dumps({"process": jax.process_index(), "devices": len(jax.devices()),
                              "curves": [r["curves"] for r in g["runs"]]}))
"""
CFG = dict(TINY_RUN, num_steps=4, eval_every=2, checkpoint_every=4)  # one process: test_group's 2-seed program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(small_cifar_dir, tmp_path):
    data_dir = small_cifar_dir  # real images, a small file every process reads fast
    from pfedhn_jax.config import Config
    from pfedhn_jax.loop import train_seeds
    one = train_seeds(Config(data_dir=str(data_dir), out=None, **CFG), [5, 6], progress=False)
    cfg = json.dumps({**CFG, "data_dir": str(data_dir)})
    addr = f"127.0.0.1:{free_port()}"
    env = xla_env()  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "out"), addr, str(i), cfg],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    got = [json.loads(next(line[7:] for line in o.splitlines() if line.startswith("RESULT "))) for o, _ in outs]
    assert sorted(g["process"] for g in got) == [0, 1] and all(g["devices"] == 2 for g in got)
    for g in got:
        for mine, ref in zip(g["curves"], one["runs"]):
            for a, b in zip(mine, ref["curves"]):
                for k in ("val_acc", "test_acc"):
                    assert a[k] == pytest.approx(b[k], abs=1e-6)
                for k in ("train_loss", "val_loss", "test_loss"):
                    assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6)
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "seed-5", "seed-6", "summary.json", "summary.md"]


def test_flag_checks():
    with pytest.raises(UserError, match="^--cpu-devices"):
        distributed.set_cpu_devices("two")
    with pytest.raises(UserError, match="^--num-processes"):
        distributed.initialize("localhost:1234", None, 0)
    with pytest.raises(UserError, match="^--process-id"):
        distributed.initialize("localhost:1234", 2, 2)
    assert distributed.initialize() is False and distributed.is_main()
