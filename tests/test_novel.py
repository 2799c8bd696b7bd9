"""Novel clients (pfedhn_jax.novel, scripts/novel_clients.py): the split, TV distance, the frozen-φ
embedding fit (vmapped = one by one), the FedAvg baseline, and the script end to end on real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pfedhn_jax import client, novel
from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.data.federated import ClientIndex, FederatedData, pad_clients
from pfedhn_jax.hypernet import HyperNetwork

ROOT = Path(__file__).resolve().parents[1]
B = 8


def tiny_data(num_clients: int, per_client: int = 24, n_test: int = 10, seed: int = 0) -> FederatedData:
    """Random uint8 10x10x3 images, 4 classes, disjoint per-client lists of different sizes."""
    rng = np.random.default_rng(seed)
    sizes = [per_client - 3 * i for i in range(num_clients)]
    m = sum(sizes) + num_clients * n_test
    x = rng.integers(0, 256, (m, 10, 10, 3), dtype=np.uint8)
    y = rng.integers(0, 4, m).astype(np.int32)
    pos, train, test = 0, [], []
    for s in sizes:
        train.append(np.arange(pos, pos + s)); pos += s
        test.append(np.arange(pos, pos + n_test)); pos += n_test
    return FederatedData(jnp.asarray(x), jnp.asarray(y), jnp.full((3,), 0.5), jnp.full((3,), 0.25),
                         train=pad_clients(train, B), val=pad_clients(test), test=pad_clients(test))


@pytest.fixture
def alg(tiny_target) -> PFedHN:
    return PFedHN(HyperNetwork(tiny_target, num_clients=5, embed_dim=3, hidden_dim=8, n_hidden=1),
                  inner_steps=2, batch_size=B)


def np_init(init_fn, seed: int, scale: float = 0.5):
    """Params with init_fn's structure, drawn with numpy (compiling a random init costs seconds on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def hinit(alg: PFedHN, seed: int):
    return np_init(alg.hnet.init, seed)


def host(tree):
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


# ----------------------------------------------------------------------------- (a) φ frozen


def test_fit_changes_only_the_new_embeddings(alg):
    data = tiny_data(3)
    params = hinit(alg, 1)
    before = host(params)
    fit = novel.fit_novel_embeddings(alg, params, data, data.train, jax.random.key(2), steps=6, lr=0.1)
    after = host(params)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        assert a.dtype == b.dtype and np.array_equal(a, b)   # φ and the trained table: bit-identical
    assert fit.embeddings.shape == (3, 3) and fit.loss.shape == (6, 3)
    assert not np.allclose(fit.embeddings, fit.init)          # the new embeddings moved
    assert np.all(np.abs(np.asarray(fit.embeddings) - np.asarray(fit.init)) > 0)   # every row and coordinate
    np.testing.assert_allclose(fit.init, np.broadcast_to(before["embeddings"].mean(0), (3, 3)), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(fit.loss)))
    # the fitted networks come from φ and the new rows only
    theta = jax.jit(novel.novel_params, static_argnums=0)(alg, params, fit.embeddings)
    ref = jax.jit(alg.hnet.apply)({**before, "embeddings": np.asarray(fit.embeddings)}, jnp.arange(3))
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_fit_refuses_bad_input(alg, tiny_target):
    data = tiny_data(2)
    params = {"embeddings": jnp.zeros((5, 3))}
    for kw, msg in (({"optimizer": "lbfgs"}, "optimizer"), ({"init": jnp.zeros((5, 3))}, "init"),
                    ({"init": "uniform"}, "init"), ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"),
                    ({"batch_size": 99}, "batch_size")):
        with pytest.raises(ValueError, match=msg):
            novel.fit_novel_embeddings(alg, params, data, data.train, jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="2 keys"):
        novel.fit_novel_embeddings(alg, params, data, data.train, jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match="embeddings"):
        novel.fit_novel_embeddings(alg, {"mlp": []}, data, data.train, jax.random.key(0))
    pc = PFedHN(HyperNetwork(tiny_target, 5, 3, 8, 1, private=("fc3",)), batch_size=B)
    with pytest.raises(ValueError, match="pFedHN-PC"):
        novel.fit_novel_embeddings(pc, params, data, data.train, jax.random.key(0))


# ----------------------------------------------------------------------------- (b) TV distance


def test_tv_distance():
    assert novel.tv_distance([1, 0], [0, 1]) == 1.0
    assert novel.tv_distance([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # 0.5 * (|0.5-0.25| + |0.5-0.25| + |0-0.5|) = 0.5
    assert novel.tv_distance([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(0.5)
    # 0.5 * (0.1 + 0.3 + 0.2) = 0.3
    assert novel.tv_distance([0.6, 0.1, 0.3], [0.5, 0.4, 0.1]) == pytest.approx(0.3)
    p = novel.label_distribution(np.array([0, 0, 1, 3]), 4)
    np.testing.assert_allclose(p, [0.5, 0.25, 0, 0.25])
    pooled = novel.pooled_distribution([np.array([0, 0, 0]), np.array([1])], 2)
    np.testing.assert_allclose(pooled, [0.75, 0.25])   # count-weighted, not the plain mean [0.5, 0.5]
    with pytest.raises(ValueError, match="same length"):
        novel.tv_distance([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="probability"):
        novel.tv_distance([0.5, 0.6], [1, 0])
    with pytest.raises(ValueError, match="probability"):
        novel.tv_distance([1.5, -0.5], [1, 0])


# ----------------------------------------------------------------------------- (c) vmapped = alone


def test_vmapped_fit_equals_fitting_each_alone(alg):
    data = tiny_data(3)
    params = hinit(alg, 3)
    keys = jax.random.split(jax.random.key(4), 3)
    emb0 = jnp.asarray(np.random.default_rng(5).normal(size=(3, 3)), jnp.float32)
    together = novel.fit_novel_embeddings(alg, params, data, data.train, keys, steps=6, lr=0.1, init=emb0)
    for k in range(3):
        one = ClientIndex(data.train.index[k:k + 1], data.train.count[k:k + 1])
        alone = novel.fit_novel_embeddings(alg, params, data, one, keys[k:k + 1], steps=6, lr=0.1, init=emb0[k:k + 1])
        np.testing.assert_allclose(alone.embeddings[0], together.embeddings[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(alone.loss[:, 0], together.loss[:, k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(together.embeddings[0], together.embeddings[1])   # clients really differ


# ----------------------------------------------------------------------------- (d) the split


def _labels(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, 4000), rng.integers(0, 4, 1000)


def test_novel_split_invariants():
    y_tr, y_te = _labels()
    alphas = novel.novel_alphas([0.1, 1, 10], 5)
    np.testing.assert_allclose(alphas, [0.1, 1, 10, 0.1, 1])
    s = novel.make_novel_split(y_tr, y_te, 4, 6, 0.3, alphas, seed=7, val_size=400)
    assert len(s.train.train) == 6 and len(s.novel.train) == 5
    every = [ix for part in (s.train, s.novel) for lists in (part.train, part.val, part.test) for ix in lists]
    flat = np.concatenate(every)
    assert len(flat) == len(np.unique(flat))            # no sample in two clients (or two sets)
    tr_all = set(np.concatenate([*s.train.train, *s.train.val, *s.train.test]).tolist())
    nv_all = set(np.concatenate([*s.novel.train, *s.novel.val, *s.novel.test]).tolist())
    assert not tr_all & nv_all                          # novel clients disjoint from training clients
    for part in (s.train, s.novel):
        assert all(ix.max() < len(y_tr) for ix in part.train + part.val)
        assert all(ix.min() >= len(y_tr) for ix in part.test)      # test positions follow x_train
    # equal client sizes; realised training labels follow the drawn distributions
    sizes = [len(ix) for ix in s.train.train + s.novel.train]
    assert max(sizes) - min(sizes) <= 4
    y_all = np.concatenate([y_tr, y_te])
    for i, ix in enumerate(s.train.train + s.novel.train):
        assert novel.tv_distance(novel.label_distribution(y_all[ix], 4), s.drawn[i]) < 4 / len(ix) + 1e-9
    # deterministic from the seed; another seed differs
    s2 = novel.make_novel_split(y_tr, y_te, 4, 6, 0.3, alphas, seed=7, val_size=400)
    for a, b in zip(every, [ix for part in (s2.train, s2.novel) for lists in (part.train, part.val, part.test)
                            for ix in lists]):
        np.testing.assert_array_equal(a, b)
    s3 = novel.make_novel_split(y_tr, y_te, 4, 6, 0.3, alphas, seed=8, val_size=400)
    assert not all(np.array_equal(a, b) for a, b in zip(s.train.train, s3.train.train))
    with pytest.raises(ValueError, match="alpha_train"):
        novel.make_novel_split(y_tr, y_te, 4, 6, 0.0, alphas, seed=7)
    with pytest.raises(ValueError, match="novel_alpha"):
        novel.make_novel_split(y_tr, y_te, 4, 6, 0.3, [], seed=7)
    with pytest.raises(ValueError, match="no training samples|no test samples"):
        novel.make_novel_split(y_tr[:40], y_te[:8], 4, 30, 0.05, alphas, seed=7)


# ----------------------------------------------------------------------------- baseline


def test_finetune_runs_fedavgs_local_sgd_on_each_client(tiny_target):
    """Fine-tuning client k from one model equals FedAvg's local SGD on client k alone (and an lr
    override changes it); the FedAvg round itself is tested in test_baselines.py."""
    from pfedhn_jax.algorithms.fedavg import FedAvg
    data = tiny_data(3)
    alg = FedAvg(tiny_target, 3, lr=0.05, batch_size=B, strategy="loop")
    init = np_init(tiny_target.init, 0, 0.3)
    thetas = novel.finetune(alg, init, data, data.train, jax.random.key(1), 3)
    keys = jax.random.split(jax.random.key(1), 3)
    for k in range(3):
        batch_fn = lambda kb: novel.sample_batch(data, data.train, k, kb, B)
        want = client.local_update(tiny_target.apply, init, {}, optax.EmptyState(), batch_fn, keys[k], 3,
                                   alg.local_optimizer(0.05), optax.identity()).theta
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-6), thetas, want)
    other = novel.finetune(alg, init, data, data.train, jax.random.key(1), 3, lr=0.2)
    assert not np.allclose(jax.tree.leaves(other)[0], jax.tree.leaves(thetas)[0])


def test_generalization_gap_is_against_pooled_training_accuracy():
    from pfedhn_jax.evaluate import ClientMetrics
    train = ClientMetrics(jnp.array([9, 1]), jnp.array([10, 10]), jnp.zeros(2))    # pooled 0.5, mean too
    train2 = ClientMetrics(jnp.array([9, 1]), jnp.array([10, 90]), jnp.zeros(2))   # pooled 0.1, mean 0.456
    nov = ClientMetrics(jnp.array([3, 8]), jnp.array([10, 10]), jnp.zeros(2))
    np.testing.assert_allclose(novel.generalization_gap(nov, train), [-0.2, 0.3])
    np.testing.assert_allclose(novel.generalization_gap(nov, train2), [0.2, 0.7])


# ----------------------------------------------------------------------------- (e) the script


@pytest.mark.slow
def test_script_end_to_end(tmp_path, small_cifar_dir):
    out = tmp_path / "novel"
    cmd = [sys.executable, str(ROOT / "scripts" / "novel_clients.py"), "--data-dir", str(small_cifar_dir),
           "--num-clients", "4", "--num-novel", "2", "--novel-alphas", "0.5,5", "--alpha-train", "0.5",
           "--steps", "2", "--inner-steps", "2", "--batch-size", "16", "--fit-steps", "2", "--fedavg-clients", "2",
           "--compare-init", "--seed", "3", "--out", str(out), "--n-kernels", "2", "--hyper-hid", "8", "--n-hidden", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "training pFedHN" in p.stderr and "fitting 2 novel embeddings" in p.stderr
    res = json.loads((out / "novel.json").read_text())
    assert (out / "gap_vs_tv.png").stat().st_size > 0
    assert res["label"].startswith("CIFAR-10") and (res["args"]["n_kernels"], res["args"]["hyper_hid"]) == (2, 8)
    assert len(res["novel"]) == 2 and [r["alpha"] for r in res["novel"]] == [0.5, 5.0]
    for r in res["novel"]:
        assert 0 <= r["tv"] <= 1 and 0 <= r["acc"] <= 1 and 0 <= r["baseline_acc"] <= 1
        assert r["gap"] == pytest.approx(r["acc"] - res["train_clients"]["pooled_test_acc"])
        assert 0 <= r["acc_other_init"] <= 1 and 0 <= r["tv_nearest_train_client"] <= 1


def test_script_bad_flags():
    for args, flag in ((["--num-novel", "0"], "--num-novel"), (["--novel-alphas", "0.1,-1"], "--novel-alphas"),
                       (["--fedavg-clients", "60"], "--fedavg-clients")):
        p = subprocess.run([sys.executable, str(ROOT / "scripts" / "novel_clients.py"), "--out", "/tmp/x", *args],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stderr.startswith(f"error: {flag}:"), p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
