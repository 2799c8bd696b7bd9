"""Host-side records of runs: curves, best-validation bookkeeping, timing, communication, and the
summary of a group of runs (mean ± std over seeds). Saved with every checkpoint, so a resumed run
continues its records exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import evaluate
from pfedhn_jax import results as rio
from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.config import Config
from pfedhn_jax.distributed import is_main
from pfedhn_jax.errors import DivergenceError


def communication(alg, cfg: Config) -> dict:
    """The algorithm's bytes each way per round and over cfg's schedule (`alg.communication`);
    heterogeneous targets' per-architecture entries are labelled with their width."""
    c = alg.communication(cfg.num_steps)
    for entry, w in zip(c.get("per_arch", ()), cfg.widths):
        entry["width"] = w
    return c


def check_finite(metrics: list[StepMetrics], first_step: int, labels: list[str]) -> np.ndarray:
    """Host check of buffered step metrics (leaves (R, C)); returns the losses (steps, R, C) of the
    real runs (labels: one per real run, e.g. "seed 42"), raises DivergenceError naming the step,
    run and client."""
    r = len(labels)
    if not metrics:
        return np.zeros((0, r, 0), np.float32)
    loss = np.stack([np.asarray(m.loss)[:r] for m in metrics])
    norm = np.stack([np.asarray(m.delta_norm)[:r] for m in metrics])
    bad = ~(np.isfinite(loss) & np.isfinite(norm))
    if bad.any():
        i, run, j = np.argwhere(bad)[0]
        cid = int(np.asarray(metrics[i].client_ids)[run, j])
        who = f"{labels[run]}, client {cid}" if r > 1 else f"client {cid}"
        raise DivergenceError(f"training diverged at outer step {first_step + i + 1} ({who}): "
                              f"loss={loss[i, run, j]}, |Δθ|={norm[i, run, j]}; lower --lr / --inner-lr")
    return loss


class RunRecord:
    """One run's results dict (the schema of results.json) plus its best-validation tracker and timers."""

    def __init__(self, cfg: Config, results: dict, train_s: float = 0.0, eval_s: float = 0.0,
                 wall_s: float = 0.0):
        self.cfg, self.results = cfg, results
        best = results.get("best")
        self.tracker = evaluate.BestTracker(**best) if best else evaluate.BestTracker()
        self.train_s, self.eval_s = train_s, eval_s
        self.t_start = time.perf_counter() - wall_s

    def wall_s(self) -> float:
        return time.perf_counter() - self.t_start

    def host(self) -> dict:
        return {"results": self.results, "train_s": self.train_s, "eval_s": self.eval_s, "wall_s": self.wall_s()}

    @classmethod
    def from_host(cls, cfg: Config, host: dict) -> "RunRecord":
        return cls(cfg, host["results"], host["train_s"], host["eval_s"], host["wall_s"])

    def add_evaluation(self, step: int, train_loss: float, val: dict, test: dict, eval_s: float) -> dict:
        """Append the curve point, update best / final / timing; returns the point."""
        self.eval_s += eval_s
        improved = self.tracker.update(step, val, test)
        point = {"step": step, "train_loss": train_loss, "val_acc": val["acc"], "val_loss": val["loss"],
                 "test_acc": test["acc"], "test_loss": test["loss"], "wall_s": self.wall_s()}
        res, cfg = self.results, self.cfg
        if "per_arch" in test:  # heterogeneous targets: pooled within each width's clients
            point["val_acc_per_arch"] = [v["acc"] for v in val["per_arch"]]
            point["test_acc_per_arch"] = [t["acc"] for t in test["per_arch"]]
            if improved:
                res["best_per_arch"] = [{"width": w, "val_acc": v["acc"], "test_acc": t["acc"], "test_min": t["min"],
                                         "test_max": t["max"], "test_std": t["std"]}
                                        for w, v, t in zip(cfg.widths, val["per_arch"], test["per_arch"])]
        res["curves"].append(point)
        res["best"] = dataclasses.asdict(self.tracker)
        res["final"] = {"step": step, "val": val, "test": test}
        local = step * cfg.clients_per_step * cfg.inner_steps
        res["timing"] = {"train_s": self.train_s, "eval_s": self.eval_s, "steps": step,
                         "outer_steps_per_s": step / self.train_s if self.train_s else math.nan,
                         "local_steps_per_s": local / self.train_s if self.train_s else math.nan,
                         "wall_s": self.wall_s()}
        return point


def _mean_std(accs: list) -> tuple[float, float]:
    done = [a for a in accs if isinstance(a, float) and not math.isnan(a)]
    return (float(np.mean(done)), float(np.std(done))) if done else (math.nan, math.nan)


def summarize_group(records: list[RunRecord], status: str, sweep: bool = False) -> dict:
    """summary.json of a group: each run's best-val test accuracy and the mean ± std (ddof = 0) over
    seeds. A sweep (`--lrs`) has one row per learning rate under "rows", each with its best
    validation accuracy too, and "best_lr": the row with the highest mean VALIDATION accuracy (tuning
    never looks at test); without a sweep, the seeds' fields are top-level."""
    first = records[0].results
    best = lambda r, k: r.results.get("best", {}) and r.results["best"][k]
    rows, vals = {}, {}
    for rec in records:
        rows.setdefault(rec.cfg.effective_lr, {})[str(rec.cfg.seed)] = best(rec, "test_acc")
        vals.setdefault(rec.cfg.effective_lr, {})[str(rec.cfg.seed)] = best(rec, "best_val_acc")
    rows = [{"lr": lr, "seeds": [int(s) for s in by_seed], "test_acc_at_best_val": by_seed,
             **dict(zip(("mean", "std"), _mean_std(list(by_seed.values())))),
             "val_mean": _mean_std(list(vals[lr].values()))[0]} for lr, by_seed in rows.items()]
    out = {"status": status, "config": {k: v for k, v in first["config"].items() if k not in ("seed", "out", "lr")},
           "data": {k: first["data"].get(k) for k in ("dataset", "label", "source", "sha256")},
           "steps": first.get("final", {}).get("step", 0),
           "timing": {"wall_s": records[0].wall_s(), "train_s": records[0].train_s},
           "communication": first.get("communication")}  # per run: every run of a group has the same
    if not sweep:
        out["config"]["lr"] = first["config"]["lr"]
        return {**out, **{k: v for k, v in rows[0].items() if k != "lr"}}
    ranked = [r for r in rows if not math.isnan(r["val_mean"])]
    return {**out, "sweep": "lr", "rows": rows,
            "best_lr": max(ranked, key=lambda r: r["val_mean"])["lr"] if ranked else None}


def render_group(summary: dict) -> str:
    """summary.md: one line per seed (or per learning rate of a sweep) and the mean ± std."""
    cfg = summary["config"]
    rows = summary.get("rows")
    runs = sum(len(r["seeds"]) for r in rows) if rows else len(summary["seeds"])
    lines = [f"# {cfg['algo']} on {summary['data'].get('label') or cfg['dataset']}, N={cfg['num_clients']}: "
             f"{runs} runs in one program", "",
             f"Status: {summary['status']}, after {summary['steps']} of {cfg['num_steps']} outer steps "
             f"(wall {summary['timing']['wall_s']:.0f} s).", ""]
    comm = summary.get("communication")
    if comm:
        kept = (f"; the hypernetwork ({comm['hypernet_bytes']:,} bytes) never leaves the server"
                if "hypernet_bytes" in comm else "")
        lines += [f"Communication per run: {comm['bytes_down_per_round']:,.0f} bytes down and "
                  f"{comm['bytes_up_per_round']:,.0f} up per round, {comm['bytes_total']:,.0f} in all{kept}.", ""]
    fmt = lambda a: f"{a:.4f}" if isinstance(a, float) and not math.isnan(a) else "—"
    if rows:
        seeds = rows[0]["seeds"]
        lines += [f"| --lr | best val acc, mean | {' | '.join(f'test, seed {s}' for s in seeds)} | test mean ± std (ddof=0) |",
                  "|---" * (len(seeds) + 3) + "|"]
        lines += [f"| {r['lr']:g} | {fmt(r['val_mean'])} | {' | '.join(fmt(r['test_acc_at_best_val'][str(s)]) for s in seeds)} | "
                  f"{fmt(r['mean'])} ± {fmt(r['std'])} |" for r in rows]
        best = summary["best_lr"]
        lines += ["", "Test accuracy at the best validation step; the rate is chosen on validation: "
                  + (f"lr {best:g}." if best is not None else "no run has been evaluated yet.")]
        return "\n".join(lines) + "\n"
    lines += ["| seed | test acc at best val |", "|---|---|"]
    lines += [f"| {s} | {fmt(a)} |" for s, a in summary["test_acc_at_best_val"].items()]
    lines += ["", f"Mean ± std (population, ddof=0) over seeds: {summary['mean']:.4f} ± {summary['std']:.4f}"]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Group:
    """The host side of a group of runs: configs, output folders, records, buffered step metrics."""

    cfg: Config                      # the group's config (its seed and lr are the first run's)
    seeds: list[int]                 # each real run's seed; the program may carry padding runs after them
    out: Path | None                 # --out: checkpoints (and summary for several runs)
    run_dirs: list[Path | None]      # where each run's results.json goes
    lrs: list[float] | None = None   # each run's hypernetwork lr in a sweep (--lrs); None: cfg's for all
    records: list[RunRecord] = dataclasses.field(default_factory=list)
    pending: list[StepMetrics] = dataclasses.field(default_factory=list)
    step: int = 0                    # outer steps completed (kept on the host: the state may span hosts)

    @property
    def is_group(self) -> bool:
        return len(self.run_dirs) > 1 or (self.out is not None and self.run_dirs[0] != self.out)

    def run_config(self, r: int) -> Config:
        d = self.run_dirs[r]
        lr = self.cfg.lr if self.lrs is None else self.lrs[r]
        return dataclasses.replace(self.cfg, seed=self.seeds[r], lr=lr, out=None if d is None else str(d))

    @property
    def labels(self) -> list[str]:
        """Each real run's name in messages: 'seed 42', or 'lr 0.01, seed 42' in a sweep."""
        if self.lrs is None:
            return [f"seed {s}" for s in self.seeds]
        return [f"lr {lr:g}, seed {s}" for s, lr in zip(self.seeds, self.lrs)]

    def host(self) -> dict:
        """The JSON record saved beside the arrays of a checkpoint."""
        return {"config": self.cfg.to_dict(), "seeds": self.seeds, "lrs": self.lrs,
                "runs": [r.host() for r in self.records],
                "pending": {f: [np.asarray(getattr(x, f)).tolist() for x in self.pending]
                            for f in StepMetrics._fields}}

    def restore_host(self, host: dict) -> None:
        self.records = [RunRecord.from_host(self.run_config(r), h) for r, h in enumerate(host["runs"])]
        p = host["pending"]
        self.pending = [StepMetrics(np.asarray(i, np.int32), np.asarray(l, np.float32), np.asarray(d, np.float32))
                        for i, l, d in zip(p["client_ids"], p["loss"], p["delta_norm"])]

    def write(self, status: str) -> None:
        """Set every run's status, and write results.json of every run (and the group summary);
        only process 0 writes, but every process's results carry the status it returns."""
        for rec in self.records:
            rec.results["status"] = status
        if not is_main():
            return
        for rec, d in zip(self.records, self.run_dirs):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
                rio.write_json(d / "results.json", rec.results)
        if self.is_group and self.out is not None:
            summary = summarize_group(self.records, status, sweep=self.lrs is not None)
            rio.write_json(self.out / "summary.json", summary)
            rio.write_text(self.out / "summary.md", render_group(summary))
