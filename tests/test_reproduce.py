"""The Table 1 grid (pfedhn_jax.grid, scripts/reproduce.py): a real tiny grid on Omniglot for both
algorithms (which also checks Omniglot's wiring through loop.train), resuming a partly
finished grid, the mean ± std aggregation on generated results, and missing datasets."""

import csv
import dataclasses
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from conftest import ROOT
from pfedhn_jax import builders, grid, report
from pfedhn_jax.config import Config
from pfedhn_jax.data.omniglot import MAX_CHARACTERS, load_omniglot
from pfedhn_jax.data.registry import JPEG_COPY_SHA256
from pfedhn_jax.paper import PAPER

OMNI = dict(num_steps=2, inner_steps=2, eval_every=1, batch_size=8, image_size=16, hyper_hid=16, n_hidden=1)
OMNI_CELLS = [grid.Cell("pfedhn", "omniglot", 3, 0), grid.Cell("pfedhn-pc", "omniglot", 3, 0)]


def never_train(cfg, seeds, run_dirs, progress=False):
    raise AssertionError(f"{run_dirs} should not have been trained")


@pytest.fixture(scope="module")
def omni_grid(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    fields = dict(OMNI, data_dir=str(data_dir))
    log = []
    outcomes = grid.run_grid(OMNI_CELLS, out, fields, log=log.append)
    report.write_report(OMNI_CELLS, out, fields, quick=True, outcomes=outcomes)
    return out, fields, outcomes, log


def test_grid_trains_each_cell_into_its_folder(omni_grid):
    out, fields, outcomes, _ = omni_grid
    assert [o.status for o in outcomes] == ["trained", "trained"]
    for cell in OMNI_CELLS:
        res = json.loads((out / cell.name / "results.json").read_text())
        assert res["final"]["step"] == 2 and res["config"]["algo"] == cell.algo
        assert res["config"]["out"] == str(out / cell.name) and res["config"]["seed"] == 0
        assert grid.cell_state(grid.cell_config(cell, out, **fields)) == "finished"
    assert {o.name for o in out.iterdir()} >= {"pfedhn-omniglot-n3-s0", "pfedhn-pc-omniglot-n3-s0",
                                              "table.md", "table.csv", "curves.png"}
    table = (out / "table.md").read_text()
    assert "quick schedule" in table
    assert "| pFedHN | Omniglot | 3 | 1/1 |" in table and "| pFedHN-PC | Omniglot | 3 | 1/1 |" in table
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert {r["schedule_kind"] for r in rows} == {"quick"}
    assert [(r["algo"], r["n_seeds"]) for r in rows] == [("pfedhn", "1"), ("pfedhn-pc", "1")]
    for r, cell in zip(rows, OMNI_CELLS):
        best = json.loads((out / cell.name / "results.json").read_text())["best"]["test_acc"]
        assert float(r["mean"]) == pytest.approx(100 * best, abs=1e-4) and float(r["std"]) == 0
        assert r["paper_mean"] == ""  # no published Omniglot number for N=3


def test_rerun_skips_finished_cells(omni_grid):
    out, fields, _, _ = omni_grid
    files = [out / c.name / "results.json" for c in OMNI_CELLS]
    before = [(f.stat().st_mtime_ns, f.read_bytes()) for f in files]
    log = []
    outcomes = grid.run_grid(OMNI_CELLS, out, fields, log=log.append, train_fn=never_train)
    assert [o.status for o in outcomes] == ["finished", "finished"]
    assert all("finished already, skipped" in line for line in log)
    assert [(f.stat().st_mtime_ns, f.read_bytes()) for f in files] == before
    # and through the real trainer too: a rerun of the same grid leaves the files alone
    grid.run_grid(OMNI_CELLS, out, fields, log=lambda s: None)
    assert [(f.stat().st_mtime_ns, f.read_bytes()) for f in files] == before
    rows, _ = report.write_report(OMNI_CELLS, out, fields, quick=True)
    assert [len(r.seeds) for r in rows] == [1, 1]


def test_omniglot_runs_are_wired_to_alphabets(omni_grid, data_dir):
    out, fields, _, _ = omni_grid
    omni = load_omniglot(data_dir, OMNI["image_size"])
    for cell in OMNI_CELLS:
        cfg = grid.cell_config(cell, out, **fields)
        res = json.loads((out / cell.name / "results.json").read_text())
        assert res["data"]["dataset"] == "omniglot" and res["data"]["sha256"] == omni.raw.sha256
        assert res["algorithm"]["lr"] == {"pfedhn": 1e-2, "pfedhn-pc": 5e-2}[cell.algo]
        data, split, desc = builders.load_data(cfg)
        assert desc["client_counts"] == res["data"]["client_counts"]
        assert data.x.shape[1:] == (16, 16, 1)
        seen = []
        for name in ("train", "val", "test"):
            idx = getattr(data, name)
            for i in range(cfg.num_clients):
                rows = np.asarray(idx.index[i, :int(idx.count[i])])
                assert set(omni.alphabet[rows]) == {i}  # client i is alphabet i, nothing else
                np.testing.assert_array_equal(np.asarray(data.y)[rows], omni.raw.y_train[rows])
                seen.append(rows)
        everything = np.concatenate(seen)
        assert len(np.unique(everything)) == len(everything)  # no drawing in two splits or two clients
        assert len(everything) == int(np.isin(omni.alphabet, range(cfg.num_clients)).sum())
        alg = builders.build_algorithm(cfg)
        head = alg.target.head
        assert alg.target.param_shapes()[head]["kernel"].shape == (128, MAX_CHARACTERS)
        assert alg.hnet.private == ((head,) if cell.algo == "pfedhn-pc" else ())
        assert len(res["best"]["test_per_client"]) == cfg.num_clients


# ----------------------------------------------------------------------- generated results


def fake_results(cfg: Config, test_acc: float, step: int | None = None, sha256: str = "0" * 64,
                 status: str | None = "finished") -> dict:
    """A results.json as loop.train writes it, with a chosen best-val test accuracy."""
    step = cfg.num_steps if step is None else step
    curves = [{"step": s, "test_acc": test_acc * s / step, "val_acc": 0.5} for s in range(1, step + 1, 2)]
    if curves[-1]["step"] != step:
        curves.append({"step": step, "test_acc": test_acc, "val_acc": 0.5})
    res = {"config": cfg.to_dict(), "data": {"dataset": cfg.dataset, "sha256": sha256},
           "curves": curves, "best": {"test_acc": test_acc, "best_step": step},
           "final": {"step": step}}
    if status is not None:
        res["status"] = status
    return res


def write_cell(cfg: Config, res: dict, checkpoint: bool = False) -> None:
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(res, f)
    if checkpoint:
        os.makedirs(os.path.join(cfg.out, "checkpoints", "4"))


class FakeTrainer:
    """Stands in for grid.train_row: records each row's config, seeds and folders, writes finished results."""

    def __init__(self, acc: float = 0.5):
        self.calls, self.seeds, self.dirs, self.acc = [], [], [], acc

    def __call__(self, cfg, seeds, run_dirs, progress=False):
        self.calls.append(cfg)
        self.seeds.append(list(seeds))
        self.dirs.append([os.path.basename(d) for d in run_dirs])
        for s, d in zip(seeds, run_dirs):
            run = dataclasses.replace(cfg, seed=s, out=str(d))
            write_cell(run, fake_results(run, self.acc))  # overwrite / resume do not count as config
        return [{"best": {"test_acc": self.acc}}] * len(seeds)


@pytest.fixture
def c10(tmp_path):
    """A data folder with a (dummy) cifar10.npz: the grid only checks that the file is there."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "cifar10.npz").write_bytes(b"")
    return d


def test_aggregation_mean_std_and_paper_diff(tmp_path, c10):
    out = tmp_path / "out"
    fields = dict(data_dir=str(c10), num_steps=10, inner_steps=5, eval_every=2)
    cells = grid.list_cells(["pfedhn", "pfedhn-pc"], ["cifar10"], [10], [42, 27, 13])
    accs = {42: 0.90, 27: 0.92, 13: 0.87}
    jpeg = next(iter(JPEG_COPY_SHA256))
    for c in cells:
        cfg = grid.cell_config(c, out, **fields)
        if c.algo == "pfedhn":
            write_cell(cfg, fake_results(cfg, accs[c.seed], sha256=jpeg))
        elif c.seed != 13:  # pfedhn-pc: seed 13 unfinished (stopped at step 4), seed 27 a different schedule
            acc = 0.80 if c.seed == 42 else 0.99
            res = fake_results(dataclasses.replace(cfg, inner_steps=7) if c.seed == 27 else cfg, acc, sha256="f" * 64)
            write_cell(cfg, res)
        else:
            write_cell(cfg, fake_results(cfg, 0.10, step=4, status="running"))
    rows, written = report.write_report(cells, out, fields)
    assert written == ["table.md", "table.csv", "curves.png"]
    hn, pc = rows
    assert hn.seeds == [42, 27, 13] and pc.seeds == [42] and pc.requested == 3
    want = np.array([90.0, 92.0, 87.0])
    assert hn.mean == pytest.approx(want.mean(), abs=1e-9)
    assert hn.std == pytest.approx(want.std(ddof=0), abs=1e-9)     # population std over seeds
    assert hn.diff == pytest.approx(want.mean() - 90.83, abs=1e-9)  # the paper's pFedHN, C10 N=10
    assert (pc.mean, pc.std) == (pytest.approx(80.0), 0.0) and pc.diff == pytest.approx(80.0 - 92.47)
    assert hn.label == "CIFAR-10 (JPEG copy)" and pc.label == "CIFAR-10"
    table = (out / "table.md").read_text()
    assert "non-reference schedule" in table and "quick" not in table
    assert f"| pFedHN | CIFAR-10 (JPEG copy) | 10 | 3/3 | {want.mean():.2f} ± {want.std():.2f} | ~90.83 ± 0.28 | " \
           f"{want.mean() - 90.83:+.2f} |" in table
    assert "| pFedHN-PC | CIFAR-10 | 10 | 1/3 | 80.00 (n=1) | 92.47 ± 0.10 | -12.47 |" in table
    rows_csv = list(csv.DictReader((out / "table.csv").open()))
    assert rows_csv[0]["schedule_kind"] == "non-reference" and rows_csv[0]["paper_mean"] == "90.83"
    assert float(rows_csv[0]["mean"]) == pytest.approx(want.mean(), abs=1e-4)
    assert float(rows_csv[0]["std"]) == pytest.approx(want.std(), abs=1e-4)
    assert rows_csv[1]["seeds"] == "42" and rows_csv[1]["n_seeds"] == "1"
    # curves: mean over the finished seeds, per evaluation step
    curves = report.mean_curves(cells, out, fields)
    steps, acc, k = curves[("pfedhn", "cifar10", 10)]
    assert k == 3 and steps[-1] == 10 and acc[-1] == pytest.approx(want.mean())
    assert (out / "curves.png").stat().st_size > 0


def test_mean_std_helper():
    assert report.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(1.25)))
    assert report.mean_std([7.0]) == (7.0, 0.0)
    assert all(math.isnan(x) for x in report.mean_std([]))


@pytest.mark.parametrize("row_checkpoint", [False, True], ids=["no-checkpoint", "row-checkpoint"])
def test_unfinished_cells_train_as_one_row_and_finished_ones_are_kept(tmp_path, c10, row_checkpoint):
    out = tmp_path / "out"
    fields = dict(data_dir=str(c10), num_steps=10, inner_steps=5, eval_every=2)
    cells = grid.list_cells(["pfedhn"], ["cifar10"], [10], [1, 2, 3, 4])
    cfgs = [grid.cell_config(c, out, **fields) for c in cells]
    write_cell(cfgs[0], fake_results(cfgs[0], 0.7))                                   # finished
    write_cell(cfgs[1], fake_results(cfgs[1], 0.1, step=5, status="running"))         # partial
    write_cell(cfgs[2], fake_results(cfgs[2], 0.1, step=5, status="interrupted"))     # partial
    if row_checkpoint:  # the row's group checkpoint: the unfinished seeds continue from it
        os.makedirs(grid.row_folder(cells[0], out) / "checkpoints" / "4")
    kept = (out / cells[0].name / "results.json").read_bytes()
    train = FakeTrainer(0.6)
    outcomes = grid.run_grid(cells, out, fields, train_fn=train, log=lambda s: None)
    statuses = [o.status for o in outcomes]
    want = ["resumed"] * 3 if row_checkpoint else ["restarted", "restarted", "trained"]
    assert statuses == ["finished"] + want
    assert train.seeds == [[2, 3, 4]] and train.dirs == [[c.name for c in cells[1:]]]  # one program for the row
    row = train.calls[0]
    assert row.out == str(grid.row_folder(cells[0], out)) and row.seed == 2
    assert row.overwrite != row_checkpoint      # stale folders without a checkpoint start over
    assert (out / cells[0].name / "results.json").read_bytes() == kept
    assert [len(r.seeds) for r in report.write_report(cells, out, fields)[0]] == [4]


def test_a_folder_of_another_config_is_left_alone_unless_overwrite(tmp_path, c10):
    out = tmp_path / "out"
    fields = dict(data_dir=str(c10), num_steps=10, inner_steps=5, eval_every=2)
    cell = grid.Cell("pfedhn", "cifar10", 10, 42)
    other = dataclasses.replace(grid.cell_config(cell, out, **fields), num_steps=5000, inner_steps=50)
    write_cell(other, fake_results(other, 0.88))
    train, log = FakeTrainer(), []
    outcomes = grid.run_grid([cell], out, fields, train_fn=train, log=log.append)
    assert outcomes[0].status == "conflict" and not train.calls
    assert "different config" in log[0] and "--num-steps (saved: 5000, now: 10)" in log[0] and "--overwrite" in log[0]
    rows, _ = report.write_report([cell], out, fields, outcomes=outcomes)
    assert rows[0].seeds == [] and rows[0].status == "different config in folder"
    outcomes = grid.run_grid([cell], out, fields, train_fn=train, overwrite=True, log=log.append)
    assert outcomes[0].status == "restarted" and train.calls[0].overwrite


def test_missing_dataset_is_reported_and_skipped(tmp_path, c10):
    out = tmp_path / "out"
    fields = dict(data_dir=str(c10), num_steps=10, inner_steps=5, eval_every=2)
    cells = grid.list_cells(["pfedhn"], ["cifar100", "cifar10"], [10], [1, 2])
    train, log = FakeTrainer(), []
    outcomes = grid.run_grid(cells, out, fields, train_fn=train, log=log.append)
    assert [o.status for o in outcomes] == ["skipped-data"] * 2 + ["trained"] * 2
    missing = [line for line in log if line.startswith("cifar100:")]
    assert len(missing) == 1 and "not found" in missing[0] and "cifar100.npz does not exist" in missing[0]
    assert "skipping its 2 cell(s)" in missing[0]
    assert all(os.path.basename(c.out).startswith("pfedhn-cifar10-") for c in train.calls)
    rows, written = report.write_report(cells, out, fields, outcomes=outcomes)
    assert [(r.dataset, r.status, len(r.seeds)) for r in rows] == [("cifar100", "no data", 0), ("cifar10", "", 2)]
    assert "| pFedHN | CIFAR-100 | 10 | 0/2 | no data |" in (out / "table.md").read_text()


def test_default_cells_are_table_1():
    cells = grid.list_cells(log=lambda s: None)
    assert len(cells) == 8 * (3 + 3 + 1) * 3   # Table 1's eight methods
    groups = sorted({c.group for c in cells})
    assert all(g in PAPER for g in groups if g[0].startswith("pfedhn"))
    # equal compute: a baseline's cell runs 5 clients per round for a fifth of pFedHN's rounds
    base, hn = (grid.cell_config(grid.Cell(a, "cifar10", 50, 42), "out") for a in ("fedavg", "pfedhn"))
    assert (base.num_steps * base.clients_per_step, base.eval_every) == (hn.num_steps * hn.clients_per_step, 6)
    assert {c.seed for c in cells} == {42, 27, 13}
    assert grid.Cell("pfedhn-pc", "cifar100", 50, 27).name == "pfedhn-pc-cifar100-n50-s27"
    log = []
    assert [c.num_clients for c in grid.list_cells(["pfedhn"], ["omniglot"], [10, 100], [1], log=log.append)] == [10]
    assert "Omniglot supports at most 50 clients" in log[0]


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_quick_grid_with_missing_data(tmp_path, capsys):
    reproduce = _load_script()
    (tmp_path / "data").mkdir()
    rc = reproduce.main(["--quick", "--algos", "pfedhn,pfedhn-pc", "--datasets", "cifar100", "--num-clients", "10",
                         "--seeds", "1,2",
                         "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"])
    cap = capsys.readouterr()
    err = cap.err
    assert rc == 1  # nothing finished
    assert "cifar100: skipping its 4 cell(s)" in err and "not found" in err
    assert "table.md" in cap.out and "curves.png" not in cap.out  # nothing finished: no plot claimed
    assert not (tmp_path / "out" / "curves.png").exists()
    table = (tmp_path / "out" / "table.md").read_text()
    assert "quick schedule" in table and "num_steps=20, inner_steps=5, eval_every=10" in table
    assert table.count("no data") == 2
    assert reproduce.main(["--list", "--datasets", "cifar100,cifar10", "--num-clients", "10", "--seeds", "1",
                           "--algos", "pfedhn", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "l")]) == 0
    assert capsys.readouterr().out.splitlines() == ["pfedhn-cifar100-n10-s1: no data", "pfedhn-cifar10-n10-s1: no data"]
    assert reproduce.main(["--algos", "fedavgg", "--out", str(tmp_path / "x")]) == 2
    assert "--algos" in capsys.readouterr().err


def test_lr_sweep_trains_each_row_in_one_program_and_the_table_chooses_on_validation(tmp_path, c10):
    """--lr-factors: a row's (lr, seed) runs go to train_row together (lrs given), and the table
    reports the rate with the best mean validation accuracy, even where another rate tests higher."""
    out, fields = tmp_path / "out", dict(data_dir=str(c10), num_steps=10, inner_steps=5, eval_every=2)
    cells = grid.list_cells(["fedavg"], ["cifar10"], [10], [1, 2], lr_factors=[0.5, 1, 2])
    assert [c.lr for c in cells] == [2.5e-3, 2.5e-3, 5e-3, 5e-3, 1e-2, 1e-2] and cells[0].name.endswith("-lr0.0025")
    val = {2.5e-3: 0.70, 5e-3: 0.80, 1e-2: 0.60}     # 5e-3 validates best ...
    test = {2.5e-3: 0.75, 5e-3: 0.72, 1e-2: 0.90}    # ... though 1e-2 tests best
    calls = []

    def train(cfg, seeds, run_dirs, progress=False, lrs=None):
        calls.append((list(seeds), list(lrs)))
        runs = [(lr, s) for lr in lrs for s in seeds]
        for (lr, s), d in zip(runs, run_dirs):
            run = dataclasses.replace(cfg, seed=s, lr=lr, out=str(d))
            res = fake_results(run, test[lr])
            res["best"]["best_val_acc"] = val[lr]
            write_cell(run, res)
        return [{"best": {"test_acc": test[lr]}} for lr, _ in runs]

    outcomes = grid.run_grid(cells, out, fields, train_fn=train, log=lambda s: None)
    assert calls == [([1, 2], [2.5e-3, 5e-3, 1e-2])] and {o.status for o in outcomes} == {"trained"}
    (row,), _ = report.write_report(cells, out, fields)
    assert row.lr == 5e-3 and row.mean == pytest.approx(72.0) and row.seeds == [1, 2]
    assert row.lr_val == pytest.approx({2.5e-3: 70.0, 5e-3: 80.0, 1e-2: 60.0})
    assert "| 0.005 (val 80.00;" in (out / "table.md").read_text()
    assert grid.run_grid(cells, out, fields, train_fn=train, log=lambda s: None) and len(calls) == 1  # all finished
