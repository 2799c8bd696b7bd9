"""Heterogeneous targets (pfedhn_jax/hetero.py): shapes per client, zero gradient outside a client's
slice, exact reduction to the plain HyperNetwork / PFedHN with one architecture, one compilation
for mixed-architecture steps, byte counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax import hetero, server
from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.xla import init_compiler_options
from pfedhn_jax.data.federated import FederatedData, pad_clients
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.targets import ConvNet, num_params

N = 6
WIDTHS = (2, 3, 4)


def tiny(width: int) -> ConvNet:
    return ConvNet((10, 10, 3), (width, width + 1), 3, "VALID", (6, 5), 4)


def tiny_data() -> FederatedData:
    """12 random images per client, split 8 / 2 / 2."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (12 * N, 10, 10, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 4, 12 * N).astype(np.int32))
    ix = [np.arange(12 * i, 12 * (i + 1)) for i in range(N)]
    return FederatedData(x, y, jnp.full(3, 0.5), jnp.full(3, 0.25), pad_clients([i[:8] for i in ix]),
                         pad_clients([i[8:10] for i in ix]), pad_clients([i[10:] for i in ix]))


@pytest.fixture(scope="module")
def alg() -> hetero.HeteroPFedHN:
    hn = hetero.HeteroHyperNetwork(tuple(tiny(w) for w in WIDTHS), N, embed_dim=3, hidden_dim=16, n_hidden=1)
    return hetero.HeteroPFedHN(hn, inner_steps=2, batch_size=4, clients_per_step=3)


@pytest.fixture(scope="module")
def init(alg):
    """alg.init, jitted once for the module (random init programs are slow to compile on XLA:CPU)."""
    return jax.jit(alg.init, compiler_options=init_compiler_options())


def test_assignment_and_slices(alg):
    hn = alg.hnet
    assert hn.assignment == (0, 1, 2, 0, 1, 2)
    assert hn.sizes == tuple(num_params(jax.eval_shape(tiny(w).init, jax.random.key(0))) for w in WIDTHS)
    assert hn.offsets == (0, hn.sizes[0], hn.sizes[0] + hn.sizes[1])
    assert hetero.HeteroHyperNetwork((tiny(2), tiny(3)), 3, (1, 1, 0)).clients_of(1) == (0, 1)
    with pytest.raises(ValueError, match="assignment"):
        hetero.HeteroHyperNetwork((tiny(2), tiny(3)), 3, (0, 2, 0))


def test_each_client_gets_its_architectures_shapes(alg, init):
    state = init(jax.random.key(0))
    hn = alg.hnet
    flat = jax.jit(hn.apply)(state.server.params, jnp.arange(N))  # (N, S): the one long vector
    personal = jax.jit(alg.arch_params, static_argnums=(1, 2))
    for a, w in enumerate(WIDTHS):
        want = jax.eval_shape(tiny(w).init, jax.random.key(0))
        got = personal(state, a, None)
        ids = hn.clients_of(a)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, s in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.shape == (len(ids), *s.shape) and g.dtype == s.dtype
        # each client's θ is its own slice of the long vector, unflattened
        np.testing.assert_allclose(hn.flatten(got, a, (len(ids),)),
                                   flat[np.asarray(ids), hn.offsets[a]:hn.offsets[a] + hn.sizes[a]],
                                   rtol=1e-5, atol=1e-6)
        one = personal(state, a, ids[-1:])
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x[0], y[-1], rtol=1e-5, atol=1e-6), one, got)
    with pytest.raises(ValueError, match="architecture"):
        alg.arch_params(state, 0, [1])


def test_gradient_outside_a_clients_slice_is_exactly_zero(alg, init):
    data, state = tiny_data(), init(jax.random.key(1))
    params, hn = state.server.params, alg.hnet
    for cid in (0, 4):  # architectures 0 and 1
        ids = jnp.asarray([cid], jnp.int32)
        theta, theta_tilde, _ = jax.jit(alg.local_round)(data, params, ids, jax.random.split(jax.random.key(2), 1))
        g = jax.jit(server.hypernet_grads, static_argnums=0)(hn, params, ids, theta_tilde)
        a, off, n = hn.assignment[cid], hn.offsets[hn.assignment[cid]], hn.sizes[hn.assignment[cid]]
        outside = np.ones(hn.total_size, bool)
        outside[off:off + n] = False
        k, b = np.asarray(g["head"]["kernel"]), np.asarray(g["head"]["bias"])
        assert np.all(k[:, outside] == 0) and np.all(b[outside] == 0)
        assert np.abs(k[:, ~outside]).sum() > 0 and np.abs(b[~outside]).sum() > 0
        emb = np.asarray(g["embeddings"])
        assert np.all(np.delete(emb, cid, axis=0) == 0) and np.abs(emb[cid]).sum() > 0
        assert np.all(np.asarray(theta - theta_tilde)[0, outside] == 0)


def is_head(x) -> bool:
    """A HyperNetwork head {'kernel': array, 'bias': array} (not a layer {'kernel': head, 'bias': head})."""
    return isinstance(x, dict) and "kernel" in x and not isinstance(x["kernel"], dict)


def test_one_architecture_reduces_to_the_plain_hypernetwork(tiny_target):
    hn = HyperNetwork(tiny_target, N, embed_dim=3, hidden_dim=16, n_hidden=2)
    hh = hetero.HeteroHyperNetwork((tiny_target,), N, embed_dim=3, hidden_dim=16, n_hidden=2)
    key, ids = jax.random.key(7), jnp.arange(N)
    plain = PFedHN(hn, inner_steps=3, batch_size=4, clients_per_step=2)
    het = hetero.HeteroPFedHN(hh, inner_steps=3, batch_size=4, clients_per_step=2)
    fast = dict(compiler_options=init_compiler_options())  # bit-identical, faster to compile (test_checkpoint)
    s, t = jax.jit(plain.init, **fast)(key), jax.jit(het.init, **fast)(key)
    p, q = s.server.params, t.server.params  # both hypernetworks initialised from the same key
    np.testing.assert_array_equal(p["embeddings"], q["embeddings"])
    jax.tree.map(np.testing.assert_array_equal, p["mlp"], q["mlp"])
    flat_heads = [jnp.concatenate([h[k] for h in jax.tree.leaves(p["heads"], is_leaf=is_head)],
                                  axis=0 if k == "bias" else 1) for k in ("kernel", "bias")]
    np.testing.assert_array_equal(flat_heads[0], q["head"]["kernel"])
    np.testing.assert_array_equal(flat_heads[1], q["head"]["bias"])
    want = hn.apply(p, ids)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), want, hh.apply_arch(q, ids, 0))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), want,
                 hh.unflatten(hh.apply(q, ids), 0))

    # and whole training steps: same key, same clients, same batches -> the same φ
    data = tiny_data()
    plain_step, het_step = jax.jit(plain.step), jax.jit(het.step)
    for _ in range(3):
        s, ms = plain_step(data, s)
        t, mt = het_step(data, t)
        np.testing.assert_array_equal(ms.client_ids, mt.client_ids)
        np.testing.assert_allclose(ms.loss, mt.loss, rtol=1e-5)
        np.testing.assert_allclose(ms.delta_norm, mt.delta_norm, rtol=1e-4)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
                 plain.personal_params(s, ids), het.arch_params(t, 0))


def test_mixed_architecture_steps_compile_once(alg, init):
    data, state = tiny_data(), init(jax.random.key(3))
    step = jax.jit(alg.step)
    before = state.server.params
    for ids in ([0, 1, 2], [3, 1, 5], [0, 3, 4], [2, 5, 1]):  # architectures (0,1,2), (0,1,2), (0,0,1), (2,2,1)
        state, m = step(data, state, jnp.asarray(ids, jnp.int32))
        assert np.all(np.isfinite(np.asarray(m.loss))) and np.all(np.asarray(m.delta_norm) > 0)
    cache_size = getattr(step, "_cache_size", None)  # private jax API: skip the check if gone
    if cache_size is not None:
        assert cache_size() == 1
    assert int(state.step) == 4
    assert not np.allclose(before["head"]["kernel"], state.server.params["head"]["kernel"])
    sampled = jax.jit(alg.step)
    for _ in range(3):
        state, m = sampled(data, state)
    if cache_size is not None:
        assert sampled._cache_size() == 1
    mets = jax.jit(hetero.evaluate_arches, static_argnums=0)(alg, state, data, data.test)
    m = jax.jit(alg.evaluate)(state, data, data.test)  # every client, back in client order
    per_arch = hetero.summarize_arches(alg.hnet, m)
    assert len(per_arch) == 3 and m.correct.shape == (N,)
    for a, x in enumerate(mets):
        np.testing.assert_array_equal(np.asarray(m.correct)[list(alg.hnet.clients_of(a))], x.correct)
        np.testing.assert_array_equal(np.asarray(m.loss)[list(alg.hnet.clients_of(a))], x.loss)
        assert per_arch[a]["acc"] == pytest.approx(int(x.correct.sum()) / int(x.total.sum()))


def test_bytes_are_params_times_four(alg):
    c = hetero.communication(alg.hnet, clients_per_step=3)
    for a, w in enumerate(WIDTHS):
        n = num_params(jax.eval_shape(tiny(w).init, jax.random.key(0)))
        assert c["per_arch"][a]["params"] == n
        assert c["per_arch"][a]["bytes_down_per_client"] == c["per_arch"][a]["bytes_up_per_client"] == 4 * n
    assert c["expected_bytes_down_per_round"] == pytest.approx(3 * 4 * sum(alg.hnet.sizes) / 3)
    assert c["flat_vector_params"] == sum(alg.hnet.sizes)


def test_train_script_runs_mixed_widths(small_cifar_dir, tmp_path, capsys):
    """scripts/train.py --client-widths: per-width accuracies pool each width's clients (per the
    assignment), the headline step's per-width numbers are reported, bytes per width = params × 4.
    (The trainer runs any algorithm's step unchanged: tests/test_group.py, tests/test_loop.py.)"""
    import dataclasses
    import json

    from conftest import train_script
    from pfedhn_jax.builders import build_algorithm
    from pfedhn_jax.config import Config

    flags = ["--data-dir", str(small_cifar_dir), "--num-clients", "4", "--val-size", "200", "--num-steps", "3",
             "--inner-steps", "2", "--batch-size", "8", "--eval-every", "2", "--hyper-hid", "8", "--n-hidden", "1",
             "--client-widths", "2,3", "--client-assign", "1,0,1,1", "--seed", "3", "--no-progress"]
    assert train_script().main(flags + ["--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "width 2: 1 clients" in printed and "width 3: 3 clients" in printed
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assignment = np.array([1, 0, 1, 1])
    counts = {k: np.array(v) for k, v in res["data"]["client_counts"].items()}
    for row in res["curves"]:
        assert len(row["test_acc_per_arch"]) == len(row["val_acc_per_arch"]) == 2
    final = res["final"]["test"]
    correct = np.array(final["per_client"]) * counts["test"]
    for a in range(2):
        mine = assignment == a
        assert res["curves"][-1]["test_acc_per_arch"][a] == pytest.approx(correct[mine].sum() / counts["test"][mine].sum())
    assert final["acc"] == pytest.approx(correct.sum() / counts["test"].sum())
    best = res["curves"][[c["step"] for c in res["curves"]].index(res["best"]["best_step"])]
    assert [a["test_acc"] for a in res["best_per_arch"]] == best["test_acc_per_arch"]
    assert [a["width"] for a in res["best_per_arch"]] == [2, 3]

    cfg = Config(num_clients=4, hyper_hid=8, n_hidden=1)
    comm = res["communication"]["per_arch"]
    for a, w in enumerate((2, 3)):
        target = build_algorithm(dataclasses.replace(cfg, n_kernels=w)).target
        assert comm[a]["width"] == w and comm[a]["clients"] == int((assignment == a).sum())
        assert comm[a]["bytes_down_per_client"] == 4 * num_params(jax.eval_shape(target.init, jax.random.key(0)))
    assert res["communication"]["bytes_down_per_round"] == pytest.approx(
        (comm[0]["bytes_down_per_client"] + 3 * comm[1]["bytes_down_per_client"]) / 4)


@pytest.mark.parametrize("flags, msg", [
    (["--client-widths", "8,x"], "error: --client-widths: expected comma-separated integers"),
    (["--client-widths", "8,16", "--client-assign", "0,1"], "error: --client-assign: needs 50 indices"),
    (["--client-widths", "8,16", "--client-assign", "0,2", "--num-clients", "2"], "error: --client-assign: needs 2"),
    (["--client-assign", "0,1"], "error: --client-assign: only with --client-widths"),
    (["--client-widths", "8,16", "--algo", "pfedhn-pc"], "error: --client-widths: heterogeneous targets are pFedHN"),
    (["--client-widths", "8,16", "--dataset", "omniglot"], "error: --client-widths: varies the CIFAR CNN")])
def test_train_script_rejects_bad_widths_with_one_line(flags, msg, tmp_path, capsys):
    from conftest import train_script
    assert train_script().main(["--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(msg) and err.count("\n") == 1, err
