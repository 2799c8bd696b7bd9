"""The outer loop: a `Config` in, trained state and `results.json` out.

The host only decides cadence (evaluate, log, write results); each outer step is one jitted call
and nothing per local step crosses between host and device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import evaluate
from pfedhn_jax.algorithm import PFedHN, StepMetrics, TrainState
from pfedhn_jax.config import Config
from pfedhn_jax.data import DATASETS, DatasetInfo, FederatedData, SplitSummary, load_raw, make_split, to_device
from pfedhn_jax.data.omniglot import load_omniglot, make_omniglot_split, omniglot_info
from pfedhn_jax.errors import DivergenceError, UserError
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


def check_output_dir(out: str | None, overwrite: bool) -> Path | None:
    """Refuse an output folder that already holds files, unless --overwrite."""
    if out is None:
        return None
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out: {p} exists and is not a folder; choose another path")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
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
        return self.alg.init(jax.random.key(self.cfg.seed))

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


def train(cfg: Config, progress: bool = True) -> dict:
    """Run a whole training job; returns the results dict (also written to `<out>/results.json`)."""
    cfg.validate()
    out = check_output_dir(cfg.out, cfg.overwrite)
    t_start = time.perf_counter()
    data, _, data_desc = load_data(cfg)
    trainer = Trainer(cfg, data)
    state = trainer.init()
    compile_s = trainer.compile(state)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    results = {"config": cfg.to_dict(), "data": data_desc, "environment": environment(),
               "algorithm": {"hyper_lr": cfg.hyper_lr, "embed_dim": trainer.alg.hnet.embedding_dim,
                             "conv_impl": trainer.alg.target.conv_impl},
               "compile_s": compile_s, "curves": [], "best": None}
    tracker = evaluate.BestTracker()
    pending: list[StepMetrics] = []
    train_s = eval_s = 0.0
    bar = _progress_bar(cfg.num_steps, progress)
    step = 0
    t_seg = time.perf_counter()
    while step < cfg.num_steps:
        state, metrics = trainer.step(state)
        pending.append(metrics)
        step += 1
        bar.update(1)
        if not is_eval_step(step, cfg):
            continue
        losses = _check_finite(pending, step - len(pending))
        jax.block_until_ready(state)
        train_s += time.perf_counter() - t_seg
        t_eval = time.perf_counter()
        val, test = trainer.evaluate(state)
        eval_s += time.perf_counter() - t_eval
        t_seg = time.perf_counter()
        improved = tracker.update(step, val, test)
        results["curves"].append({"step": step, "train_loss": float(losses.mean()),
                                  "val_acc": val["acc"], "val_loss": val["loss"],
                                  "test_acc": test["acc"], "test_loss": test["loss"],
                                  "wall_s": time.perf_counter() - t_start})
        pending = []
        bar.set_postfix(val=f"{val['acc']:.4f}", test=f"{test['acc']:.4f}", best=f"{tracker.test_acc:.4f}")
        results["best"] = dataclasses.asdict(tracker)
        results["final"] = {"step": step, "val": val, "test": test}
        results["timing"] = {"train_s": train_s, "eval_s": eval_s, "steps": step,
                             "outer_steps_per_s": step / train_s if train_s else math.nan,
                             "local_steps_per_s": step * cfg.clients_per_step * cfg.inner_steps / train_s if train_s else math.nan,
                             "wall_s": time.perf_counter() - t_start}
        if out is not None:
            write_json(out / "results.json", results)
    bar.close()
    if out is not None:
        plot_curves(results, out / "curves.png")
    results["state"] = state
    return results


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=1.0)


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
