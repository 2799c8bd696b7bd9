"""The outer loop: a `Config` in, trained state and `results.json` out.

The host only decides cadence (evaluate, log, write results); each outer step is one jitted call
and nothing per local step crosses between host and device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import evaluate
from pfedhn_jax.algorithm import PFedHN, StepMetrics, TrainState
from pfedhn_jax.checkpoint import Checkpointer, config_diff
from pfedhn_jax.config import Config
from pfedhn_jax.data import DATASETS, DatasetInfo, FederatedData, SplitSummary, load_raw, make_split, to_device
from pfedhn_jax.data.omniglot import load_omniglot, make_omniglot_split, omniglot_info
from pfedhn_jax.errors import DataError, DivergenceError, Interrupted, UserError
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.targets import ConvNet, cifar_cnn, omniglot_cnn


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto': im2col on CPU (matmuls stay fast inside XLA:CPU loops), lax.conv elsewhere."""
    if conv_impl != "auto":
        return conv_impl
    return "im2col" if jax.default_backend() == "cpu" else "xla"


def compiler_options() -> dict[str, str]:
    """XLA options for our jitted programs, chosen per backend by measurement.

    On CPU, XLA's YNNPACK fusions slow the small-batch training step down (benchmarks/RESULTS.md:
    im2col step 51 local steps/s with them off on a 2-core EPYC); they are switched off unless
    the user set XLA_FLAGS themselves.
    """
    if jax.default_backend() != "cpu" or "ynn_fusion" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": ""}


def dataset_info(cfg: Config) -> DatasetInfo:
    return omniglot_info(cfg.image_size) if cfg.dataset == "omniglot" else DATASETS[cfg.dataset]


def build_target(cfg: Config) -> ConvNet:
    """The paper's target for the dataset: the LeNet-like CNN for CIFAR, the 4-conv net for Omniglot."""
    speed = dict(conv_impl=resolve_conv_impl(cfg.conv_impl), compute_dtype=cfg.compute_dtype)
    if cfg.dataset == "omniglot":
        return omniglot_cnn(cfg.n_classes, cfg.image_size, **speed)
    return cifar_cnn(cfg.n_classes, cfg.n_kernels, **speed)


def build_algorithm(cfg: Config) -> PFedHN:
    """The algorithm record for a config: target, hypernetwork and optimiser settings."""
    target = build_target(cfg)
    exclude = (target.head,) if cfg.algo == "pfedhn-pc" else ()
    hnet = HyperNetwork(target, cfg.num_clients, cfg.embed_dim, cfg.hyper_hid, cfg.n_hidden, exclude)
    return PFedHN(hnet, inner_steps=cfg.inner_steps, batch_size=cfg.batch_size, inner_lr=cfg.inner_lr,
                  inner_wd=cfg.inner_wd, optim=cfg.optim, lr=cfg.hyper_lr, embed_lr=cfg.embed_lr, wd=cfg.wd,
                  clients_per_step=cfg.clients_per_step, strategy=cfg.strategy, unroll=cfg.unroll)


def load_data(cfg: Config) -> tuple[FederatedData, SplitSummary, dict]:
    """Raw arrays -> federated split -> device arrays, plus a JSON-able description of the data."""
    info = dataset_info(cfg)
    if cfg.dataset == "omniglot":
        omni = load_omniglot(cfg.data_dir, cfg.image_size, cfg.data_source, cfg.download)
        raw = omni.raw
        split = make_omniglot_split(omni, cfg.num_clients, cfg.seed, cfg.n_train, cfg.n_val)
    else:
        raw = load_raw(cfg.dataset, cfg.data_dir, cfg.data_source, cfg.download)
        split = make_split(raw, info, cfg.num_clients, cfg.client_classes, cfg.seed, cfg.val_size,
                           cfg.split, cfg.alpha)
    counts = {k: [len(ix) for ix in getattr(split, k)] for k in ("train", "val", "test")}
    desc = {"dataset": cfg.dataset, "source": raw.source, "sha256": raw.sha256,
            "note": "CIFAR-10 (JPEG copy)" if raw.sha256 and cfg.dataset == "cifar10" else "",
            "client_counts": counts}
    if split.assignment is not None:
        desc["client_classes"] = split.assignment.classes.tolist()
        desc["unassigned_train_fraction"] = 1 - sum(counts["train"]) / (len(raw.y_train) - cfg.val_size)
    return to_device(raw, info, split, cfg.batch_size), split, desc


RUN_FILES = ("results.json", "curves.png", "checkpoints")  # what a run writes into --out
# Config keys that may differ between a checkpoint and the resuming run: they change neither the
# numbers nor the schedule (speed, paths, how the run was started).
RESUME_IGNORES = ("data_dir", "out", "overwrite", "resume", "strategy", "conv_impl", "unroll",
                  "checkpoint_every", "keep_checkpoints")


def check_output_dir(cfg: Config) -> Path | None:
    """Decide what to do with --out before anything expensive: start, resume, or refuse.

    A folder holding a checkpoint resumes (if its config matches); any other non-empty folder is
    refused unless --overwrite, which deletes only what a run writes (RUN_FILES).
    """
    if cfg.out is None:
        if cfg.resume:
            raise UserError("--resume: needs --out, the folder of the run to continue")
        return None
    p = Path(cfg.out)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out: {p} exists and is not a folder; choose another path")
    has_ckpt = (p / "checkpoints").is_dir() and Checkpointer(p / "checkpoints").latest_step() is not None
    if cfg.overwrite:
        if cfg.resume:
            raise UserError("--resume and --overwrite contradict each other; pass one of them")
        for name in RUN_FILES:
            f = p / name
            shutil.rmtree(f) if f.is_dir() else f.unlink(missing_ok=True)
        return p
    if has_ckpt:
        return p
    if cfg.resume:
        raise UserError(f"--resume: {p} holds no checkpoint to resume; drop --resume to start a new run")
    if p.is_dir() and any(p.iterdir()):
        raise UserError(f"--out: {p} already holds results; choose a new folder, or pass --overwrite")
    return p


def write_json(path: Path, obj: Any) -> None:
    """Atomic write: a reader never sees a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def environment() -> dict:
    import optax
    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__, "optax": optax.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()}


class Trainer:
    """Compiled step and evaluation for one config, plus the host-side loop state."""

    def __init__(self, cfg: Config, data: FederatedData):
        self.cfg, self.data = cfg, data
        self.alg = build_algorithm(cfg)
        n = cfg.num_clients
        opts = compiler_options()
        self._step = jax.jit(self.alg.step, compiler_options=opts)
        self._eval = jax.jit(lambda state, data: tuple(
            evaluate.evaluate_clients(self.alg.target.apply, self.alg.personal_params(state, jnp.arange(n)),
                                      data, split) for split in (data.val, data.test)), compiler_options=opts)

    def init(self) -> TrainState:
        """The initial state, built by one jitted program (eagerly, each op would compile on its own)."""
        return jax.jit(self.alg.init)(jax.random.key(self.cfg.seed))

    def compile(self, state: TrainState) -> float:
        """Compile the step and the evaluation ahead of time; returns seconds spent."""
        t0 = time.perf_counter()
        self._step = self._step.lower(self.data, state).compile()
        self._eval = self._eval.lower(state, self.data).compile()
        return time.perf_counter() - t0

    def step(self, state: TrainState) -> tuple[TrainState, StepMetrics]:
        return self._step(self.data, state)

    def evaluate(self, state: TrainState) -> tuple[dict, dict]:
        val, test = self._eval(state, self.data)
        return evaluate.summarize(val), evaluate.summarize(test)


def _check_finite(metrics: list[StepMetrics], first_step: int) -> np.ndarray:
    """Host check of the buffered step metrics; returns their losses, raises on divergence."""
    if not metrics:
        return np.zeros((0, 0), np.float32)
    loss = np.stack([np.asarray(m.loss) for m in metrics])
    norm = np.stack([np.asarray(m.delta_norm) for m in metrics])
    bad = ~(np.isfinite(loss) & np.isfinite(norm))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        cid = int(np.asarray(metrics[i].client_ids)[j])
        raise DivergenceError(f"training diverged at outer step {first_step + i + 1} (client {cid}): "
                              f"loss={loss[i, j]}, |Δθ|={norm[i, j]}; lower --lr / --inner-lr")
    return loss


def is_eval_step(step: int, cfg: Config) -> bool:
    """After `step` completed outer steps: the reference evaluates after steps 1, 1+k, 1+2k, ... and the last."""
    return (step - 1) % cfg.eval_every == 0 or step == cfg.num_steps


class _Run:
    """Host-side state of one training run: results, best-validation tracker, buffered step metrics,
    timers; saved with every checkpoint so a resumed run continues exactly where it stopped."""

    def __init__(self, cfg: Config, results: dict, pending: list[StepMetrics] | None = None,
                 train_s: float = 0.0, eval_s: float = 0.0, wall_s: float = 0.0):
        self.cfg, self.results, self.pending = cfg, results, pending or []
        best = results.get("best")
        self.tracker = evaluate.BestTracker(**best) if best else evaluate.BestTracker()
        self.train_s, self.eval_s = train_s, eval_s
        self.t_start = time.perf_counter() - wall_s

    def wall_s(self) -> float:
        return time.perf_counter() - self.t_start

    def host(self) -> dict:
        """The JSON record saved beside the arrays."""
        m = self.pending
        return {"config": self.cfg.to_dict(), "results": self.results, "train_s": self.train_s,
                "eval_s": self.eval_s, "wall_s": self.wall_s(),
                "pending": {f: [np.asarray(getattr(x, f)).tolist() for x in m] for f in StepMetrics._fields}}

    @classmethod
    def from_host(cls, cfg: Config, host: dict) -> "_Run":
        p = host["pending"]
        pending = [StepMetrics(np.asarray(i, np.int32), np.asarray(l, np.float32), np.asarray(d, np.float32))
                   for i, l, d in zip(p["client_ids"], p["loss"], p["delta_norm"])]
        return cls(cfg, host["results"], pending, host["train_s"], host["eval_s"], host["wall_s"])


@contextlib.contextmanager
def _stop_requests():
    """Turn SIGINT / SIGTERM into a request to stop after the current step (main thread only).

    Yields a dict whose 'signal' is set to the signal's name once one arrives; a second SIGINT
    interrupts at once (KeyboardInterrupt).
    """
    request: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name
        print(f"\n{request['signal']} received: finishing the current step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _open_checkpoints(cfg: Config, out: Path | None, template: TrainState) -> tuple[Checkpointer | None, TrainState, _Run | None]:
    """The run's checkpointer, and the restored (state, host record) if --out holds a checkpoint."""
    if out is None:
        return None, template, None
    ckpt = Checkpointer(out / "checkpoints", keep=cfg.keep_checkpoints)
    if ckpt.latest_step() is None:
        return ckpt, template, None
    saved = ckpt.host_config()["config"]
    diff = config_diff(saved, cfg.to_dict(), ignore=RESUME_IGNORES)
    if diff:
        keys = ", ".join(f"--{k.replace('_', '-')} (checkpoint: {a}, now: {b})" for k, (a, b) in diff.items())
        raise UserError(f"--out: {out} holds a checkpoint of a different config: {keys}; rerun with the "
                        "checkpoint's values to resume, choose a new --out, or pass --overwrite to start over")
    state, host = ckpt.restore(template)
    return ckpt, state, _Run.from_host(cfg, host)


def _all_finite(tree) -> bool:
    return bool(jax.jit(lambda t: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(t)])))(tree))


def train(cfg: Config, progress: bool = True, stop_at: int | None = None) -> dict:
    """Run (or resume) a whole training job; returns the results dict, also written to
    `<out>/results.json`, with the final TrainState under "state".

    With --out, checkpoints go to `<out>/checkpoints` every `checkpoint_every` steps, at the end
    and on SIGINT / SIGTERM (then `Interrupted` is raised); a folder holding a checkpoint of the
    same config is resumed, and the resumed run's numbers equal an uninterrupted run's bit for bit.
    A non-finite loss or update raises DivergenceError and never reaches a checkpoint.
    `stop_at`: checkpoint and return after that outer step (status "paused"), to run a long
    schedule in chunks (e.g. under a job-time limit); rerunning continues it.
    """
    cfg.validate()
    out = check_output_dir(cfg)
    t0 = time.perf_counter()
    data, _, data_desc = load_data(cfg)
    trainer = Trainer(cfg, data)
    ckpt, state, run = _open_checkpoints(cfg, out, trainer.init())
    if run is not None and int(state.step) >= cfg.num_steps:
        ckpt.close()  # a finished run: nothing to do, nothing rewritten
        return {**run.results, "state": state}
    compile_s = trainer.compile(state)
    if run is None:
        results = {"config": cfg.to_dict(), "data": data_desc, "environment": environment(),
                   "algorithm": {"hyper_lr": cfg.hyper_lr, "embed_dim": trainer.alg.hnet.embedding_dim,
                                 "conv_impl": trainer.alg.target.conv_impl},
                   "compile_s": compile_s, "status": "running", "curves": [], "best": None}
        run = _Run(cfg, results, wall_s=time.perf_counter() - t0)
    else:
        if run.results["data"].get("sha256") != data_desc.get("sha256"):
            raise DataError(f"{data_desc['source']}: checksum {data_desc['sha256']} differs from the one the "
                            f"checkpoint was trained on ({run.results['data'].get('sha256')}); restore that "
                            "file, or start a new run in a new --out")
        run.results.setdefault("resumed", []).append({"at_step": int(state.step), "compile_s": compile_s})
    results = run.results
    step = int(state.step)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def save(status: str) -> None:
        results["status"] = status
        if out is not None:
            write_json(out / "results.json", results)

    def checkpoint() -> None:
        if ckpt is None or ckpt.latest_step() == step:
            return
        _check_finite(run.pending, step - len(run.pending))
        if not _all_finite(state.server.params):
            raise DivergenceError(f"training diverged by outer step {step}: non-finite hypernetwork "
                                  "parameters; lower --lr")
        ckpt.save(step, state, run.host())

    bar = _progress_bar(cfg.num_steps, progress, initial=step)
    try:
        with _stop_requests() as stop:
            t_seg = time.perf_counter()
            last = cfg.num_steps if stop_at is None else min(stop_at, cfg.num_steps)
            while step < last and stop["signal"] is None:
                state, metrics = trainer.step(state)
                run.pending.append(metrics)
                step += 1
                bar.update(1)
                if is_eval_step(step, cfg):
                    losses = _check_finite(run.pending, step - len(run.pending))
                    jax.block_until_ready(state)
                    run.train_s += time.perf_counter() - t_seg
                    _evaluate(trainer, state, step, losses, run, bar)
                    run.pending = []
                    save("running")
                    t_seg = time.perf_counter()
                if step == last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    jax.block_until_ready(state)
                    run.train_s += time.perf_counter() - t_seg
                    checkpoint()
                    t_seg = time.perf_counter()
            if stop["signal"] is not None and step < cfg.num_steps:
                checkpoint()
                save("interrupted")
                where = (f"checkpoint of step {step} saved in {ckpt.directory}; rerun the same command "
                         f"(or add --resume) to continue" if ckpt else "nothing saved: pass --out to make runs resumable")
                raise Interrupted(stop["signal"], f"interrupted by {stop['signal']} after outer step {step}; {where}")
    except DivergenceError as e:
        results["error"] = str(e)
        save("diverged")
        raise
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    if step < cfg.num_steps:
        save("paused")
        return {**results, "state": state}
    save("finished")
    if out is not None:
        plot_curves(results, out / "curves.png")
    return {**results, "state": state}


def _evaluate(trainer: Trainer, state: TrainState, step: int, losses: np.ndarray, run: _Run, bar) -> None:
    """Evaluate every client on val and test; append the curve point, update best and timing."""
    t_eval = time.perf_counter()
    val, test = trainer.evaluate(state)
    run.eval_s += time.perf_counter() - t_eval
    run.tracker.update(step, val, test)
    res, cfg = run.results, run.cfg
    res["curves"].append({"step": step, "train_loss": float(losses.mean()), "val_acc": val["acc"],
                          "val_loss": val["loss"], "test_acc": test["acc"], "test_loss": test["loss"],
                          "wall_s": run.wall_s()})
    bar.set_postfix(val=f"{val['acc']:.4f}", test=f"{test['acc']:.4f}", best=f"{run.tracker.test_acc:.4f}")
    res["best"] = dataclasses.asdict(run.tracker)
    res["final"] = {"step": step, "val": val, "test": test}
    local = step * cfg.clients_per_step * cfg.inner_steps
    res["timing"] = {"train_s": run.train_s, "eval_s": run.eval_s, "steps": step,
                     "outer_steps_per_s": step / run.train_s if run.train_s else math.nan,
                     "local_steps_per_s": local / run.train_s if run.train_s else math.nan,
                     "wall_s": run.wall_s()}


def _progress_bar(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=1.0)


def plot_curves(results: dict, path: Path) -> None:
    """Validation / test accuracy and loss against outer steps (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = results["curves"]
    if not c:
        return
    steps = [r["step"] for r in c]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k in ("val_acc", "test_acc"):
        a1.plot(steps, [r[k] for r in c], label=k)
    for k in ("train_loss", "val_loss", "test_loss"):
        a2.plot(steps, [r[k] for r in c], label=k)
    best = results.get("best") or {}
    if best.get("best_step", -1) > 0:
        a1.axvline(best["best_step"], color="gray", ls=":", label=f"best val (test {best['test_acc']:.4f})")
    a1.set(xlabel="outer step", ylabel="pooled accuracy")
    a2.set(xlabel="outer step", ylabel="loss")
    a1.legend(); a2.legend()
    note = results["data"].get("note")
    fig.suptitle(f"{results['config']['algo']} on {results['config']['dataset']}{' — ' + note if note else ''}, "
                 f"N={results['config']['num_clients']}, seed {results['config']['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
