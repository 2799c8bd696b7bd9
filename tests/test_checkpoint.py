"""Checkpointer: exact round trip of a real TrainState (pFedHN and -PC), retention, atomicity, config diff."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.checkpoint import Checkpointer, to_json
from pfedhn_jax.config import Config
from pfedhn_jax.data.federated import FederatedData, pad_clients
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.targets import ConvNet

N_CLIENTS = 4


def _tiny_data(target: ConvNet) -> FederatedData:
    """Synthetic federated data: 12 random images per client, split 8 / 2 / 2."""
    rng = np.random.default_rng(0)
    m = 12 * N_CLIENTS
    x = jnp.asarray(rng.integers(0, 256, (m, *target.input_shape), np.uint8))
    y = jnp.asarray(rng.integers(0, target.n_classes, m).astype(np.int32))
    ix = [np.arange(12 * i, 12 * (i + 1)) for i in range(N_CLIENTS)]
    return FederatedData(x, y, jnp.full(3, 0.5), jnp.full(3, 0.25), pad_clients([i[:8] for i in ix]),
                         pad_clients([i[8:10] for i in ix]), pad_clients([i[10:] for i in ix]))


@pytest.fixture(scope="module", params=[(), ("fc3",)], ids=["pfedhn", "pfedhn-pc"])
def run(request):
    """(alg, data, jitted step, states after 0..4 outer steps) for one variant."""
    target = ConvNet((10, 10, 3), (3, 4), 3, "VALID", (6, 5), 4)
    hnet = HyperNetwork(target, N_CLIENTS, embed_dim=3, hidden_dim=16, n_hidden=1, private=request.param)
    alg = PFedHN(hnet, inner_steps=2, batch_size=4)
    data = _tiny_data(target)
    step = jax.jit(alg.step)
    states = [alg.init(jax.random.key(0))]
    for _ in range(4):
        states.append(step(data, states[-1])[0])
    return alg, data, step, states


def _host(step: int) -> dict:
    return {"config": Config(seed=step).to_dict(), "best": {"step": step, "val_acc": np.float32(0.25)},
            "curves": [{"step": s, "val_loss": float(s) / 3} for s in range(1, step + 1)],
            "pending_losses": np.arange(3, dtype=np.float32) / 7, "wall_s": math.nan, "shape": (2, 3)}


def _assert_identical(a, b):
    """Same tree (types included), and every leaf equal bit for bit with the same dtype and sharding."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.sharding == y.sharding
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_restore_is_bit_identical_and_resumes_exactly(run, tmp_path):
    alg, data, step, states = run
    with Checkpointer(tmp_path / "ckpt") as ck:
        for s in (1, 2):
            ck.save(s, states[s], _host(s))
        template = alg.init(jax.random.key(99))  # different values, same structure
        restored, host = ck.restore(template)
    assert int(restored.step) == 2
    _assert_identical(restored, states[2])
    assert isinstance(restored.clients.private, dict)
    assert sorted(restored.clients.private) == list(alg.hnet.private)  # {} for pFedHN
    assert jnp.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(jax.random.split(restored.key)),
                                  jax.random.key_data(jax.random.split(states[2].key)))
    assert json.dumps(host, sort_keys=True) == json.dumps(to_json(_host(2)), sort_keys=True)  # NaN != NaN
    assert host["pending_losses"] == [float(np.float32(i / 7)) for i in range(3)] and math.isnan(host["wall_s"])
    # resuming gives the same numbers as never stopping (and reuses the compiled step)
    s = restored
    assert all(not x.committed for x in jax.tree.leaves(restored))  # as fresh from alg.init
    cache_size = getattr(step, "_cache_size", lambda: 0)  # private jax API: skip the check if gone
    compiled = cache_size()
    for _ in range(2):
        s = step(data, s)[0]
    _assert_identical(s, states[4])
    assert cache_size() == compiled  # no recompilation for the restored state


def test_keep_latest_and_restore_after_newer_save(run, tmp_path):
    alg, _, _, states = run
    d = tmp_path / "ckpt"
    ck = Checkpointer(d, keep=2)
    assert not d.exists() and ck.latest_step() is None  # nothing created before the first save
    with pytest.raises(FileNotFoundError):
        ck.host_config()
    for s in (1, 2, 3):
        ck.save(s, states[s], _host(s))
    assert ck.all_steps() == [2, 3] and sorted(os.listdir(d)) == ["2", "3"]
    template = alg.init(jax.random.key(1))
    _assert_identical(ck.restore(template)[0], states[3])
    ck.save(4, states[4], _host(4))
    assert ck.latest_step() == 4 and sorted(os.listdir(d)) == ["3", "4"]
    state, host = ck.restore(template)
    _assert_identical(state, states[4])
    assert host["best"]["step"] == 4
    _assert_identical(ck.restore(template, step=3)[0], states[3])
    assert ck.host_config(3)["config"]["seed"] == 3 and ck.host_config()["config"]["seed"] == 4
    with pytest.raises(ValueError, match="not newer"):
        ck.save(4, states[4], _host(4))
    with pytest.raises(TypeError, match="JSON"):
        ck.save(5, states[4], {"bad": object()})
    with pytest.raises(FileNotFoundError):
        ck.restore(template, step=1)
    ck.close()
    # a fresh Checkpointer (a resumed process) sees the same steps
    with Checkpointer(d, keep=2) as ck2:
        assert ck2.latest_step() == 4 and sorted(os.listdir(d)) == ["3", "4"]
        _assert_identical(ck2.restore(template)[0], states[4])


def test_wrong_template_is_refused(run, tmp_path):
    alg, _, _, states = run
    other = PFedHN(dataclasses.replace(alg.hnet, private=() if alg.hnet.private else ("fc3",)))
    with Checkpointer(tmp_path) as ck:
        ck.save(1, states[1], {})
        with pytest.raises(ValueError):
            ck.restore(other.init(jax.random.key(0)))
        with pytest.raises(ValueError, match="PRNG"):
            ck.restore(states[1]._replace(key=jax.random.key(0, impl="rbg")))


def test_unfinished_checkpoint_is_ignored(run, tmp_path):
    alg, _, _, states = run
    with Checkpointer(tmp_path) as ck:
        for s in (1, 2):
            ck.save(s, states[s], _host(s))
        # what an interrupted orbax save leaves: the step's tmp folder, never renamed
        junk = tmp_path / "3.orbax-checkpoint-tmp"
        (junk / "state").mkdir(parents=True)
        (junk / "state" / "partial").write_bytes(b"\0" * 10)
        assert ck.latest_step() == 2 and ck.all_steps() == [1, 2]
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 2
        _assert_identical(ck.restore(alg.init(jax.random.key(1)))[0], states[2])
        ck.save(3, states[3], _host(3))
        assert ck.latest_step() == 3 and not junk.exists()
        _assert_identical(ck.restore(alg.init(jax.random.key(1)))[0], states[3])


_KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from pfedhn_jax.checkpoint import Checkpointer

    def state(s):
        return {"w": jnp.arange(1000, dtype=jnp.float32) * s, "empty": {}, "key": jax.random.key(s)}

    ck = Checkpointer(sys.argv[1])
    ck.save(1, state(1), {"s": 1})
    ck.save(2, state(2), {"s": 2})
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def die_before_rename(self):
        if self.get_final().name.isdigit():  # the step folder (items are renamed before it)
            os._exit(17)                      # killed after all data is written, before the commit
        await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = die_before_rename
    ck.save(3, state(3), {"s": 3})
""")


def test_process_killed_mid_save(tmp_path):
    pytest.importorskip("orbax.checkpoint._src.path.atomicity")
    d = tmp_path / "ckpt"
    r = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(d)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 17, r.stderr[-3000:]
    assert sorted(os.listdir(d)) == ["1", "2", "3.orbax-checkpoint-tmp"]
    template = {"w": jnp.zeros(1000, jnp.float32), "empty": {}, "key": jax.random.key(0)}
    with Checkpointer(d) as ck:
        assert ck.latest_step() == 2
        state, host = ck.restore(template)
        assert host == {"s": 2}
        np.testing.assert_array_equal(state["w"], np.arange(1000, dtype=np.float32) * 2)
        np.testing.assert_array_equal(jax.random.key_data(state["key"]), jax.random.key_data(jax.random.key(2)))
        assert state["empty"] == {}
        ck.save(3, {**template, "w": template["w"] + 3}, {"s": 3})
        assert ck.all_steps() == [1, 2, 3] and ck.host_config() == {"s": 3}
    assert sorted(os.listdir(d)) == ["1", "2", "3"]


def test_training_loops_initialiser_equals_the_plain_one(run):
    """The loop compiles `init` with `xla.init_compiler_options` (faster to compile on CPU); its
    values are the plain `alg.init`'s bit for bit."""
    from pfedhn_jax.xla import init_compiler_options
    alg, _, _, states = run
    fast = jax.jit(alg.init, compiler_options=init_compiler_options())(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, jax.random.key_data(fast.key), jax.random.key_data(states[0].key))
    jax.tree.map(np.testing.assert_array_equal, (fast.server, fast.clients), (states[0].server, states[0].clients))
