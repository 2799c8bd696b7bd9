"""Checkpoints of a training run, written by orbax-checkpoint: the `TrainState` arrays plus a JSON
record of the host-side loop state, so an interrupted run can resume with identical numbers.

Layout (one orbax `CheckpointManager` folder per saved outer step):
  <dir>/<step>/state/  the array pytree (orbax `StandardSave`: OCDBT/zarr, exact dtypes and bits)
  <dir>/<step>/host/   JSON: best-validation bookkeeping, curves, pending losses, config, wall times...
  <dir>/<step>/meta/   JSON: format version and the PRNG implementation of each typed-key leaf
Typed PRNG keys (`jax.random.key`) are not arrays orbax can store: they are saved as
`jax.random.key_data` (uint32, e.g. (2,) for threefry) and re-wrapped with the template's impl.

Atomicity: orbax writes `<step>.orbax-checkpoint-tmp/` and renames it to `<step>/` only once every
item is complete (local filesystems), so a run killed mid-save leaves at most a tmp folder, which is
never listed as a step and is removed when the folder is next opened or that step is saved again.
Orbax logs ~45 absl INFO lines per save; they are muted (only while a Checkpointer method runs) in
case the process logs at INFO. Its warnings and errors stay visible, and exceptions propagate.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

FORMAT = 1


def _quiet(method):
    """Run `method` with the absl logger (orbax's) at WARNING or above."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        log = logging.getLogger("absl")
        level = log.level
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
        try:
            return method(*args, **kwargs)
        finally:
            log.setLevel(level)
    return wrapper


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree: Any) -> tuple[Any, list[str | None]]:
    """Typed PRNG keys -> their raw uint32 data; also returns each leaf's impl name (None: not a key)."""
    leaves, treedef = jax.tree.flatten(tree)
    impls = [str(jax.random.key_impl(x)) if _is_key(x) else None for x in leaves]
    data = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
    return jax.tree.unflatten(treedef, data), impls


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"checkpoint host dict: {type(x).__name__} is not JSON-serialisable: {x!r}")


def to_json(obj: Any) -> Any:
    """`obj` as it will read back from the host JSON: numpy/JAX values -> Python numbers or lists,
    tuples -> lists, dict keys -> str (NaN / inf are kept)."""
    return json.loads(json.dumps(obj, default=_json_default))


class Checkpointer:
    """Saves and restores (TrainState, host dict) pairs under `directory`, keeping the last `keep`.

    Nothing is created on disk until the first `save`. Saves block until the checkpoint is
    finalised, so a returned `save` is durable and a later crash cannot corrupt it.
    """

    @_quiet
    def __init__(self, directory: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=False, cleanup_tmp_directories=True, enable_async_checkpointing=False)
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "host", "meta"))

    @_quiet
    def all_steps(self) -> list[int]:
        """Finalised steps on disk, ascending (rescanned: another process may have written)."""
        self._mgr.reload()
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalised step, or None; unfinished (tmp) checkpoints are never reported."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    @_quiet
    def save(self, step: int, state: Any, host: dict) -> None:
        """Write checkpoint `step` (must be newer than the latest) and drop all but the last `keep`.

        state: any pytree of jax arrays (typed PRNG keys allowed), e.g. a `TrainState`.
        host: JSON-able dict (numpy scalars / arrays are converted, see `to_json`).
        """
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(f"checkpoint step {step} is not newer than the latest saved step {latest} "
                             f"in {self.directory}")
        host = to_json(host)  # fail before anything touches the disk
        arrays, impls = _unwrap_keys(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(arrays), host=ocp.args.JsonSave(host),
                                  meta=ocp.args.JsonSave({"format": FORMAT, "prng_impls": impls}))
        saved = self._mgr.save(step, args=args)
        self._mgr.wait_until_finished()
        if not saved:  # orbax skips silently when its save policy says no; ours never should
            raise RuntimeError(f"orbax declined to save checkpoint step {step} in {self.directory}")

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"no finished checkpoint for step {step} in {self.directory} "
                                    f"(have {steps})")
        return step

    @_quiet
    def host_config(self, step: int | None = None) -> dict:
        """The host dict saved at `step` (default: latest), reading only its JSON, not the arrays."""
        step = self._resolve(step)
        return self._mgr.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore())).host

    @_quiet
    def restore(self, template_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Load `step` (default: latest) as (state, host).

        template_state: a pytree of concrete arrays with the saved structure, e.g. `alg.init(key)`;
        the result has its tree types (NamedTuples, empty dicts), dtypes, shardings and PRNG impls,
        with the saved values bit for bit. A different structure or shape raises orbax's ValueError.
        """
        step = self._resolve(step)
        arrays, impls = _unwrap_keys(template_state)
        meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if meta.get("format") != FORMAT or meta.get("prng_impls") != impls:
            raise ValueError(f"checkpoint {self.directory}/{step} (format {meta.get('format')}, PRNG keys "
                             f"{meta.get('prng_impls')}) does not match the template (format {FORMAT}, "
                             f"PRNG keys {impls})")
        out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(arrays),
                                                              host=ocp.args.JsonRestore()))
        t_leaves, treedef = jax.tree.flatten(template_state)
        leaves = jax.tree.leaves(out.state)
        assert len(leaves) == len(t_leaves), "orbax restored a different number of leaves"
        # orbax returns committed arrays; an uncommitted template (e.g. fresh from `alg.init`) gets
        # uncommitted ones back, else a `jax.jit` fed the restored state would compile a second time
        leaves = [x if getattr(t, "committed", True) else jnp.asarray(np.asarray(x))
                  for x, t in zip(leaves, t_leaves)]
        leaves = [jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x
                  for x, t in zip(leaves, t_leaves)]
        return jax.tree.unflatten(treedef, leaves), out.host

    @_quiet
    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
