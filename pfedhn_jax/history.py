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
from pfedhn_jax.algorithm import StepMetrics
from pfedhn_jax.config import Config
from pfedhn_jax.distributed import is_main
from pfedhn_jax.errors import DivergenceError


def communication(alg, cfg: Config) -> dict:
    """Bytes each way per outer step and over the schedule: θ down and θ̃ − θ up, per sampled client.

    Only the generated part travels (pFedHN-PC's private head never leaves its client); the
    hypernetwork never leaves the server. Bytes = parameters × dtype size.
    """
    shapes = jax.eval_shape(alg.hnet.init, jax.random.key(0))
    theta = jax.eval_shape(alg.hnet.apply, shapes, jnp.int32(0))
    per_client = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(theta))
    per_round = per_client * cfg.clients_per_step
    return {"theta_params": sum(x.size for x in jax.tree.leaves(theta)), "bytes_down_per_client": per_client,
            "bytes_up_per_client": per_client, "bytes_down_per_round": per_round, "bytes_up_per_round": per_round,
            "bytes_total": 2 * per_round * cfg.num_steps,
            "hypernet_params": sum(x.size for x in jax.tree.leaves(shapes)),
            "hypernet_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))}


def check_finite(metrics: list[StepMetrics], first_step: int, seeds: list[int]) -> np.ndarray:
    """Host check of buffered step metrics (leaves (R, C)); returns the losses (steps, R, C) of the
    real runs, raises DivergenceError naming the step, seed and client."""
    if not metrics:
        return np.zeros((0, len(seeds), 0), np.float32)
    r = len(seeds)
    loss = np.stack([np.asarray(m.loss)[:r] for m in metrics])
    norm = np.stack([np.asarray(m.delta_norm)[:r] for m in metrics])
    bad = ~(np.isfinite(loss) & np.isfinite(norm))
    if bad.any():
        i, run, j = np.argwhere(bad)[0]
        cid = int(np.asarray(metrics[i].client_ids)[run, j])
        who = f"seed {seeds[run]}, client {cid}" if len(seeds) > 1 else f"client {cid}"
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
        self.tracker.update(step, val, test)
        point = {"step": step, "train_loss": train_loss, "val_acc": val["acc"], "val_loss": val["loss"],
                 "test_acc": test["acc"], "test_loss": test["loss"], "wall_s": self.wall_s()}
        res, cfg = self.results, self.cfg
        res["curves"].append(point)
        res["best"] = dataclasses.asdict(self.tracker)
        res["final"] = {"step": step, "val": val, "test": test}
        local = step * cfg.clients_per_step * cfg.inner_steps
        res["timing"] = {"train_s": self.train_s, "eval_s": self.eval_s, "steps": step,
                         "outer_steps_per_s": step / self.train_s if self.train_s else math.nan,
                         "local_steps_per_s": local / self.train_s if self.train_s else math.nan,
                         "wall_s": self.wall_s()}
        return point


def summarize_group(seeds: list[int], records: list[RunRecord], status: str) -> dict:
    """summary.json of a group: each seed's best-val test accuracy and their mean ± std (ddof = 0)."""
    accs = [r.results.get("best", {}) and r.results["best"]["test_acc"] for r in records]
    done = [a for a in accs if isinstance(a, float) and not math.isnan(a)]
    first = records[0].results
    return {"status": status, "seeds": seeds, "config": {k: v for k, v in first["config"].items()
                                                          if k not in ("seed", "out")},
            "data": {k: first["data"].get(k) for k in ("dataset", "label", "source", "sha256")},
            "test_acc_at_best_val": dict(zip(map(str, seeds), accs)),
            "mean": float(np.mean(done)) if done else math.nan,
            "std": float(np.std(done)) if done else math.nan,
            "steps": first.get("final", {}).get("step", 0),
            "timing": {"wall_s": records[0].wall_s(), "train_s": records[0].train_s}}


def render_group(summary: dict) -> str:
    """summary.md: one line per seed and the mean ± std."""
    cfg = summary["config"]
    lines = [f"# {cfg['algo']} on {summary['data'].get('label') or cfg['dataset']}, N={cfg['num_clients']}: "
             f"{len(summary['seeds'])} seeds in one program", "",
             f"Status: {summary['status']}, after {summary['steps']} of {cfg['num_steps']} outer steps "
             f"(wall {summary['timing']['wall_s']:.0f} s).", "",
             "| seed | test acc at best val |", "|---|---|"]
    lines += [f"| {s} | {a:.4f} |" if isinstance(a, float) else f"| {s} | — |"
              for s, a in summary["test_acc_at_best_val"].items()]
    lines += ["", f"Mean ± std (population, ddof=0) over seeds: {summary['mean']:.4f} ± {summary['std']:.4f}"]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Group:
    """The host side of a group of runs: configs, output folders, records, buffered step metrics."""

    cfg: Config                      # the group's config (its seed is the first run's)
    seeds: list[int]                 # the real runs; the program may carry padding runs after them
    out: Path | None                 # --out: checkpoints (and summary for several seeds)
    run_dirs: list[Path | None]      # where each run's results.json goes
    records: list[RunRecord] = dataclasses.field(default_factory=list)
    pending: list[StepMetrics] = dataclasses.field(default_factory=list)
    step: int = 0                    # outer steps completed (kept on the host: the state may span hosts)

    @property
    def is_group(self) -> bool:
        return len(self.run_dirs) > 1 or (self.out is not None and self.run_dirs[0] != self.out)

    def run_config(self, r: int) -> Config:
        d = self.run_dirs[r]
        return dataclasses.replace(self.cfg, seed=self.seeds[r], out=None if d is None else str(d))

    def host(self) -> dict:
        """The JSON record saved beside the arrays of a checkpoint."""
        return {"config": self.cfg.to_dict(), "seeds": self.seeds, "runs": [r.host() for r in self.records],
                "pending": {f: [np.asarray(getattr(x, f)).tolist() for x in self.pending]
                            for f in StepMetrics._fields}}

    def restore_host(self, host: dict) -> None:
        self.records = [RunRecord.from_host(self.run_config(r), h) for r, h in enumerate(host["runs"])]
        p = host["pending"]
        self.pending = [StepMetrics(np.asarray(i, np.int32), np.asarray(l, np.float32), np.asarray(d, np.float32))
                        for i, l, d in zip(p["client_ids"], p["loss"], p["delta_norm"])]

    def write(self, status: str) -> None:
        """results.json of every run (and the group summary); only process 0 writes."""
        if not is_main():
            return
        for rec, d in zip(self.records, self.run_dirs):
            rec.results["status"] = status
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
                rio.write_json(d / "results.json", rec.results)
        if self.is_group and self.out is not None:
            summary = summarize_group(self.seeds, self.records, status)
            rio.write_json(self.out / "summary.json", summary)
            rio.write_text(self.out / "summary.md", render_group(summary))
