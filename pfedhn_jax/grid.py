"""The paper's Table 1 as a grid of runs: cells, their on-disk state, and the grid runner.

A cell is one (algorithm, dataset, number of clients, seed) run, written to
`<out>/<algo>-<dataset>-n<N>-s<seed>/`; the unfinished seeds of a row train in one program
(`loop.train_seeds`) with their checkpoint in `<out>/<algo>-<dataset>-n<N>/`. A grid is
resumable: a cell whose results.json is finished with the same run config
(`config.run_differences`) is skipped; an unfinished row is continued from its checkpoint when it
has one, else started over. Tables are rendered by `report`. Everything here except the training
itself is plain Python (no JAX).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from pfedhn_jax.algorithms import TABLE_ALGOS
from pfedhn_jax.algorithms import spec as algorithm_spec
from pfedhn_jax.config import DATASETS, Config, describe_differences, run_differences
from pfedhn_jax.data.registry import spec
from pfedhn_jax.paper import SEEDS
from pfedhn_jax.results import has_checkpoint, read_json

# the short schedule of --quick: checks the pipeline, its numbers are not the paper's
QUICK = {"num_steps": 20, "inner_steps": 5, "eval_every": 10}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid; `lr` set: one value of the row's learning-rate sweep (--lr-factors)."""

    algo: str
    dataset: str
    num_clients: int
    seed: int
    lr: float | None = None

    @property
    def name(self) -> str:
        base = f"{self.algo}-{self.dataset}-n{self.num_clients}-s{self.seed}"
        return base if self.lr is None else f"{base}-lr{self.lr:g}"

    @property
    def group(self) -> tuple[str, str, int]:
        """The table row this cell's seed belongs to."""
        return self.algo, self.dataset, self.num_clients


def sweep_lrs(algo: str, factors: Iterable[float] | None) -> list[float | None]:
    """The learning rates a row sweeps: the algorithm's default --lr times each factor ([None]: none)."""
    if not factors:
        return [None]
    base = Config(algo=algo).effective_lr
    return [float(f"{base * f:.6g}") for f in factors]


def list_cells(algos: Iterable[str] = TABLE_ALGOS, datasets: Iterable[str] = DATASETS,
               num_clients: Iterable[int] | None = None, seeds: Iterable[int] = SEEDS,
               log: Callable[[str], None] = print, lr_factors: Iterable[float] | None = None) -> list[Cell]:
    """The grid's cells in run order (dataset, N, algorithm, lr, seed). `num_clients=None`: Table 1's values
    per dataset. Cells with more clients than a dataset supports are dropped, with a message.
    lr_factors: each row sweeps its algorithm's default --lr times these (chosen on validation by
    `report`); None: the defaults only."""
    cells = []
    for dataset in datasets:
        ds = spec(dataset)
        ns = ds.table_clients if num_clients is None else tuple(num_clients)
        too_many = [n for n in ns if ds.max_clients is not None and n > ds.max_clients]
        if too_many:
            log(f"{dataset}: skipping N={','.join(map(str, too_many))} ({ds.label} supports at most "
                f"{ds.max_clients} clients)")
            ns = tuple(n for n in ns if n not in too_many)
        cells += [Cell(a, dataset, n, s, lr) for n in ns for a in algos for lr in sweep_lrs(a, lr_factors)
                  for s in seeds]
    return cells


def cell_config(cell: Cell, out: str | os.PathLike, **fields: Any) -> Config:
    """The cell's Config: its algorithm, dataset, N and seed, `--out <out>/<cell name>`, plus `fields`.

    Equal compute for every row: `fields`' num_steps and eval_every are pFedHN's (one client per
    step); an algorithm whose spec runs C clients per round gets num_steps / C rounds, evaluated every
    eval_every / C (rounded up), unless fields set clients_per_step (then everyone gets fields as given).
    """
    c = algorithm_spec(cell.algo).clients_per_round
    if c > 1 and "clients_per_step" not in fields:
        ref = Config(**{k: v for k, v in fields.items() if k in ("num_steps", "eval_every")})
        c = min(c, cell.num_clients)
        fields = {**fields, "clients_per_step": c, "num_steps": -(-ref.num_steps // c),
                  "eval_every": -(-ref.eval_every // c)}
    if cell.lr is not None:
        fields = {**fields, "lr": cell.lr}
    return Config(algo=cell.algo, dataset=cell.dataset, num_clients=cell.num_clients, seed=cell.seed,
                  out=str(Path(out) / cell.name), **fields)


def is_finished(results: dict | None, cfg: Config) -> bool:
    """results.json of a completed run of this config: evaluated at the last step, status finished."""
    if not results or not isinstance(results.get("final"), dict):
        return False
    return (results["final"].get("step") == cfg.num_steps and results.get("status", "finished") == "finished"
            and not run_differences(results.get("config", {}), cfg))


def cell_state(cfg: Config) -> str:
    """'finished' (skip), 'conflict' (results of another config: never overwritten silently),
    'partial' (started, unfinished: continue or restart), or 'new'."""
    folder = Path(cfg.out)
    results = read_json(folder / "results.json")
    if results is not None and run_differences(results.get("config", {}), cfg):
        return "conflict"
    if is_finished(results, cfg):
        return "finished"
    if folder.is_dir() and any(folder.iterdir()):
        return "partial"
    return "new"


@dataclasses.dataclass
class CellOutcome:
    cell: Cell
    status: str        # finished (already) | trained | resumed | restarted | skipped-data | conflict | failed
    message: str = ""


def row_folder(cell: Cell, out: str | os.PathLike) -> Path:
    """Where a row's seeds keep their shared checkpoint and summary: `<out>/<algo>-<dataset>-n<N>`."""
    return Path(out) / f"{cell.algo}-{cell.dataset}-n{cell.num_clients}"


def train_row(cfg: Config, seeds: list[int], run_dirs: list[str], progress: bool = False,
              lrs: list[float] | None = None) -> list[dict]:
    """The seeds (x lrs, lr-major) of one row in one program (`loop.train_seeds`); each run's results."""
    from pfedhn_jax.loop import train_seeds
    return train_seeds(cfg, seeds, progress=progress, run_dirs=run_dirs, lrs=lrs)["runs"]


def run_grid(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any], *, overwrite: bool = False,
             progress: bool = False, train_fn: Callable[..., list[dict]] = train_row,
             log: Callable[[str], None] = print) -> list[CellOutcome]:
    """Run every cell that is not finished; returns what happened to each, in cell order.

    The unfinished seeds of a row (algorithm, dataset, N) train together in one program
    (`train_fn(cfg, seeds, run_dirs, progress)`, a leading run axis), each into its cell folder;
    the row's checkpoint lives in `row_folder`. `fields`: Config fields shared by all cells
    (data_dir, schedule, ...). `overwrite`: restart cells whose folder holds results of a
    different config (otherwise they are reported and left alone). Datasets that cannot be found
    are reported once and their cells skipped; a diverged row is reported and the grid goes on;
    an interruption (Ctrl-C) propagates after the row's checkpoint, so rerunning continues.
    """
    from pfedhn_jax.errors import DataError, DivergenceError, UserError
    outcomes: dict[Cell, CellOutcome] = {}
    rows: dict[tuple, list[tuple[Cell, str]]] = {}
    unavailable: dict[str, str] = {}
    for i, cell in enumerate(cells):
        cfg = cell_config(cell, out, **fields)
        tag = f"[{i + 1}/{len(cells)}] {cell.name}"
        if cell.dataset not in unavailable:
            why = spec(cell.dataset).missing(cfg)
            if why:
                unavailable[cell.dataset] = why
                n = sum(c.dataset == cell.dataset for c in cells)
                log(f"{cell.dataset}: skipping its {n} cell(s): {why}")
        if cell.dataset in unavailable:
            outcomes[cell] = CellOutcome(cell, "skipped-data", unavailable[cell.dataset])
            continue
        state = cell_state(cfg)
        if state == "finished":
            log(f"{tag}: finished already, skipped")
            outcomes[cell] = CellOutcome(cell, "finished")
            continue
        if state == "conflict":
            what = describe_differences(run_differences(read_json(Path(cfg.out) / "results.json")["config"], cfg))
            if not overwrite:
                msg = (f"{cfg.out} holds results of a different config ({what}); left alone: "
                       "pass --overwrite to rerun it, or choose another --out")
                log(f"{tag}: {msg}")
                outcomes[cell] = CellOutcome(cell, "conflict", msg)
                continue
            log(f"{tag}: different config in the folder ({what}); --overwrite: starting over")
        rows.setdefault(cell.group, []).append((cell, state))
    for members in rows.values():
        first = members[0][0]
        if first.dataset in unavailable:
            outcomes.update({c: CellOutcome(c, "skipped-data", unavailable[first.dataset]) for c, _ in members})
            continue
        folder = row_folder(first, out)
        resume = has_checkpoint(folder)
        seeds = list(dict.fromkeys(c.seed for c, _ in members))
        lrs = list(dict.fromkeys(c.lr for c in cells if c.group == first.group))
        sweep = lrs != [None]
        if sweep:  # one program runs every (lr, seed) pair: the unfinished seeds at every lr of the row
            states = {(c.lr, c.seed): st for c, st in members}
            members = [(dataclasses.replace(first, seed=sd, lr=lr), states.get((lr, sd), "finished"))
                       for lr in lrs for sd in seeds]
        cfg = dataclasses.replace(cell_config(first, out, **fields), out=str(folder),
                                  overwrite=not resume and any(st != "new" for _, st in members))
        run_dirs = [cell_config(c, out, **fields).out for c, _ in members]
        log(f"{folder.name}: {'continuing' if resume else 'training'} seed(s) {', '.join(map(str, seeds))} "
            + (f"x lr {', '.join(f'{lr:g}' for lr in lrs)} " if sweep else "") + "in one program")
        sweep_kw = {"lrs": lrs} if sweep else {}
        run = lambda c: train_fn(c, seeds, run_dirs, progress, **sweep_kw)
        try:
            try:
                results = run(cfg)
            except UserError as e:
                if not resume or "different config" not in str(e):
                    raise
                log(f"{folder.name}: its checkpoint holds other runs ({e}); starting these seeds over")
                resume, cfg = False, dataclasses.replace(cfg, overwrite=True)
                results = run(cfg)
        except DataError as e:
            unavailable[first.dataset] = str(e)
            log(f"{first.dataset}: cannot read the dataset ({e}); skipping its cells")
            outcomes.update({c: CellOutcome(c, "skipped-data", str(e)) for c, _ in members})
            continue
        except (UserError, DivergenceError) as e:
            log(f"{folder.name}: failed: {e}")
            outcomes.update({c: CellOutcome(c, "failed", str(e)) for c, _ in members})
            continue
        for (cell, st), res in zip(members, results):
            best = (res or {}).get("best") or {}
            log(f"{cell.name}: done, test acc at best val {100 * best.get('test_acc', math.nan):.2f}%")
            status = "resumed" if resume else ("trained" if st == "new" else "restarted")
            outcomes[cell] = CellOutcome(cell, status)
    return [outcomes[c] for c in cells]


def summary_line(outcomes: list[CellOutcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items()) or "no cells"
