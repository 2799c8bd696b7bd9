"""Long runs survive: chunked / interrupted runs resume bit-identically, divergence keeps the last good
checkpoint, mismatched configs and changed data are refused, --out is never changed without --overwrite.

Runs are the suite's TINY_RUN on the small slice of the real file (the programs of test_group's
single runs); the changed-data check writes its own random-pixel files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, TINY_RUN, sigterm_once_training, tiny_flags
from pfedhn_jax.checkpoint import Checkpointer
from pfedhn_jax.config import Config
from pfedhn_jax.errors import DataError, DivergenceError, UserError
from pfedhn_jax.loop import train
from pfedhn_jax.programs import GroupPrograms


@pytest.fixture(scope="module")
def fake_dir(small_cifar_dir):
    return small_cifar_dir


def tiny(data_dir, out, **kw) -> Config:
    base = dict(TINY_RUN, data_dir=str(data_dir), out=str(out), num_steps=40, eval_every=7, checkpoint_every=10)
    return Config(**{**base, **kw})


def curves(res):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in res["curves"]]


def assert_states_identical(a, b):
    a = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, a)
    b = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def snapshot(folder):
    """{relative path: (size, mtime_ns, bytes-hash)} of every file under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, hash(open(p, "rb").read()))
    return out


def test_two_chunks_equal_one_straight_run(fake_dir, tmp_path):
    straight = train(tiny(fake_dir, tmp_path / "a"), progress=False)
    cfg = tiny(fake_dir, tmp_path / "b")
    half = train(cfg, progress=False, stop_at=20)
    assert half["status"] == "paused" and int(half["state"].step) == 20
    assert Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 20
    resumed = train(cfg, progress=False)
    assert resumed["status"] == "finished" and resumed["resumed"][0]["at_step"] == 20
    assert curves(resumed) == curves(straight) and len(curves(straight)) == 7  # 1, 8, ..., 36, 40
    assert resumed["best"] == straight["best"]
    assert_states_identical(resumed["state"], straight["state"])  # hypernet, optimiser, private heads, key
    on_disk = json.loads((tmp_path / "b" / "results.json").read_text())
    assert on_disk["status"] == "finished" and curves(on_disk) == curves(straight)
    # the retained checkpoints are the newest `keep_checkpoints` (default 2)
    assert Checkpointer(tmp_path / "b" / "checkpoints").all_steps() == [30, 40]


def test_finished_run_is_left_untouched(fake_dir, tmp_path):
    cfg = tiny(fake_dir, tmp_path / "a", num_steps=6, eval_every=3)
    first = train(cfg, progress=False)
    before = snapshot(tmp_path / "a")
    again = train(dataclasses.replace(cfg, strategy="map"), progress=False)  # speed-only keys may differ
    assert snapshot(tmp_path / "a") == before
    assert curves(again) == curves(first)


def test_different_config_is_refused_naming_keys(fake_dir, tmp_path):
    cfg = tiny(fake_dir, tmp_path / "a", num_steps=6, eval_every=3)
    train(cfg, progress=False, stop_at=3)
    before = snapshot(tmp_path / "a")
    with pytest.raises(UserError, match=r"--lr \(saved: 0.05, now: 0.1\).*--seed \(saved: 5, now: 6\)"):
        train(dataclasses.replace(cfg, lr=0.1, seed=6), progress=False)
    assert snapshot(tmp_path / "a") == before


def test_changed_data_file_is_refused_on_resume(fake_dir, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    with np.load(fake_dir / "cifar10.npz") as f:
        arrays = dict(f)
    np.savez(d / "cifar10.npz", **arrays)
    cfg = tiny(d, tmp_path / "a", num_steps=6, eval_every=3)
    train(cfg, progress=False, stop_at=3)
    arrays["x_train"][0, 0, 0, 0] ^= 1  # one bit of one pixel
    np.savez(d / "cifar10.npz", **arrays)
    with pytest.raises(DataError, match="checksum"):
        train(cfg, progress=False)


def test_injected_nan_stops_and_keeps_last_good_checkpoint(fake_dir, tmp_path, monkeypatch):
    cfg = tiny(fake_dir, tmp_path / "a", num_steps=30, eval_every=4, checkpoint_every=5)
    real_step = GroupPrograms.step

    def poisoned(self, state, client_ids=None):
        state, m = real_step(self, state, client_ids)
        if int(state.step[0]) == 12:  # the loss of step 12 goes non-finite
            m = m._replace(loss=m.loss * np.nan)
        return state, m

    monkeypatch.setattr(GroupPrograms, "step", poisoned)
    with pytest.raises(DivergenceError, match=r"outer step 12 \(client \d+\)"):
        train(cfg, progress=False)
    ckpt = Checkpointer(tmp_path / "a" / "checkpoints")
    assert ckpt.all_steps() == [5, 10]
    monkeypatch.setattr(GroupPrograms, "step", real_step)
    clean = train(dataclasses.replace(cfg, out=str(tmp_path / "clean")), progress=False, stop_at=10)
    template = jax.tree.map(lambda a: a[None], clean["state"])  # checkpoints hold a leading run axis
    state, host = ckpt.restore(template)
    assert_states_identical(state, template)
    assert host["runs"][0]["results"]["status"] == "running"
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["status"] == "diverged" and "outer step 12" in res["error"]


def test_overwrite_removes_only_run_files(fake_dir, tmp_path):
    out = tmp_path / "a"
    cfg = tiny(fake_dir, out, num_steps=3, eval_every=3)
    train(cfg, progress=False, stop_at=2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--resume and --overwrite"):
        train(dataclasses.replace(cfg, overwrite=True, resume=True), progress=False)
    res = train(dataclasses.replace(cfg, overwrite=True), progress=False)
    assert "resumed" not in res and res["status"] == "finished"
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="--resume: .* holds no checkpoint"):
        train(tiny(fake_dir, tmp_path / "empty", resume=True), progress=False)


@pytest.mark.slow
def test_sigterm_leaves_a_resumable_checkpoint(fake_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--no-progress", "--data-dir", str(fake_dir),
           "--out", str(out), *tiny_flags(num_steps=100000, eval_every=5, checkpoint_every=0)]
    rc, err = sigterm_once_training(cmd, out)
    assert rc == 143, err
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    step = Checkpointer(out / "checkpoints").latest_step()
    assert step is not None and step >= 1
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    p = subprocess.run(cmd + ["--resume", "--stop-at", str(step + 3)], capture_output=True, text=True,
                       cwd=ROOT, timeout=240)
    assert p.returncode == 0, p.stderr
    assert f"paused after outer step {step + 3}" in p.stdout
    assert Checkpointer(out / "checkpoints").latest_step() == step + 3
