"""What --out already holds: a finished group of this config (nothing to do), or a checkpoint of
the same runs to continue (or extend to a larger --num-steps). Anything else is refused with one
line naming the differing flags (`config.run_differences`, the one rule for "the same run").
"""

from __future__ import annotations

from typing import Any

from pfedhn_jax import results as rio
from pfedhn_jax.checkpoint import Checkpointer
from pfedhn_jax.config import describe_differences, run_differences
from pfedhn_jax.errors import UserError
from pfedhn_jax.history import Group
from pfedhn_jax.signals import log


def open_checkpoints(group: Group, template: Any) -> tuple[Checkpointer | None, Any, bool]:
    """The group's checkpointer and, if --out holds a checkpoint of the same runs, the restored state.

    A larger --num-steps extends a finished or unfinished run (no schedule depends on the total),
    recorded in each run's results["extended"]. Returns (checkpointer, state, resumed).
    """
    cfg, out = group.cfg, group.out
    if out is None:
        return None, template, False
    ckpt = Checkpointer(out / "checkpoints", keep=cfg.keep_checkpoints)
    if ckpt.latest_step() is None:
        return ckpt, template, False
    saved = ckpt.host_config()
    diff = run_differences(saved["config"], cfg)
    steps = diff.pop("num_steps", None)
    for k in ("seeds", "lrs"):
        if saved.get(k, getattr(group, k)) != getattr(group, k):
            diff[k] = (saved[k], getattr(group, k))
    if diff:
        raise UserError(f"--out: {out} holds a checkpoint of a different config: {describe_differences(diff)}; "
                        "rerun with the checkpoint's values to resume, choose a new --out, or pass --overwrite")
    if steps is not None and ckpt.latest_step() > cfg.num_steps:
        raise UserError(f"--num-steps: {out} holds a checkpoint of step {ckpt.latest_step()}, beyond "
                        f"--num-steps {cfg.num_steps}; pass at least {ckpt.latest_step()}")
    group.step = ckpt.latest_step()
    log(f"extending {'a finished' if steps[0] == group.step else 'the'} run in {out} from {steps[0]} to {steps[1]} "
        f"steps, from step {group.step}" if steps else
        f"resuming the run in {out} from step {group.step} of {cfg.num_steps}")
    state, host = ckpt.restore(template, group.step)
    group.restore_host(host)
    if steps is not None:
        for rec in group.records:
            rec.results.setdefault("extended", []).append(
                {"from_num_steps": steps[0], "to_num_steps": steps[1], "at_step": group.step})
            rec.results["config"] = rec.cfg.to_dict()
    return ckpt, state, True


def finished_results(group: Group) -> list[dict] | None:
    """The results of every run when --out holds a finished group of exactly this config, else None."""
    if group.out is None or group.cfg.overwrite:
        return None
    found = []
    for r, d in enumerate(group.run_dirs):
        res = rio.read_json(d / "results.json")
        if not (res and res.get("status") == "finished" and (res.get("final") or {}).get("step") == group.cfg.num_steps
                and not run_differences(res.get("config", {}), group.run_config(r))):
            return None
        found.append(res)
    return found
