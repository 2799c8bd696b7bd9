"""Several runs in one program: S seeds equal S single runs, on 1 device and on forced host CPU devices
(padding runs when S does not divide), resume of a group, and a diverging seed named."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, TINY_RUN, xla_env
from pfedhn_jax.builders import load_group_data
from pfedhn_jax.config import Config
from pfedhn_jax.loop import train, train_seeds
from pfedhn_jax.programs import GroupPrograms

SEEDS = [5, 6]  # every in-process group is 2 runs: one compiled program shared by the tests (and test_distributed)


@pytest.fixture(scope="module")
def fake_dir(small_cifar_dir):
    """Real CIFAR-10 images (a small slice of the real file): random pixels make a chaotic loss
    surface where float rounding differences between the batched and the plain program grow past
    any tolerance."""
    return small_cifar_dir


def tiny(data_dir, out, **kw) -> Config:
    base = dict(TINY_RUN, data_dir=str(data_dir), out=None if out is None else str(out), num_steps=6, eval_every=3,
                checkpoint_every=0)
    return Config(**{**base, **kw})


def points(res):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in res["curves"]]


@pytest.fixture(scope="module")
def singles(fake_dir):
    """Each seed trained alone: the reference numbers."""
    return {s: train(tiny(fake_dir, None, seed=s), progress=False) for s in SEEDS}


def assert_group_equals_singles(group_runs, group_state, singles):
    for r, s in enumerate(SEEDS):
        res = group_runs[r]
        assert res["config"]["seed"] == s
        for a, b in zip(points(res), points(singles[s])):
            assert a.keys() == b.keys() and a["step"] == b["step"]
            for k in ("val_acc", "test_acc"):  # pooled accuracies: counts, equal unless an argmax flips
                assert a[k] == pytest.approx(b[k], abs=1e-6), (s, k)
            for k in ("train_loss", "val_loss", "test_loss"):  # float sums in another order: rounding
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (s, k)
        assert res["best"]["best_step"] == singles[s]["best"]["best_step"]
        mine = jax.tree.map(lambda a: np.asarray(a)[r], group_state.server.params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), mine,
                     jax.device_get(singles[s]["state"].server.params))


def test_seeds_in_one_program_equal_single_runs(fake_dir, tmp_path, singles):
    out = tmp_path / "g"
    g = train_seeds(tiny(fake_dir, out), SEEDS, progress=False)
    assert_group_equals_singles(g["runs"], g["state"], singles)
    for s in SEEDS:
        on_disk = json.loads((out / f"seed-{s}" / "results.json").read_text())
        assert on_disk["status"] == "finished" and on_disk["config"]["seed"] == s
        cpu = jax.default_backend() == "cpu"  # CPU: run by run, each with the plain program's convolution
        assert on_disk["algorithm"]["conv_impl"] == ("nhwc_vjp" if cpu else "xla")
        assert on_disk["group"]["by_run"] == cpu
        assert set(on_disk) >= {"config", "data", "curves", "best", "final", "communication"}
    summary = json.loads((out / "summary.json").read_text())
    accs = [singles[s]["best"]["test_acc"] for s in SEEDS]
    assert summary["seeds"] == SEEDS and "rows" not in summary and summary["mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert summary["std"] == pytest.approx(np.std(accs), abs=1e-6)
    assert "Mean ± std" in (out / "summary.md").read_text()
    assert summary["communication"] == on_disk["communication"]  # the same for every run of the group
    assert f"{on_disk['communication']['bytes_total']:,.0f} in all" in (out / "summary.md").read_text()


def test_learning_rate_sweep_in_one_program_equals_single_runs(fake_dir, tmp_path, singles):
    """--lrs: each (lr, seed) run of the batched program is the single run with that --lr; the
    default lr's run is the `singles` one (pfedhn-pc's default lr is 5e-2)."""
    out = tmp_path / "sweep"
    g = train_seeds(tiny(fake_dir, out), SEEDS[:1], progress=False, lrs=[5e-2, 0.2])
    fast = train(tiny(fake_dir, None, seed=SEEDS[0], lr=0.2), progress=False)
    for r, ref in enumerate([singles[SEEDS[0]], fast]):
        for a, b in zip(points(g["runs"][r]), points(ref)):
            for k in ("val_acc", "test_acc"):
                assert a[k] == pytest.approx(b[k], abs=1e-6), (r, k)
            for k in ("train_loss", "val_loss", "test_loss"):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (r, k)
        mine = jax.tree.map(lambda a: np.asarray(a)[r], g["state"].server.params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), mine,
                     jax.device_get(ref["state"].server.params))
    assert not np.allclose(np.asarray(g["state"].server.params["embeddings"])[0],
                           np.asarray(g["state"].server.params["embeddings"])[1])  # the lr mattered
    assert json.loads((out / "lr-0.2" / f"seed-{SEEDS[0]}" / "results.json").read_text())["config"]["lr"] == 0.2
    summary = json.loads((out / "summary.json").read_text())
    assert [r["lr"] for r in summary["rows"]] == [5e-2, 0.2] and summary["sweep"] == "lr"
    accs = [g["runs"][r]["best"]["test_acc"] for r in range(2)]
    assert summary["rows"][1]["mean"] == pytest.approx(accs[1], abs=1e-9)
    vals = [g["runs"][r]["best"]["best_val_acc"] for r in range(2)]
    assert summary["rows"][1]["val_mean"] == pytest.approx(vals[1], abs=1e-9)
    assert summary["best_lr"] == (0.2 if vals[1] > vals[0] else 5e-2)   # chosen on validation, not test
    assert "| 0.2 |" in (out / "summary.md").read_text()


def test_vmapped_and_run_by_run_groups_agree(fake_dir):
    """Both ways to run a group (run by run: CPU's default; vmapped: accelerators') step and
    evaluate to the same numbers; the single-run tests above cover the default way."""
    cfg = tiny(fake_dir, None)
    data, _, _ = load_group_data(cfg, SEEDS)
    by_run, vmapped = (GroupPrograms(cfg, data, len(SEEDS), by_run=b) for b in (True, False))
    assert by_run.by_run and not vmapped.by_run and (by_run.conv_impl, vmapped.conv_impl) == ("nhwc_vjp", "im2col")
    s0 = by_run.init(SEEDS)
    state, m = by_run.step(s0)
    state_v, m_v = vmapped.step(s0)
    np.testing.assert_array_equal(m.client_ids, m_v.client_ids)
    np.testing.assert_allclose(m.loss, m_v.loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.server.params,
                 state_v.server.params)
    a, b = by_run.evaluate_runs(state), vmapped.evaluate_runs(state)  # [(val, test) summaries] per run
    assert len(a) == len(b) == len(SEEDS)
    for run_a, run_b in zip(a, b):
        for x, y in zip(run_a, run_b):
            assert x["per_client"] == y["per_client"] and len(x["per_client"]) == cfg.num_clients
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    assert a[0][1]["loss"] != a[1][1]["loss"]  # two different runs


def test_group_resumes_bit_identically(fake_dir, tmp_path):
    cfg = tiny(fake_dir, tmp_path / "a", num_steps=8, checkpoint_every=4)
    straight = train_seeds(cfg, SEEDS, progress=False)
    half = tiny(fake_dir, tmp_path / "b", num_steps=8, checkpoint_every=4)
    assert train_seeds(half, SEEDS, progress=False, stop_at=4)["runs"][0]["status"] == "paused"
    resumed = train_seeds(half, SEEDS, progress=False)
    assert [points(r) for r in resumed["runs"]] == [points(r) for r in straight["runs"]]
    jax.tree.map(np.testing.assert_array_equal, jax.random.key_data(resumed["state"].key),
                 jax.random.key_data(straight["state"].key))
    jax.tree.map(np.testing.assert_array_equal, resumed["state"].server.params, straight["state"].server.params)


def test_diverging_seed_stops_the_group_naming_it(fake_dir, tmp_path):
    from pfedhn_jax.errors import DivergenceError
    cfg = tiny(fake_dir, tmp_path / "d", num_steps=20, eval_every=1)  # the lr is state: the same program
    with pytest.raises(DivergenceError, match=r"lr 1e\+06, seed \d+, client \d+"):
        train_seeds(cfg, SEEDS[:1], progress=False, lrs=[5e-2, 1e6])
    assert json.loads((tmp_path / "d" / "lr-1e+06" / f"seed-{SEEDS[0]}" / "results.json").read_text())["status"] == "diverged"


DEVICES_SCRIPT = """
import dataclasses, json, sys
import jax, numpy as np
from pfedhn_jax.builders import load_group_data
from pfedhn_jax.config import Config
from pfedhn_jax.loop import train, train_seeds
from pfedhn_jax.programs import GroupPrograms, device_mesh
cfg, ccfg, seeds = Config(**json.loads(sys.argv[1])), Config(**json.loads(sys.argv[3])), json.loads(sys.argv[2])
save = lambda name, params: np.savez(f"{sys.argv[5]}/{name}.npz", **{str(i): np.asarray(x) for i, x in
                                                                    enumerate(jax.tree.leaves(jax.device_get(params)))})
got = {}
# this process's own one-device runs: the baseline the sharded runs must equal (see the test)
g1 = train_seeds(dataclasses.replace(cfg, out=f"{cfg.out}-1"), seeds, progress=False, devices=jax.devices()[:1])
save("params-1", g1["state"].server.params)
c1 = train(ccfg, progress=False, devices=jax.devices()[:1])
save("clients-1", c1["state"].server.params)
got["base"] = {"curves": [r["curves"] for r in g1["runs"]], "client_curves": c1["curves"]}
for n in json.loads(sys.argv[4]):  # device counts, each a prefix of the forced host devices
    devices = jax.devices()[:n]
    g = train_seeds(dataclasses.replace(cfg, out=f"{cfg.out}-{n}"), seeds, progress=False, devices=devices)
    save(f"params-{n}", g["state"].server.params)
    if n == 4:  # the accelerators' way on the same mesh: the runs vmapped, sharded over 'runs'
        padded = seeds + [seeds[-1]] * (n - len(seeds))
        t = GroupPrograms(cfg, load_group_data(cfg, padded)[0], n, device_mesh(n, 1, devices), by_run=False)
        state = t.init(padded)
        for _ in range(cfg.num_steps):
            state = t.step(state)[0]
        save("vmapped-4", state.server.params)
    c = train(ccfg, progress=False, devices=devices)  # one run, its clients split over the devices
    save(f"clients-{n}", c["state"].server.params)
    got[n] = {"curves": [r["curves"] for r in g["runs"]], "padded": g["runs"][0]["group"]["padded_runs"],
              "devices": g["runs"][0]["group"]["devices"], "client_curves": c["curves"]}
print(json.dumps(got))
"""

CLIENTS = dict(num_clients=8, clients_per_step=8, seed=5, algo="pfedhn", strategy="vmap")
DEVICE_COUNTS = [4, 8]


@pytest.fixture(scope="module")
def many_clients(fake_dir):
    """One run with 8 clients per step on one device, vmapped (the sharded program is vmapped too)."""
    return train(tiny(fake_dir, None, **CLIENTS), progress=False)


def test_forced_host_devices_give_the_same_numbers(fake_dir, tmp_path, singles, many_clients):
    """Seeds sharded over 4 and over 8 devices (padded; run by run, and on 4 devices also vmapped),
    and one run's clients of a step sharded over them; one subprocess with 8 forced host devices
    runs both counts.

    Two comparisons. (1) Against the same group on ONE device of the same subprocess: the sharded
    seeds equal it bit for bit in parameters (each device runs the one-device program), and
    the losses to float32 summation rounding (rel 1e-6); the clients of a step, whose server update
    is summed across devices in another order, to rel 1e-5. (2) Against this process's runs: a
    process with 8 forced host devices runs XLA:CPU's kernels on other thread partitions, so even
    its one-device program rounds differently, and 6 training steps of this tiny, high-lr run
    amplify that: measured on real CIFAR-10 (git 56e2856), rel 3.4e-5 in a val_loss, rel 4e-3 in a
    train loss and one flipped test prediction (0.0012 of pooled accuracy), the same for the
    subprocess's one-device group and its sharded ones. So (2) only checks that the subprocess
    trains the same runs: accuracies within 3e-2, losses within rel 5e-2. Measured in one process
    with 4 forced devices: seeds sharded over them equal the one-device runs bit for bit (losses to
    6e-8); the 3.4e-5 that failed the old test was (2), rounding, not sharding."""
    cfg = dataclasses.asdict(tiny(fake_dir, tmp_path / "out"))
    ccfg = dataclasses.asdict(tiny(fake_dir, None, **CLIENTS))
    env = xla_env(max(DEVICE_COUNTS))
    p = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT, json.dumps(cfg), json.dumps(SEEDS), json.dumps(ccfg),
                        json.dumps(DEVICE_COUNTS), str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout.strip().splitlines()[-1])
    base = results.pop("base")
    assert sorted(map(int, results)) == DEVICE_COUNTS
    load = lambda name: np.load(tmp_path / f"{name}.npz")
    # (2) the subprocess's one-device runs against this process's
    for r, s in enumerate(SEEDS):
        assert_points_close(base["curves"][r], points(singles[s]), ("process", s), rel=5e-2, acc=3e-2)
    assert_points_close(base["client_curves"], points(many_clients), "process", rel=5e-2, acc=3e-2)
    # (1) sharded against one device, in the same process
    for devices in DEVICE_COUNTS:
        got = results[str(devices)]
        assert got["devices"] == devices and got["padded"] == devices  # 2 seeds padded to 4 / 8 devices
        for r, s in enumerate(SEEDS):
            assert_points_close(got["curves"][r], base["curves"][r], (devices, s), rel=1e-6)
            one = {k: v[r] for k, v in load("params-1").items()}
            assert_leaves_close(load(f"params-{devices}"), one, r, rtol=0, atol=0)
            if devices == 4:  # vmapped runs: another program (im2col convolutions), rounding
                assert_leaves_close(load("vmapped-4"), one, r, rtol=1e-5, atol=1e-6)
        assert_points_close(got["client_curves"], base["client_curves"], devices, rel=1e-5)
        assert_leaves_close(load(f"clients-{devices}"), load("clients-1"), None, rtol=1e-5, atol=1e-6)


def assert_leaves_close(mine, ref, run: int | None, rtol: float, atol: float) -> None:
    """Leaves saved by DEVICES_SCRIPT (an npz of leaves "0", "1", ...; `run`: a leading run axis to
    index) against a params tree or another such npz."""
    if hasattr(ref, "files") or (isinstance(ref, dict) and "0" in ref):
        ref = [ref[str(i)] for i in range(len(mine.files))]
    else:
        ref = jax.tree.leaves(jax.device_get(ref))
    assert len(mine.files) == len(ref)
    for i, b in enumerate(ref):
        a = mine[str(i)] if run is None else mine[str(i)][run]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"leaf {i}")


def assert_points_close(mine, ref, what, rel: float = 1e-5, acc: float = 1e-6):
    assert len(mine) == len(ref)
    for a, b in zip(mine, ref):
        assert a["step"] == b["step"]
        for k in ("val_acc", "test_acc"):
            assert a[k] == pytest.approx(b[k], abs=acc), (what, k)
        for k in ("train_loss", "val_loss", "test_loss"):
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-6), (what, k)


def test_indivisible_client_axis_is_refused_in_one_line(fake_dir, tmp_path):
    env = xla_env(4)
    p = subprocess.run([sys.executable, "scripts/train.py", "--data-dir", str(fake_dir), "--num-clients", "8",
                        "--clients-per-step", "6", "--num-steps", "2", "--cpu-devices", "4"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: --clients-per-step: 6 clients")


def test_matmul_precision_is_traced_into_every_program(fake_dir, singles):
    """--matmul-precision float32 (the default) marks every matmul and convolution of the step and
    the evaluation HIGHEST (full float32 on GPUs and TPUs); 'default' leaves them DEFAULT (TF32 on
    NVIDIA GPUs). The two do not share compiled programs, and on CPU they compute the same numbers."""
    for precision, mark, other in (("float32", "HIGHEST", "DEFAULT"), ("default", "DEFAULT", "HIGHEST")):
        cfg = tiny(fake_dir, None, seed=SEEDS[0], matmul_precision=precision)
        trainer = GroupPrograms(cfg, load_group_data(cfg, SEEDS[:1])[0], 1)
        for lowered in trainer.lower(trainer.init(SEEDS[:1])):
            ops = [line for line in lowered.as_text().splitlines()
                   if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
            assert ops and all(mark in line and other not in line for line in ops), precision
    res = train(tiny(fake_dir, None, seed=SEEDS[0], matmul_precision="default"), progress=False)
    assert points(res) == points(singles[SEEDS[0]])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(res["state"].server.params),
                 jax.device_get(singles[SEEDS[0]]["state"].server.params))
