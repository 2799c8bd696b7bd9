"""The paper's Table 1 as a grid of runs: cells, resuming a partly finished grid, mean ± std tables.

A cell is one (algorithm, dataset, number of clients, seed) run, written to
`<out>/<algo>-<dataset>-n<N>-s<seed>/` by `experiment.train`. A grid is resumable: a cell whose
results.json is finished with the same config is skipped; an unfinished cell is continued from its
checkpoint when it has one, else started over. Tables report, per (algorithm, dataset, N), the mean
± std over the finished seeds of the test accuracy at the best validation step, beside the paper's
value (REFERENCE.md §6). Everything here except `run_grid` is plain Python (no JAX) so the tables
can be rebuilt from results files alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from pfedhn_jax.config import ALGOS, Config
from pfedhn_jax.data.sources import resolve_data_dir

SEEDS = (42, 27, 13)                       # the authors' sweep (REFERENCE.md §3)
ALGO_NAMES = {"pfedhn": "pFedHN", "pfedhn-pc": "pFedHN-PC"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "omniglot": "Omniglot"}
DATASET_FILES = {"cifar10": "cifar10.npz", "cifar100": "cifar100.npz", "omniglot": "omniglot.npz"}
# Table 1's cells: CIFAR with 10, 50, 100 clients; Omniglot with its 50 alphabets.
DEFAULT_NUM_CLIENTS = {"cifar10": (10, 50, 100), "cifar100": (10, 50, 100), "omniglot": (50,)}
OMNIGLOT_MAX_CLIENTS = 50
# checksums of the offline CIFAR-10 copies decoded from JPEG (shared/data/README.md)
JPEG_COPY_SHA256 = {"bfd5db62d6aaecf2e4199cb74f14832c5dcf3527c99fbe3b90fff1be42182ad6"}
# the short schedule of --quick: checks the pipeline, its numbers are not the paper's
QUICK = {"num_steps": 20, "inner_steps": 5, "eval_every": 10}
# Config fields that change neither the numbers nor the schedule: a finished cell is still
# "the same run" when only these differ (paths, speed, checkpoint cadence, how it was started).
IGNORED_FIELDS = ("data_dir", "out", "overwrite", "resume", "strategy", "conv_impl", "unroll",
                  "checkpoint_every", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class Published:
    """A published test accuracy (%), REFERENCE.md §6; `checked`: cross-checked against a copy of the table."""

    mean: float
    std: float | None
    checked: bool

    def __str__(self) -> str:
        s = f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")
        return s if self.checked else f"~{s}"


PAPER: dict[tuple[str, str, int], Published] = {
    ("pfedhn", "cifar10", 10): Published(90.83, 0.28, False),
    ("pfedhn", "cifar10", 50): Published(88.38, 0.29, False),
    ("pfedhn", "cifar10", 100): Published(87.97, 0.70, False),
    ("pfedhn", "cifar100", 10): Published(65.74, 1.80, False),
    ("pfedhn", "cifar100", 50): Published(59.48, 0.67, False),
    ("pfedhn", "cifar100", 100): Published(53.24, 0.31, True),
    ("pfedhn-pc", "cifar10", 10): Published(92.47, 0.10, True),
    ("pfedhn-pc", "cifar10", 50): Published(90.08, 0.63, True),
    ("pfedhn-pc", "cifar10", 100): Published(88.09, 0.86, True),
    ("pfedhn-pc", "cifar100", 10): Published(68.15, 1.49, True),
    ("pfedhn-pc", "cifar100", 50): Published(60.17, 1.63, True),
    ("pfedhn-pc", "cifar100", 100): Published(52.40, 0.40, False),
    ("pfedhn", "omniglot", 50): Published(72.0, None, False),   # "about 72", recalled
    ("pfedhn-pc", "omniglot", 50): Published(82.0, None, False),  # "about 82", recalled
}


@dataclasses.dataclass(frozen=True)
class Cell:
    algo: str
    dataset: str
    num_clients: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.algo}-{self.dataset}-n{self.num_clients}-s{self.seed}"

    @property
    def group(self) -> tuple[str, str, int]:
        """The table row this cell's seed belongs to."""
        return self.algo, self.dataset, self.num_clients


def list_cells(algos: Iterable[str] = ALGOS, datasets: Iterable[str] = tuple(DEFAULT_NUM_CLIENTS),
               num_clients: Iterable[int] | None = None, seeds: Iterable[int] = SEEDS,
               log: Callable[[str], None] = print) -> list[Cell]:
    """The grid's cells in run order (dataset, N, algorithm, seed). `num_clients=None`: Table 1's values
    per dataset. Omniglot cells with more clients than its 50 alphabets are dropped, with a message."""
    cells = []
    for dataset in datasets:
        ns = DEFAULT_NUM_CLIENTS.get(dataset, (50,)) if num_clients is None else tuple(num_clients)
        if dataset == "omniglot" and any(n > OMNIGLOT_MAX_CLIENTS for n in ns):
            log(f"omniglot: skipping N={','.join(str(n) for n in ns if n > OMNIGLOT_MAX_CLIENTS)} "
                f"(Omniglot has {OMNIGLOT_MAX_CLIENTS} alphabets, one per client)")
            ns = tuple(n for n in ns if n <= OMNIGLOT_MAX_CLIENTS)
        cells += [Cell(a, dataset, n, s) for n in ns for a in algos for s in seeds]
    return cells


def cell_config(cell: Cell, out: str | os.PathLike, **fields: Any) -> Config:
    """The cell's Config: its algorithm, dataset, N and seed, `--out <out>/<cell name>`, plus `fields`."""
    return Config(algo=cell.algo, dataset=cell.dataset, num_clients=cell.num_clients, seed=cell.seed,
                  out=str(Path(out) / cell.name), **fields)


# ---------------------------------------------------------------------------------------- state

def read_results(folder: str | os.PathLike) -> dict | None:
    """A cell's results.json, or None when absent or unreadable (a half-written file counts as absent)."""
    p = Path(folder) / "results.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def config_differences(saved: dict, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, now)} over the fields that change the numbers; a field missing from an older
    results file counts as its default."""
    now = cfg.to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    out = {}
    for k in sorted(set(saved) | set(now)):
        if k in IGNORED_FIELDS:
            continue
        a, b = saved.get(k, defaults.get(k)), now.get(k, defaults.get(k))
        if a != b:
            out[k] = (a, b)
    return out


def is_finished(results: dict | None, cfg: Config) -> bool:
    """results.json of a completed run of this config: evaluated at the last step, status not unfinished."""
    if not results or not isinstance(results.get("final"), dict):
        return False
    return (results["final"].get("step") == cfg.num_steps and results.get("status", "finished") == "finished"
            and not config_differences(results.get("config", {}), cfg))


def has_checkpoint(folder: str | os.PathLike) -> bool:
    d = Path(folder) / "checkpoints"
    return d.is_dir() and any(d.iterdir())


def cell_state(cfg: Config) -> str:
    """'finished' (skip), 'conflict' (results of another config: never overwritten silently),
    'partial' (started, unfinished: continue or restart), or 'new'."""
    folder = Path(cfg.out)
    results = read_results(folder)
    if results is not None and config_differences(results.get("config", {}), cfg):
        return "conflict"
    if is_finished(results, cfg):
        return "finished"
    if folder.is_dir() and any(folder.iterdir()):
        return "partial"
    return "new"


def missing_data(dataset: str, cfg: Config) -> str | None:
    """Why `dataset` cannot be read, when that is clear without loading it; None if it may be there."""
    if cfg.data_source == "tfds" or cfg.download:
        return None  # TFDS: only reading tells
    d = resolve_data_dir(cfg.data_dir)
    if d is None:
        return "no --data-dir given and $PFEDHN_DATA_DIR is unset"
    f = d / DATASET_FILES[dataset]
    if f.is_file():
        return None
    return f"{f} does not exist"


# ---------------------------------------------------------------------------------------- runs

@dataclasses.dataclass
class CellOutcome:
    cell: Cell
    status: str        # finished (already) | trained | resumed | restarted | skipped-data | conflict | failed
    message: str = ""


def _config_has(field: str) -> bool:
    return any(f.name == field for f in dataclasses.fields(Config))


def run_grid(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any], *, overwrite: bool = False,
             progress: bool = False, train_fn: Callable[..., dict] | None = None,
             log: Callable[[str], None] = print) -> list[CellOutcome]:
    """Run every cell that is not finished; returns what happened to each.

    `fields`: Config fields shared by all cells (data_dir, schedule, ...). `overwrite`: restart cells
    whose folder holds results of a different config (otherwise they are reported and left alone).
    Datasets that cannot be found are reported once and their cells skipped; a diverged cell is
    reported and the grid goes on; an interruption (Ctrl-C) propagates after the cell's own
    checkpoint, so rerunning the grid continues. `train_fn` defaults to `experiment.train`.
    """
    from pfedhn_jax.errors import DataError, DivergenceError, UserError
    if train_fn is None:
        from pfedhn_jax.experiment import train as train_fn
    outcomes: list[CellOutcome] = []
    unavailable: dict[str, str] = {}
    for i, cell in enumerate(cells):
        cfg = cell_config(cell, out, **fields)
        tag = f"[{i + 1}/{len(cells)}] {cell.name}"
        if cell.dataset not in unavailable:
            why = missing_data(cell.dataset, cfg)
            if why:
                unavailable[cell.dataset] = why
                n = sum(c.dataset == cell.dataset for c in cells)
                log(f"{cell.dataset}: dataset not found ({why}); skipping its {n} cell(s). Put "
                    f"{DATASET_FILES[cell.dataset]} in --data-dir, or use --data-source tfds [--download]")
        if cell.dataset in unavailable:
            outcomes.append(CellOutcome(cell, "skipped-data", unavailable[cell.dataset]))
            continue
        state = cell_state(cfg)
        if state == "finished":
            log(f"{tag}: finished already, skipped")
            outcomes.append(CellOutcome(cell, "finished"))
            continue
        if state == "conflict":
            diff = config_differences(read_results(cfg.out)["config"], cfg)
            what = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
            if not overwrite:
                msg = (f"{cfg.out} holds results of a different config ({what}); left alone: "
                       "pass --overwrite to rerun it, or choose another --out")
                log(f"{tag}: {msg}")
                outcomes.append(CellOutcome(cell, "conflict", msg))
                continue
            log(f"{tag}: different config in the folder ({what}); --overwrite: starting over")
            run_cfg, status = dataclasses.replace(cfg, overwrite=True), "restarted"
        elif state == "partial" and has_checkpoint(cfg.out) and _config_has("resume"):
            log(f"{tag}: unfinished, continuing from its checkpoint")
            run_cfg, status = dataclasses.replace(cfg, resume=True), "resumed"
        elif state == "partial":
            log(f"{tag}: unfinished and no checkpoint, starting over")
            run_cfg, status = dataclasses.replace(cfg, overwrite=True), "restarted"
        else:
            log(f"{tag}: training")
            run_cfg, status = cfg, "trained"
        try:
            res = train_fn(run_cfg, progress=progress)
        except DataError as e:
            unavailable[cell.dataset] = str(e)
            log(f"{cell.dataset}: cannot read the dataset ({e}); skipping its cells")
            outcomes.append(CellOutcome(cell, "skipped-data", str(e)))
            continue
        except (UserError, DivergenceError) as e:
            log(f"{tag}: failed: {e}")
            outcomes.append(CellOutcome(cell, "failed", str(e)))
            continue
        best = (res or {}).get("best") or {}
        log(f"{tag}: done, test acc at best val {100 * best.get('test_acc', math.nan):.2f}%")
        outcomes.append(CellOutcome(cell, status))
    return outcomes


# ---------------------------------------------------------------------------------------- tables

def dataset_label(dataset: str, sha256: str | None) -> str:
    """'CIFAR-10 (JPEG copy)' for the offline JPEG-degraded file, else the dataset's name."""
    name = DATASET_NAMES.get(dataset, dataset)
    return f"{name} (JPEG copy)" if dataset == "cifar10" and sha256 in JPEG_COPY_SHA256 else name


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof = 0; 0 for a single seed); NaNs for none."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


@dataclasses.dataclass
class Row:
    algo: str
    dataset: str
    num_clients: int
    label: str                    # dataset as printed
    seeds: list[int]              # the finished seeds
    requested: int                # seeds asked for
    test_accs: list[float]        # %, test accuracy at the best validation step, per finished seed
    mean: float
    std: float
    paper: Published | None
    schedule: str                 # "steps x inner steps"
    status: str                   # "" or why the row is empty

    @property
    def diff(self) -> float:
        return self.mean - self.paper.mean if self.paper is not None and self.seeds else math.nan


def collect(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any],
            outcomes: list[CellOutcome] | None = None) -> list[Row]:
    """One row per (algorithm, dataset, N) of `cells`, from the finished cells' results.json."""
    why = {o.cell: o for o in outcomes or []}
    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    rows = []
    for (algo, dataset, n), members in groups.items():
        seeds, accs, shas, status = [], [], set(), ""
        for c in members:
            cfg = cell_config(c, out, **fields)
            res = read_results(cfg.out)
            if is_finished(res, cfg) and (res.get("best") or {}).get("test_acc") is not None:
                seeds.append(c.seed)
                accs.append(100.0 * float(res["best"]["test_acc"]))
                shas.add((res.get("data") or {}).get("sha256"))
        cfg0 = cell_config(members[0], out, **fields)
        if not seeds:
            reasons = {why[c].status for c in members if c in why}
            status = ("no data" if reasons == {"skipped-data"} else
                      "different config in folder" if "conflict" in reasons else
                      "failed" if "failed" in reasons else "not run")
        label = dataset_label(dataset, next(iter(shas)) if len(shas) == 1 else None)
        m, s = mean_std(accs)
        rows.append(Row(algo, dataset, n, label, seeds, len(members), accs, m, s, PAPER.get((algo, dataset, n)),
                        f"{cfg0.num_steps} x {cfg0.inner_steps}", status))
    return rows


def schedule_note(fields: dict[str, Any], quick: bool) -> str:
    cfg = Config(**{k: v for k, v in fields.items() if k in {f.name for f in dataclasses.fields(Config)}})
    sched = f"num_steps={cfg.num_steps}, inner_steps={cfg.inner_steps}, eval_every={cfg.eval_every}"
    if quick:
        return f"**quick schedule** ({sched}): a pipeline check, NOT comparable with the paper's numbers."
    ref = Config()
    if (cfg.num_steps, cfg.inner_steps, cfg.batch_size) != (ref.num_steps, ref.inner_steps, ref.batch_size):
        return f"**non-reference schedule** ({sched}; the paper: 5000 x 50 steps, batch 64)."
    return f"Reference schedule ({sched}, batch {cfg.batch_size})."


def _fmt(x: float, nd: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render_markdown(rows: list[Row], note: str) -> str:
    lines = ["# pFedHN reproduction: test accuracy (%) at the best validation step", "",
             note, "",
             "Ours: mean ± std (population, ddof=0) over the finished seeds; pooled accuracy over all clients "
             "(REFERENCE.md §5). Paper: Table 1 (REFERENCE.md §6; `~` = recalled, not yet checked against "
             "the paper). diff = ours − paper.", "",
             "| algorithm | dataset | N | seeds | ours | paper | diff | schedule | per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = f"{_fmt(r.mean)} ± {_fmt(r.std)}" if r.seeds else (r.status or "—")
        per_seed = ", ".join(f"s{s}: {a:.2f}" for s, a in zip(r.seeds, r.test_accs))
        diff = "—" if math.isnan(r.diff) else f"{r.diff:+.2f}"
        lines.append(f"| {ALGO_NAMES.get(r.algo, r.algo)} | {r.label} | {r.num_clients} | {len(r.seeds)}/{r.requested} "
                     f"| {ours} | {r.paper if r.paper else '—'} | {diff} | {r.schedule} | {per_seed} |")
    if any("JPEG" in r.label for r in rows):
        lines += ["", "CIFAR-10 (JPEG copy): the offline file is CIFAR-10 decoded from JPEG (quality 75); "
                      "accuracies on it are typically a little lower than on real CIFAR-10."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("algo", "dataset", "dataset_label", "num_clients", "n_seeds", "seeds", "requested_seeds",
              "mean", "std", "paper_mean", "paper_std", "paper_checked", "diff", "schedule", "schedule_kind",
              "test_accs", "status")


def schedule_kind(note: str) -> str:
    return "quick" if "quick schedule" in note else "non-reference" if "non-reference" in note else "reference"


def write_csv(rows: list[Row], path: Path, note: str) -> None:
    """One line per row; empty cells where there is no number. Accuracies in %."""
    num = lambda x: "" if x is None or math.isnan(x) else f"{x:.4f}"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            p = r.paper
            w.writerow([r.algo, r.dataset, r.label, r.num_clients, len(r.seeds), " ".join(map(str, r.seeds)),
                        r.requested, num(r.mean), num(r.std), p.mean if p else "",
                        "" if p is None or p.std is None else p.std, p.checked if p else "",
                        num(r.diff), r.schedule, schedule_kind(note), " ".join(f"{a:.4f}" for a in r.test_accs),
                        r.status])


def mean_curves(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any]) -> dict:
    """{(algo, dataset, N): (steps, mean test accuracy %, seeds)} over the finished seeds, on the
    evaluation steps all of them share."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for c in cells:
        cfg = cell_config(c, out, **fields)
        res = read_results(cfg.out)
        if is_finished(res, cfg) and res.get("curves"):
            groups.setdefault(c.group, []).append({r["step"]: r["test_acc"] for r in res["curves"]})
    curves = {}
    for g, runs in groups.items():
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        curves[g] = (steps, [100.0 * sum(r[s] for r in runs) / len(runs) for s in steps], len(runs))
    return curves


def plot_curves(curves: dict, path: Path, note: str) -> bool:
    """Test-accuracy curves, one panel per (dataset, N), one line per algorithm; False if nothing to draw."""
    if not curves:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = sorted({(d, n) for _, d, n in curves}, key=lambda p: (list(DATASET_NAMES).index(p[0])
                                                                    if p[0] in DATASET_NAMES else 99, p[1]))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (d, n) in zip(axes.flat, panels):
        for (algo, d2, n2), (steps, acc, k) in sorted(curves.items()):
            if (d2, n2) == (d, n):
                ax.plot(steps, acc, label=f"{ALGO_NAMES.get(algo, algo)} ({k} seed{'s' * (k != 1)})")
                p = PAPER.get((algo, d, n))
                if p is not None:
                    ax.axhline(p.mean, ls=":", lw=0.8, color=ax.lines[-1].get_color())
        ax.set(title=f"{DATASET_NAMES.get(d, d)}, N={n}", xlabel="outer step", ylabel="test acc (%), mean over seeds")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(note.replace("**", "") + "  (dotted: paper)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any], quick: bool = False,
                 outcomes: list[CellOutcome] | None = None) -> list[Row]:
    """table.md, table.csv and curves.png in `out`, from the cells' results files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(cells, out, fields, outcomes)
    note = schedule_note(fields, quick)
    tmp = out / "table.md.tmp"
    tmp.write_text(render_markdown(rows, note))
    os.replace(tmp, out / "table.md")
    write_csv(rows, out / "table.csv", note)
    plot_curves(mean_curves(cells, out, fields), out / "curves.png", note)
    return rows


def summary_line(outcomes: list[CellOutcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items()) or "no cells"


def eprint(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)
