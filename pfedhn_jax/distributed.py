"""Devices and processes before JAX starts: forced CPU devices, and `jax.distributed` for several hosts.

`set_cpu_devices` must run before JAX initialises its backends (scripts call it right after
parsing flags). `initialize` joins a multi-process job: every process runs the same program on
the same data, the mesh spans every process's devices, and only process 0 writes results.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pfedhn_jax.errors import UserError


def set_cpu_devices(spec: str | int) -> int:
    """Split the host CPU into N XLA devices ('auto': one per core); returns N. Must precede JAX's start."""
    text = str(spec)
    if text == "auto":
        n = os.cpu_count() or 1
    elif text.isdigit() and int(text) >= 1:
        n = int(text)
    else:
        raise UserError(f"--cpu-devices: expected 'auto' or a positive integer, got '{spec}'")
    if n == 1:
        return 1
    flag = f"--xla_force_host_platform_device_count={n}"
    if "jax" in sys.modules:
        import jax
        if jax._src.xla_bridge.backends_are_initialized():  # noqa: SLF001 - the one reliable check
            if len(jax.devices("cpu")) != n:
                raise UserError(f"--cpu-devices: JAX already started with {len(jax.devices('cpu'))} CPU device(s); "
                                "pass the flag before anything imports JAX")
            return n
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_force_host_platform_device_count"))
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    return n


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process job when asked; returns whether one was joined.

    coordinator 'auto': let `jax.distributed.initialize()` detect the cluster (Cloud TPU pod
    slices, SLURM, ...). Otherwise all three values are needed. On CPU the cross-process
    collectives go through gloo.
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if all(v is None for v in given.values()):
        return False
    import jax
    if coordinator == "auto":
        jax.distributed.initialize()
        return True
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise UserError(f"{missing[0]}: a multi-process run needs --coordinator HOST:PORT, --num-processes and "
                        "--process-id (or --coordinator auto on a TPU pod slice / SLURM)")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id: must be in 0..{num_processes - 1}, got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def is_main() -> bool:
    """Process 0 (or the only process): the one that writes results, plots and logs."""
    if "jax" not in sys.modules:
        return True
    import jax
    return jax.process_index() == 0


def num_processes() -> int:
    """Processes in this job: 1 before JAX is imported, or without `jax.distributed`."""
    if "jax" not in sys.modules:
        return 1
    import jax
    return jax.process_count()


def check_shared_folder(folder: str | os.PathLike, flag: str = "--out") -> None:
    """In a multi-process job, refuse a folder that is not one folder for every process.

    Only process 0 writes results, but every process reads the folder (to resume, or to see that
    the run is finished) and orbax writes each process's checkpoint shards into it, so each host
    must mount the same folder. Process 0 writes a token there; every process must read it back.
    Also a barrier: no process goes on before process 0 has prepared the folder (--overwrite).
    A no-op in a single process.
    """
    if num_processes() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    path = Path(folder)
    nonce = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(1, 2**31 - 1))))
    token = path / f".pfedhn-shared-{nonce}"
    created = False
    if is_main():
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        token.write_text(str(nonce))
    multihost_utils.sync_global_devices("pfedhn_jax: shared folder token written")
    seen = token.is_file() and token.read_text() == str(nonce)
    seen_by = np.asarray(multihost_utils.process_allgather(np.asarray(seen)))
    if is_main():
        token.unlink()
        if created and not seen_by.all():
            path.rmdir()
    if not seen_by.all():
        missing = ", ".join(str(i) for i in np.flatnonzero(~seen_by))
        raise UserError(f"{flag}: {path} is not one folder shared by every process: process(es) {missing} "
                        "cannot see what process 0 wrote there; put it on a filesystem every host mounts "
                        "(NFS, or a bucket mounted with gcsfuse)")
