"""The six baselines against their papers' equations, in float64 on a tiny model, and their
execution paths (vmapped clients, several seeds in one program, resume) against the plain path.

The reference computations are written out here (NumPy updates around `jax.grad`), using the
algorithm's documented PRNG schedule (`Baseline.round_keys`, `Baseline.batches`) for the batches,
so only the arithmetic under test differs.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from conftest import ROOT, TINY_RUN, sigterm_once_training, tiny_flags
from pfedhn_jax import client
from pfedhn_jax.algorithms.fedavg import FedAvg
from pfedhn_jax.algorithms.fedper import FedPer
from pfedhn_jax.algorithms.lg_fedavg import LGFedAvg
from pfedhn_jax.algorithms.local import Local
from pfedhn_jax.algorithms.per_fedavg import PerFedAvg
from pfedhn_jax.algorithms.pfedme import PFedMe
from pfedhn_jax.checkpoint import Checkpointer
from pfedhn_jax.config import Config
from pfedhn_jax.data.federated import FederatedData, pad_clients
from pfedhn_jax.loop import train, train_seeds

BASELINES = ("local", "fedavg", "fedper", "lg-fedavg", "pfedme", "per-fedavg", "per-fedavg-hf")
COUNTS = (10, 14, 12)   # training samples of the three tiny clients (unequal: weighting matters)
B = 4                   # local batch


@dataclasses.dataclass(frozen=True)
class MLP:
    """A tiny target: (2, 2, 3) inputs -> dense 5 -> relu -> dense head 3 (its Hessian is 83 x 83)."""

    head = "head"

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"body": {"kernel": 0.5 * jax.random.normal(k1, (12, 5)), "bias": jnp.full(5, 0.1)},
                "head": {"kernel": 0.5 * jax.random.normal(k2, (5, 3)), "bias": jnp.zeros(3)}}

    def apply(self, p, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["body"]["kernel"] + p["body"]["bias"])
        return h @ p["head"]["kernel"] + p["head"]["bias"]


def tiny_data(shift_client: int | None = None) -> FederatedData:
    """Three clients with disjoint float64 samples (call inside `jax.enable_x64`); shift_client:
    that client's training inputs changed (the Local independence test)."""
    rng = np.random.default_rng(0)
    m = 2 * sum(COUNTS)
    x = rng.uniform(0, 255, (m, 2, 2, 3))
    y = rng.integers(0, 3, m)
    ends = np.cumsum(COUNTS)
    train_pos = [np.arange(e - c, e) for c, e in zip(COUNTS, ends)]
    test_pos = [p + sum(COUNTS) for p in train_pos]
    if shift_client is not None:
        x[train_pos[shift_client]] = 255 - x[train_pos[shift_client]]
    return FederatedData(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.zeros(3), jnp.full(3, 0.3),
                         pad_clients(train_pos, B), pad_clients(test_pos), pad_clients(test_pos))


def loss_fn(params, batch):
    x, y, mask = batch
    return client.masked_cross_entropy(MLP().apply(params, x), y, mask)


grad = jax.jit(jax.grad(loss_fn))
to_np = lambda t: jax.tree.map(np.asarray, t)
axpy = lambda a, x, y: jax.tree.map(lambda u, v: a * np.asarray(u) + np.asarray(v), x, y)


def plain(x):
    """An array as NumPy (a typed PRNG key as its raw data)."""
    return np.asarray(jax.random.key_data(x) if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key) else x)


def assert_close(a, b, rtol=1e-10, atol=1e-12):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(plain(u), plain(v), rtol=rtol, atol=atol), a, b)


def local_sgd(alg, data, params, cid, key):
    """K steps of clip(50) -> weight decay -> momentum SGD, fresh momentum: written out in NumPy."""
    p, buf = to_np(params), None
    for kb in jax.random.split(key, alg.inner_steps):
        g = to_np(grad(jax.tree.map(jnp.asarray, p), alg.batches(data, cid)(kb)))
        norm = np.sqrt(sum(np.sum(a ** 2) for a in jax.tree.leaves(g)))
        g = jax.tree.map(lambda gg, pp: gg * min(1.0, alg.clip / (norm + 1e-6)) + alg.weight_decay * pp, g, p)
        buf = g if buf is None else jax.tree.map(lambda b_, g_: alg.momentum * b_ + g_, buf, g)
        p = jax.tree.map(lambda pp, b_: pp - alg.lr * b_, p, buf)
    return p


# ----------------------------------------------------------------------------- FedAvg and partial averaging


def test_fedavg_with_one_client_is_plain_local_sgd():
    with jax.enable_x64(True):
        data, alg = tiny_data(), FedAvg(MLP(), 3, inner_steps=5, batch_size=B, lr=0.05)
        s0 = alg.init(jax.random.key(0))
        s1, m = jax.jit(alg.step)(data, s0, jnp.array([1]))
        _, _, keys = alg.round_keys(s0, jnp.array([1]))
        assert_close(s1.shared, local_sgd(alg, data, s0.shared, 1, keys[0]))
        assert s1.personal == {} and int(s1.step) == 1 and m.client_ids.tolist() == [1]


def test_fedavg_averages_clients_weighted_by_sample_count():
    with jax.enable_x64(True):
        data, alg = tiny_data(), FedAvg(MLP(), 3, inner_steps=3, batch_size=B, lr=0.05, clients_per_step=2)
        s0 = alg.init(jax.random.key(1))
        ids = jnp.array([0, 2])
        s1, _ = jax.jit(alg.step)(data, s0, ids)
        _, _, keys = alg.round_keys(s0, ids)
        w0, w2 = (local_sgd(alg, data, s0.shared, c, k) for c, k in zip((0, 2), keys))
        n0, n2 = COUNTS[0], COUNTS[2]
        assert_close(s1.shared, jax.tree.map(lambda a, b: (n0 * a + n2 * b) / (n0 + n2), w0, w2))
        # the uniform mean differs: the weighting is really tested
        assert not np.allclose(s1.shared["head"]["kernel"], (w0["head"]["kernel"] + w2["head"]["kernel"]) / 2)


@pytest.mark.parametrize("cls,kept", [(FedPer, ("head",)), (LGFedAvg, ("body",))])
def test_personal_part_is_never_averaged_and_kept_across_rounds(cls, kept):
    with jax.enable_x64(True):
        data = tiny_data()
        target = MLP()
        keep = ("head",) if cls is FedPer else (lambda path: path[0] != "head")
        alg = cls(target, 3, inner_steps=3, batch_size=B, lr=0.05, clients_per_step=2, keep=keep)
        shared_name = ({"head", "body"} - set(kept)).pop()
        s0 = alg.init(jax.random.key(2))
        assert set(s0.shared) == {shared_name} and set(s0.personal) == set(kept)
        step = jax.jit(alg.step)
        r1, r2 = jnp.array([0, 1]), jnp.array([1, 2])
        s1, _ = step(data, s0, r1)
        _, _, k1 = alg.round_keys(s0, r1)
        full0 = {**s0.shared, **jax.tree.map(lambda a: a[0], s0.personal)}   # every client starts alike
        trained = [local_sgd(alg, data, full0, c, k) for c, k in zip((0, 1), k1)]
        n = np.array(COUNTS)[[0, 1]]
        assert_close(s1.shared[shared_name], jax.tree.map(lambda a, b: (n[0] * a + n[1] * b) / n.sum(),
                                                          trained[0][shared_name], trained[1][shared_name]))
        for j, c in enumerate((0, 1)):   # each client keeps its own trained part, not an average
            assert_close(jax.tree.map(lambda a: a[c], s1.personal), {k: trained[j][k] for k in kept})
        assert_close(jax.tree.map(lambda a: a[2], s1.personal), jax.tree.map(lambda a: a[2], s0.personal), 0, 0)

        s2, _ = step(data, s1, r2)
        _, _, k2 = alg.round_keys(s1, r2)
        # client 1 starts round 2 from the server's new part and the part it kept from round 1
        start = {**s1.shared, **jax.tree.map(lambda a: a[1], s1.personal)}
        assert_close(jax.tree.map(lambda a: a[1], s2.personal), {k: local_sgd(alg, data, start, 1, k2[0])[k] for k in kept})
        assert_close(jax.tree.map(lambda a: a[0], s2.personal), jax.tree.map(lambda a: a[0], s1.personal), 0, 0)


def test_local_clients_never_see_each_other():
    """Local: another client's data changes nothing of a client's model, bit for bit."""
    with jax.enable_x64(True):
        alg = Local(MLP(), 3, inner_steps=2, batch_size=B, lr=0.05, clients_per_step=3, keep=lambda p: True)
        step = jax.jit(alg.step)
        states = []
        for data in (tiny_data(), tiny_data(shift_client=2)):
            s = alg.init(jax.random.key(3))
            for _ in range(3):
                s, _ = step(data, s)
            states.append(s)
        a, b = states
        assert a.shared == {} and b.shared == {}
        for c in (0, 1):
            jax.tree.map(lambda u, v: np.testing.assert_array_equal(u[c], v[c]), a.personal, b.personal)
        assert not np.array_equal(a.personal["head"]["kernel"][2], b.personal["head"]["kernel"][2])


# ----------------------------------------------------------------------------- pFedMe


def test_pfedme_inner_solution_satisfies_the_moreau_optimality_condition():
    """θ(w) ≈ argmin f(θ; D) + λ/2 ||θ − w||²: ||∇f(θ) + λ(θ − w)|| shrinks with K, to rounding."""
    with jax.enable_x64(True):
        data = tiny_data()
        w = MLP().init(jax.random.key(4))
        batch = PFedMe(MLP(), 3, batch_size=B).batches(data, 0)(jax.random.key(5))
        residual = lambda th: float(np.max(np.abs(ravel_pytree(jax.tree.map(lambda g, t, ww: g + 15.0 * (t - ww),
                                                              grad(th, batch), th, w))[0])))
        r = {0: residual(w)}
        for k in (5, 400):
            theta, _ = PFedMe(MLP(), 3, batch_size=B, k=k, personal_lr=0.02).personalize(w, w, batch)
            r[k] = residual(theta)
        assert r[0] > 1e-3 and r[5] < 0.5 * r[0] and r[400] < 1e-10 * r[0], r


def test_pfedme_round_matches_the_papers_lines():
    with jax.enable_x64(True):
        data = tiny_data()
        alg = PFedMe(MLP(), 3, inner_steps=3, batch_size=B, lr=0.02, lam=15.0, k=4, personal_lr=0.01, beta=0.7,
                     clients_per_step=2)
        s0 = alg.init(jax.random.key(6))
        ids = jnp.array([2, 0])
        s1, _ = jax.jit(alg.step)(data, s0, ids)
        _, _, keys = alg.round_keys(s0, ids)
        w = to_np(s0.shared)
        locals_, thetas = [], []
        for c, k in zip((2, 0), keys):
            w_loc, theta = w, w
            for kb in jax.random.split(k, alg.inner_steps):          # R local iterations
                batch = alg.batches(data, c)(kb)
                for _ in range(alg.k):                                  # K steps toward θ̃(w_loc)
                    g = to_np(grad(jax.tree.map(jnp.asarray, theta), batch))
                    theta = jax.tree.map(lambda t, gg, wl: t - alg.personal_lr * (gg + alg.lam * (t - wl)), theta, g, w_loc)
                w_loc = jax.tree.map(lambda wl, t: wl - alg.lr * alg.lam * (wl - t), w_loc, theta)
            locals_.append(w_loc)
            thetas.append(theta)
        mean = jax.tree.map(lambda a, b: (a + b) / 2, *locals_)
        assert_close(s1.shared, axpy(1 - alg.beta, w, jax.tree.map(lambda m: alg.beta * m, mean)))
        for j, c in enumerate((2, 0)):                                   # θ_i kept for evaluation
            assert_close(jax.tree.map(lambda a: a[c], s1.personal), thetas[j])
        assert_close(jax.tree.map(lambda a: a[1], s1.personal), s0.shared, 0, 0)


# ----------------------------------------------------------------------------- Per-FedAvg


@pytest.mark.parametrize("hessian_free", [False, True])
def test_per_fedavg_update_equals_the_hand_computed_one(hessian_free):
    """One local iteration of one client; HF against an explicit Hessian of the flat parameters."""
    with jax.enable_x64(True):
        data = tiny_data()
        alg = PerFedAvg(MLP(), 3, inner_steps=1, batch_size=B, lr=0.3, alpha=0.2, hessian_free=hessian_free)
        s0 = alg.init(jax.random.key(7))
        s1, _ = jax.jit(alg.step)(data, s0, jnp.array([1]))
        _, _, keys = alg.round_keys(s0, jnp.array([1]))
        d, d1, d2 = (alg.batches(data, 1)(k) for k in jax.random.split(jax.random.split(keys[0], 1)[0], 3))
        flat, unravel = ravel_pytree(s0.shared)
        g = ravel_pytree(grad(s0.shared, d))[0]
        g1 = ravel_pytree(grad(unravel(flat - alg.alpha * g), d1))[0]
        if hessian_free:
            h = jax.hessian(lambda v: loss_fn(unravel(v), d2))(flat)
            g1 = g1 - alg.alpha * h @ g1
        assert_close(ravel_pytree(s1.shared)[0], flat - alg.lr * g1)
        if not hessian_free:   # the HF correction is really there: the variants differ
            hf = dataclasses.replace(alg, hessian_free=True)
            assert not np.allclose(ravel_pytree(jax.jit(hf.step)(data, s0, jnp.array([1]))[0].shared)[0],
                                   ravel_pytree(s1.shared)[0])


def test_per_fedavg_evaluates_after_one_step_on_own_training_data():
    with jax.enable_x64(True):
        data = tiny_data()
        alg = PerFedAvg(MLP(), 3, batch_size=B, alpha=0.2)
        s = alg.init(jax.random.key(8))
        models = alg.client_models(s, data)
        keys = jax.random.split(jax.random.fold_in(s.key, 1), 3)
        for c in range(3):
            expect = jax.tree.map(lambda w, g: w - alg.alpha * g, s.shared, grad(s.shared, alg.batches(data, c)(keys[c])))
            assert_close(jax.tree.map(lambda a: a[c], models), expect)


# ----------------------------------------------------------------------------- execution paths


def make(algo: str, **kw):
    target = MLP()
    common = dict(inner_steps=2, batch_size=B, clients_per_step=2, **kw)
    return {"local": lambda: Local(target, 3, keep=lambda p: True, **common),
            "fedavg": lambda: FedAvg(target, 3, **common),
            "fedper": lambda: FedPer(target, 3, keep=("head",), **common),
            "lg-fedavg": lambda: LGFedAvg(target, 3, keep=lambda p: p[0] != "head", **common),
            "pfedme": lambda: PFedMe(target, 3, **common),
            "per-fedavg": lambda: PerFedAvg(target, 3, **common),
            "per-fedavg-hf": lambda: PerFedAvg(target, 3, hessian_free=True, **common)}[algo]()


@pytest.mark.parametrize("algo", BASELINES)
def test_vmapped_clients_equal_the_sequential_loop(algo):
    with jax.enable_x64(True):
        data = tiny_data()
        states = {}
        for strategy in ("vmap", "loop"):
            alg = make(algo, strategy=strategy)
            s = alg.init(jax.random.key(9))
            step = jax.jit(alg.step)
            for _ in range(2):
                s, m = step(data, s)
            states[strategy] = (s, m, alg.evaluate(s, data, data.test))
        assert_close(states["vmap"], states["loop"], rtol=1e-9, atol=1e-11)


def tiny(data_dir, algo, out=None, **kw) -> Config:
    return Config(**{**TINY_RUN, "algo": algo, "data_dir": str(data_dir), "num_steps": 4, "eval_every": 2,
                     "clients_per_step": 2, "checkpoint_every": 0, "out": None if out is None else str(out), **kw})


def points(res):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in res["curves"]]


@pytest.mark.parametrize("algo", BASELINES)
def test_seeds_in_one_program_and_resume_equal_single_runs(small_cifar_dir, tmp_path, algo):
    """--seeds 5,6 equals two single runs; a run paused at step 2 and resumed equals a straight one."""
    singles = {s: train(tiny(small_cifar_dir, algo, seed=s), progress=False) for s in (5, 6)}
    group = train_seeds(tiny(small_cifar_dir, algo, tmp_path / "g"), [5, 6], progress=False)
    for r, s in enumerate((5, 6)):
        a, b = points(group["runs"][r]), points(singles[s])
        assert [p["step"] for p in a] == [p["step"] for p in b] == [1, 3, 4]
        for pa, pb in zip(a, b):
            assert pa["val_acc"] == pytest.approx(pb["val_acc"], abs=1e-6)
            assert pa["test_loss"] == pytest.approx(pb["test_loss"], rel=1e-5)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(plain(u)[r], plain(v), rtol=1e-5, atol=1e-6),
                     group["state"], singles[s]["state"])
    out = tmp_path / "r"
    assert train(tiny(small_cifar_dir, algo, out, seed=5), progress=False, stop_at=2)["status"] == "paused"
    resumed = train(tiny(small_cifar_dir, algo, out, seed=5), progress=False)
    assert points(resumed) == points(singles[5]) and resumed["resumed"][0]["at_step"] == 2
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(plain(u), plain(v)), resumed["state"], singles[5]["state"])
    assert resumed["algorithm"]["name"] == algo and resumed["communication"]["bytes_total"] == (
        0 if algo == "local" else 2 * 4 * 2 * resumed["communication"]["bytes_down_per_client"])


def test_sigterm_then_rerun_is_bit_identical_for_a_baseline(small_cifar_dir, tmp_path):
    """pFedMe (a server model and a personal model per client): SIGTERM mid-run, rerun the same
    command, and the curves equal a straight run's."""
    out = tmp_path / "run"
    flags = dict(algo="pfedme", clients_per_step=2, num_steps=100000, eval_every=3, checkpoint_every=0)
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--no-progress", "--data-dir", str(small_cifar_dir),
           "--out", str(out), *tiny_flags(**flags)]
    rc, err = sigterm_once_training(cmd, out)
    assert rc == 143, err
    step = Checkpointer(out / "checkpoints").latest_step()
    p = subprocess.run(cmd + ["--stop-at", str(step + 4)], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert p.returncode == 0, p.stderr
    rerun = json.loads((out / "results.json").read_text())
    straight = train(Config(**{**TINY_RUN, **flags, "data_dir": str(small_cifar_dir), "out": str(tmp_path / "s")}),
                     progress=False, stop_at=step + 4)
    assert rerun["status"] == "paused" and rerun["resumed"][0]["at_step"] == step
    assert points(rerun) == points(straight), (step, points(rerun), points(straight))


DEVICES_SCRIPT = """
import dataclasses, json, sys
import jax, numpy as np
from pfedhn_jax.config import Config
from pfedhn_jax.loop import train, train_seeds
cfg = Config(**json.loads(sys.argv[1]))
flat = lambda tree: [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
                     for x in jax.tree.leaves(jax.device_get(tree))]
out = {}
for n in (1, 2):
    devices = jax.devices()[:n]
    g = train_seeds(dataclasses.replace(cfg, out=f"{cfg.out}-seeds-{n}"), [5, 6], progress=False, devices=devices)
    c = train(dataclasses.replace(cfg, strategy="vmap", out=None), progress=False, devices=devices)
    out[n] = (g, c)
(g1, c1), (g2, c2) = out[1], out[2]
assert g2["runs"][0]["group"]["devices"] == 2 and g1["runs"][0]["group"]["devices"] == 1
for a, b in zip(flat(g1["state"]) + flat(c1["state"]), flat(g2["state"]) + flat(c2["state"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
for r in range(2):
    assert [p["val_acc"] for p in g1["runs"][r]["curves"]] == [p["val_acc"] for p in g2["runs"][r]["curves"]]
assert [p["val_acc"] for p in c1["curves"]] == [p["val_acc"] for p in c2["curves"]]
print("ok")
"""


def test_forced_host_devices_give_the_same_numbers(small_cifar_dir, tmp_path, algo="fedper"):
    """On 2 forced host CPU devices, in one process: two seeds sharded over the devices, and one
    run's 2 clients of a round split over them, equal the same on one device. FedPer: a server part
    averaged over the sharded clients and a personal part scattered back; every baseline's round
    runs its clients through the same `common.run_round`."""
    from conftest import xla_env
    cfg = dataclasses.asdict(tiny(small_cifar_dir, algo, tmp_path / "out"))
    p = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                       env=xla_env(2), cwd=ROOT, timeout=600)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]
