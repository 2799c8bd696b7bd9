"""Tables and plots of a grid, from its cells' results files: mean ± std beside the paper's numbers.

Per (algorithm, dataset, N): the mean ± std over the finished seeds of the test accuracy at the
best validation step (docs/reference.md §5), the paper's value (§6) and the difference. Plain
Python (matplotlib for the plot), no JAX.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any

from pfedhn_jax.config import Config
from pfedhn_jax.data.registry import SPECS, spec
from pfedhn_jax.grid import Cell, CellOutcome, cell_config, is_finished
from pfedhn_jax.paper import ALGO_NAMES, PAPER, Published
from pfedhn_jax.results import Line, Panel, plot_panels, read_json, write_text


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
    lr: float | None = None       # the --lr chosen on validation, when the row swept several
    lr_val: dict = dataclasses.field(default_factory=dict)   # each swept lr's mean best-val accuracy (%)

    @property
    def diff(self) -> float:
        return self.mean - self.paper.mean if self.paper is not None and self.seeds else math.nan


def _finished_results(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any]):
    """(cell, results) for every finished cell, in order."""
    for c in cells:
        cfg = cell_config(c, out, **fields)
        res = read_json(Path(cfg.out) / "results.json")
        if is_finished(res, cfg):
            yield c, res


def collect(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any],
            outcomes: list[CellOutcome] | None = None) -> list[Row]:
    """One row per (algorithm, dataset, N) of `cells`, from the finished cells' results.json."""
    why = {o.cell: o for o in outcomes or []}
    finished = {c: res for c, res in _finished_results(cells, out, fields)
                if (res.get("best") or {}).get("test_acc") is not None}
    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    rows = []
    for (algo, dataset, n), members in groups.items():
        chosen, lr_val = None, {}
        if any(c.lr is not None for c in members):  # a sweep: keep the lr with the best mean validation accuracy
            for lr in dict.fromkeys(c.lr for c in members):
                vals = [100.0 * float(finished[c]["best"]["best_val_acc"]) for c in members if c.lr == lr and c in finished]
                if vals:
                    lr_val[lr] = sum(vals) / len(vals)
            chosen = max(lr_val, key=lr_val.get) if lr_val else None
            members = [c for c in members if c.lr == (chosen if chosen is not None else members[0].lr)]
        done = [c for c in members if c in finished]
        accs = [100.0 * float(finished[c]["best"]["test_acc"]) for c in done]
        shas = {(finished[c].get("data") or {}).get("sha256") for c in done}
        status = ""
        if not done:
            reasons = {why[c].status for c in members if c in why}
            status = ("no data" if reasons == {"skipped-data"} else
                      "different config in folder" if "conflict" in reasons else
                      "failed" if "failed" in reasons else "not run")
        label = spec(dataset).display_name(next(iter(shas)) if len(shas) == 1 else None)
        cfg0 = cell_config(members[0], out, **fields)
        m, s = mean_std(accs)
        rows.append(Row(algo, dataset, n, label, [c.seed for c in done], len(members), accs, m, s,
                        PAPER.get((algo, dataset, n)), f"{cfg0.num_steps} x {cfg0.inner_steps}" + (f" x {cfg0.clients_per_step} clients" if cfg0.clients_per_step > 1 else ""),
                        status, chosen, lr_val))
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


def _ours(r: Row) -> str:
    """'mean ± std' over seeds, 'mean (n=1)' for one seed (a std of one value says nothing)."""
    if not r.seeds:
        return r.status or "—"
    return f"{r.mean:.2f} (n=1)" if len(r.seeds) == 1 else f"{r.mean:.2f} ± {r.std:.2f}"


def render_markdown(rows: list[Row], note: str) -> str:
    lines = ["# pFedHN reproduction: test accuracy (%) at the best validation step", "",
             note, "",
             "Ours: mean ± std (population, ddof=0) over the finished seeds, or (n=1) for one seed; pooled "
             "accuracy over all clients (docs/reference.md §5). Paper: Table 1 (docs/reference.md §6; `~` = "
             "recalled, not yet checked against the paper). diff = ours − paper.", "",
             "| algorithm | dataset | N | seeds | ours | paper | diff | schedule | --lr | per seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"s{s}: {a:.2f}" for s, a in zip(r.seeds, r.test_accs))
        diff = "—" if math.isnan(r.diff) else f"{r.diff:+.2f}"
        lr = ("default" if not r.lr_val else f"{r.lr:g} (val {r.lr_val[r.lr]:.2f}; swept "
              + ", ".join(f"{k:g}: {v:.2f}" for k, v in r.lr_val.items()) + ")")
        lines.append(f"| {ALGO_NAMES.get(r.algo, r.algo)} | {r.label} | {r.num_clients} | {len(r.seeds)}/{r.requested} "
                     f"| {_ours(r)} | {r.paper if r.paper else '—'} | {diff} | {r.schedule} | {lr} | {per_seed} |")
    if any(r.lr_val for r in rows):
        lines += ["", "--lr: a swept row reports the rate with the best mean validation accuracy (val %, best "
                      "validation step, mean over the seeds); its test accuracy is never looked at to choose."]
    if any("JPEG" in r.label for r in rows):
        lines += ["", "CIFAR-10 (JPEG copy): the offline file is CIFAR-10 decoded from JPEG (quality 75); "
                      "accuracies on it are typically a little lower than on real CIFAR-10."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("algo", "dataset", "dataset_label", "num_clients", "n_seeds", "seeds", "requested_seeds",
              "mean", "std", "paper_mean", "paper_std", "paper_checked", "diff", "schedule", "schedule_kind",
              "test_accs", "status", "lr")


def schedule_kind(note: str) -> str:
    return "quick" if "quick schedule" in note else "non-reference" if "non-reference" in note else "reference"


def render_csv(rows: list[Row], note: str) -> str:
    """One line per row; empty cells where there is no number. Accuracies in %."""
    num = lambda x: "" if x is None or math.isnan(x) else f"{x:.4f}"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in rows:
        p = r.paper
        w.writerow([r.algo, r.dataset, r.label, r.num_clients, len(r.seeds), " ".join(map(str, r.seeds)),
                    r.requested, num(r.mean), num(r.std), p.mean if p else "",
                    "" if p is None or p.std is None else p.std, p.checked if p else "",
                    num(r.diff), r.schedule, schedule_kind(note), " ".join(f"{a:.4f}" for a in r.test_accs),
                    r.status, "" if r.lr is None else f"{r.lr:g}"])
    return buf.getvalue()


def mean_curves(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any]) -> dict:
    """{(algo, dataset, N): (steps, mean test accuracy %, seeds)} over the finished seeds, on the
    evaluation steps all of them share."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for c, res in _finished_results(cells, out, fields):
        if res.get("curves"):
            groups.setdefault(c.group, []).append({r["step"]: r["test_acc"] for r in res["curves"]})
    curves = {}
    for g, runs in groups.items():
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        curves[g] = (steps, [100.0 * sum(r[s] for r in runs) / len(runs) for s in steps], len(runs))
    return curves


def plot_grid(curves: dict, path: Path, note: str) -> bool:
    """Test-accuracy curves, one panel per (dataset, N), one line per algorithm, the paper dotted."""
    order = list(SPECS)
    keys = sorted({(d, n) for _, d, n in curves}, key=lambda p: (order.index(p[0]) if p[0] in order else 99, p[1]))
    panels = []
    for d, n in keys:
        lines, hlines = [], []
        for (algo, d2, n2), (steps, acc, k) in sorted(curves.items()):
            if (d2, n2) == (d, n):
                color = f"C{len(lines)}"
                lines.append(Line(f"{ALGO_NAMES.get(algo, algo)} ({k} seed{'s' * (k != 1)})", steps, acc,
                                  {"color": color}))
                p = PAPER.get((algo, d, n))
                if p is not None:
                    hlines.append((p.mean, f"paper {ALGO_NAMES.get(algo, algo)}", {"color": color}))
        panels.append(Panel(f"{spec(d).label}, N={n}", "outer step", "test acc (%), mean over seeds",
                            lines, hlines))
    return plot_panels(panels, path, note.replace("**", ""))


def write_report(cells: list[Cell], out: str | os.PathLike, fields: dict[str, Any], quick: bool = False,
                 outcomes: list[CellOutcome] | None = None) -> tuple[list[Row], list[str]]:
    """table.md, table.csv and (when any cell has finished) curves.png in `out`, from the cells'
    results files. Returns the rows and the names of the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(cells, out, fields, outcomes)
    note = schedule_note(fields, quick)
    write_text(out / "table.md", render_markdown(rows, note))
    write_text(out / "table.csv", render_csv(rows, note))
    written = ["table.md", "table.csv"]
    chosen = {(r.algo, r.dataset, r.num_clients): r.lr for r in rows}
    shown = [c for c in cells if c.lr is None or c.lr == chosen.get(c.group)]  # a sweep's chosen lr only
    if plot_grid(mean_curves(shown, out, fields), out / "curves.png", note):
        written.append("curves.png")
    return rows, written
