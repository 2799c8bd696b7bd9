"""The outer loop: a `Config` (and optionally several seeds) in, trained runs and results out.

One program trains a group of R runs (R = 1, or one per seed of `--seeds`; `programs.GroupPrograms`).
The host only decides cadence (evaluate, log, checkpoint) and keeps at most two outer steps in
flight, so a stop request (SIGINT / SIGTERM) is honoured within one outer step. A single run
writes `<out>/results.json`; a group writes `<out>/seed-<s>/results.json` (the same schema) and
`<out>/summary.{json,md}`; either checkpoints to `<out>/checkpoints`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import results as rio
from pfedhn_jax.builders import load_group_data
from pfedhn_jax.checkpoint import Checkpointer
from pfedhn_jax.config import Config
from pfedhn_jax.data.registry import spec, validate
from pfedhn_jax.distributed import check_shared_folder, is_main
from pfedhn_jax.errors import DataError, DivergenceError, Interrupted, UserError
from pfedhn_jax.history import Group, RunRecord, check_finite, communication, summarize_group
from pfedhn_jax.resume import finished_results, open_checkpoints
from pfedhn_jax.signals import check_start, log, stop_now, stop_requests
from pfedhn_jax.programs import GroupPrograms, device_mesh, padded_size


def is_eval_step(step: int, cfg: Config) -> bool:
    """After `step` completed outer steps: the reference evaluates after steps 1, 1+k, 1+2k, ... and the last."""
    return (step - 1) % cfg.eval_every == 0 or step == cfg.num_steps


@jax.jit
def _finite(tree) -> jax.Array:
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in floats])) if floats else jnp.bool_(True)


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is finite (one jitted reduction, one host read)."""
    return bool(_finite(tree))


def train(cfg: Config, progress: bool = True, stop_at: int | None = None, tensorboard: bool = False,
          devices: Sequence[jax.Device] | None = None) -> dict:
    """Run (or resume, or extend) one training run; returns its results dict (the schema of
    `<out>/results.json`) with the final TrainState under "state" (absent for a finished run).

    With --out, checkpoints go to `<out>/checkpoints` every `checkpoint_every` steps, at the end
    and on SIGINT / SIGTERM (then `Interrupted` is raised); a folder holding a checkpoint of the
    same config is resumed, and the resumed run's numbers equal an uninterrupted run's bit for bit.
    A non-finite loss or update raises DivergenceError and never reaches a checkpoint.
    `stop_at`: checkpoint and return after that outer step (status "paused").
    `tensorboard`: also write the curves to `<out>/tensorboard` (needs tensorboardX).
    Replay (cfg.split_file, cfg.init_from, cfg.client_order): a reference run's split, initial weights
    and client sequence (data/replay.py); only the batch draws then differ.
    `devices`: the devices the step's clients are split over (default `jax.devices()`, every process's).
    """
    out = Path(cfg.out) if cfg.out is not None else None
    return _train(Group(cfg, [cfg.seed], out, [out]), progress, stop_at, tensorboard, devices)[0]


def train_seeds(cfg: Config, seeds: list[int], progress: bool = True, stop_at: int | None = None,
                tensorboard: bool = False, lrs: list[float] | None = None,
                run_dirs: list[str] | None = None, devices: Sequence[jax.Device] | None = None) -> dict:
    """Train one run per seed (per learning rate and seed with `lrs`) in one program: a leading
    run axis, sharded over the devices.

    Each run equals a separate `train(replace(cfg, seed=s, lr=lr))` (same split, initialisation,
    client and batch draws) and writes `<out>/seed-<s>/results.json` (`<out>/lr-<lr>/seed-<s>/`
    in a sweep; or the given `run_dirs`, one per run); `<out>/summary.json` and `summary.md` hold
    the mean ± std over seeds (per lr), and `<out>/checkpoints` the group's checkpoints.
    Returns {"runs": [results per run], "summary": ..., "state": the stacked TrainState (leading
    axis: runs, padding runs included)}. `devices`: as in `train`; the runs are padded to fill them.
    """
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds: give distinct seeds, got {seeds}")
    if lrs is not None and (not lrs or len(set(lrs)) != len(lrs) or not all(lr > 0 for lr in lrs)):
        raise UserError(f"--lrs: give distinct positive learning rates, got {lrs}")
    replay = [f for f in ("split_file", "init_from", "client_order") if getattr(cfg, f) is not None]
    if replay:
        raise UserError(f"--{replay[0].replace('_', '-')}: replays one reference run; drop --seeds / --lrs")
    out = Path(cfg.out) if cfg.out is not None else None
    runs = [(lr, s) for lr in (lrs or [cfg.lr]) for s in seeds]
    names = [f"seed-{s}" if lrs is None else f"lr-{lr:g}/seed-{s}" for lr, s in runs]
    dirs = [out / n if out is not None else None for n in names] if run_dirs is None else [Path(d) for d in run_dirs]
    if len(dirs) != len(runs):
        raise UserError(f"run_dirs: {len(dirs)} folders for {len(runs)} runs")
    group = Group(dataclasses.replace(cfg, seed=seeds[0], lr=runs[0][0]), [s for _, s in runs], out, dirs,
                  lrs=None if lrs is None else [lr for lr, _ in runs])
    results = _train(group, progress, stop_at, tensorboard, devices)
    state = results[0].pop("state", None)
    for r in results[1:]:
        r.pop("state", None)
    return {"runs": results, "summary": summarize_group(group.records, results[0]["status"], lrs is not None)
            if group.records else rio.read_json(out / "summary.json"), "state": state}


def _train(group: Group, progress: bool, stop_at: int | None, tensorboard: bool,
           devices: Sequence[jax.Device] | None) -> list[dict]:
    cfg = validate(group.cfg)
    why = spec(cfg.dataset).missing(cfg)
    if why:
        raise DataError(why)
    if tensorboard and group.out is None:
        raise UserError("--tensorboard: needs --out (the event files go to <out>/tensorboard)")
    if tensorboard:
        rio.tensorboard_writer()
    rio.prepare_output_dir(cfg.out, cfg.overwrite, cfg.resume)
    if group.is_group and cfg.overwrite and group.out is not None:
        for d in group.run_dirs:
            rio.prepare_output_dir(str(d), True, False)
        for name in ("summary.json", "summary.md"):
            (group.out / name).unlink(missing_ok=True)
    if group.out is not None:
        check_shared_folder(group.out)  # several processes: one --out for all, prepared by process 0
    done = finished_results(group)
    if done is not None:
        log(f"{group.out} holds a finished run of this config: results in "
            f"{group.out / ('summary.json' if group.is_group else 'results.json')}")
        return done
    with stop_requests() as stop:
        t0 = time.perf_counter()
        r = len(group.seeds)
        devices = jax.devices() if devices is None else list(devices)
        padded = padded_size(r, len(devices)) if r > 1 else 1
        seeds = group.seeds + [group.seeds[-1]] * (padded - r)
        lrs = [group.run_config(i).effective_lr for i in range(r)]
        lrs += [lrs[-1]] * (padded - r)
        mesh = device_mesh(padded, cfg.clients_per_step, devices)  # refuses an indivisible client axis before loading
        log(f"loading {cfg.dataset} and building the federated split ({cfg.num_clients} clients, "
            f"seed{'s' if len(set(seeds)) > 1 else ''} {', '.join(map(str, dict.fromkeys(group.seeds)))})")
        data, _, descs = load_group_data(cfg, seeds)
        check_start(stop, "loading data")
        programs = GroupPrograms(cfg, data, padded, mesh)
        if r > 1:
            log(f"{r} runs in one program on {len(devices)} device(s)"
                + (f" (+{padded - r} padding run(s) to fill them)" if padded > r else ""))
        elif programs.mesh is not None:
            log(f"{cfg.clients_per_step} clients per step split over {len(devices)} devices")
        state = programs.init(seeds, lrs)
        if cfg.init_from is not None:  # replay: the reference's initial weights
            from pfedhn_jax.replay import load_initial_state
            one = load_initial_state(cfg.init_from, programs.alg, jax.tree.map(lambda a: a[0], state))
            state = jax.tree.map(lambda a: a[None], one)
        client_order = None
        if cfg.client_order is not None:  # replay: the reference's client of every step, (T, R=1, C=1)
            from pfedhn_jax.data.replay import load_client_order
            client_order = load_client_order(cfg.client_order, cfg.num_clients, cfg.num_steps)[:, None, None]
        ckpt, state, resumed = open_checkpoints(group, state)
        log(f"compiling the outer step and the evaluation on {jax.default_backend()}")
        compile_s = programs.compile(state, with_client_ids=client_order is not None)
        log(f"compiled in {compile_s:.1f} s")
        check_start(stop, "compiling")
        comm = communication(programs.alg, cfg)
        if not resumed:
            env = rio.environment()
            group.records = [RunRecord(group.run_config(i), {
                "config": group.run_config(i).to_dict(), "data": descs[i], "environment": env,
                "algorithm": {**programs.alg.describe(), "lr": lrs[i], "conv_impl": programs.conv_impl},
                "group": {"seeds": group.seeds, "lrs": group.lrs, "padded_runs": padded, "devices": len(devices),
                          "by_run": programs.by_run}
                if r > 1 else None,
                "communication": comm, "compile_s": compile_s, "status": "running", "curves": [], "best": None},
                wall_s=time.perf_counter() - t0) for i in range(r)]
        else:
            for rec, desc in zip(group.records, descs):
                if rec.results["data"].get("sha256") != desc.get("sha256"):
                    raise DataError(f"{desc['source']}: checksum {desc['sha256']} differs from the one the checkpoint "
                                    f"was trained on ({rec.results['data'].get('sha256')}); restore that file, or "
                                    "start a new run in a new --out")
                rec.results.setdefault("resumed", []).append({"at_step": group.step, "compile_s": compile_s})
                rec.results["communication"] = comm
        if group.out is not None and is_main():
            group.out.mkdir(parents=True, exist_ok=True)
        return _loop(group, programs, state, ckpt, stop, progress, stop_at, tensorboard, client_order)


def _loop(group: Group, programs: GroupPrograms, state, ckpt: Checkpointer | None, stop: dict,
          progress: bool, stop_at: int | None, tensorboard: bool, client_order: np.ndarray | None) -> list[dict]:
    cfg = group.cfg
    step = group.step
    writers = [rio.open_tensorboard(d) for d in group.run_dirs] if tensorboard and is_main() else []

    def checkpoint() -> None:
        if ckpt is None or ckpt.latest_step() == step:
            return
        check_finite(group.pending, step - len(group.pending), group.labels)
        if not all_finite(state):
            raise DivergenceError(f"training diverged by outer step {step}: non-finite parameters in the "
                                  "state; lower --lr")
        ckpt.save(step, state, group.host())

    def add_time(seconds: float) -> None:
        for rec in group.records:
            rec.train_s += seconds

    bar = progress_bar(cfg.num_steps, progress, initial=step)
    try:
        t_seg = time.perf_counter()
        last = cfg.num_steps if stop_at is None else min(stop_at, cfg.num_steps)
        previous = None
        stopping = False  # the processes' common decision (signals.stop_now), not this process's alone
        while step < last and not (stopping := stop_now(stop)):
            ids = None if client_order is None else client_order[step]
            state, metrics = programs.step(state, ids)
            if previous is not None:  # at most two steps in flight: a stop is honoured within one step
                jax.block_until_ready(previous)
            previous = metrics
            group.pending.append(metrics)
            step = group.step = step + 1
            bar.update(1)
            if is_eval_step(step, cfg):
                losses = check_finite(group.pending, step - len(group.pending), group.labels)
                jax.block_until_ready(state)
                add_time(time.perf_counter() - t_seg)
                _record_evaluation(group, programs, state, step, losses, writers, bar)
                group.pending = []
                group.write("running")
                t_seg = time.perf_counter()
            if step == last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                jax.block_until_ready(state)
                add_time(time.perf_counter() - t_seg)
                checkpoint()
                t_seg = time.perf_counter()
        if stopping:
            jax.block_until_ready(state)
            checkpoint()
            group.write("interrupted")
            where = (f"checkpoint of step {step} saved in {ckpt.directory}; rerun the same command "
                     f"(or add --resume) to continue" if ckpt else "nothing saved: pass --out to make runs resumable")
            raise Interrupted(stop["signal"], f"interrupted by {stop['signal']} after outer step {step}; {where}")
    except DivergenceError as e:
        for rec in group.records:
            rec.results["error"] = str(e)
        group.write("diverged")
        raise
    finally:
        bar.close()
        for w in writers:
            w.close()
        if ckpt is not None:
            ckpt.close()
    status = "paused" if step < cfg.num_steps else "finished"
    group.write(status)
    if status == "finished" and is_main():
        for rec, d in zip(group.records, group.run_dirs):
            if d is not None:
                rio.plot_run(rec.results, d / "curves.png")
    single = jax.tree.map(lambda a: a[0], state) if len(group.run_dirs) == 1 and not group.is_group else state
    return [{**rec.results, "state": single} if i == 0 else dict(rec.results) for i, rec in enumerate(group.records)]


def _record_evaluation(group: Group, programs: GroupPrograms, state, step: int, losses: np.ndarray, writers, bar) -> None:
    """Evaluate every client of every run on val and test; record the curve points."""
    t_eval = time.perf_counter()
    summaries = programs.evaluate_runs(state)
    eval_s = time.perf_counter() - t_eval
    for r, rec in enumerate(group.records):
        val, test = summaries[r]
        point = rec.add_evaluation(step, float(losses[:, r].mean()), val, test, eval_s)
        if writers:
            rio.log_scalars(writers[r], point, step)
    recs = group.records
    mean = lambda f: f"{np.mean([f(rec) for rec in recs]):.4f}"
    bar.set_postfix(val=mean(lambda rec: rec.results["final"]["val"]["acc"]),
                    test=mean(lambda rec: rec.results["final"]["test"]["acc"]),
                    test_at_best_val=mean(lambda rec: rec.tracker.test_acc))


def progress_bar(total: int, enabled: bool, initial: int = 0):
    """The run's tqdm bar over outer steps (also the Flower server's), starting at `initial`."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=1.0)
