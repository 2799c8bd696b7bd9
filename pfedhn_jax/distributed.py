"""Devices and processes before JAX starts: forced CPU devices, and `jax.distributed` for several hosts.

`set_cpu_devices` must run before JAX initialises its backends (scripts call it right after
parsing flags). `initialize` joins a multi-process job: every process runs the same program on
the same data, the mesh spans every process's devices, and only process 0 writes results.
"""

from __future__ import annotations

import os
import sys

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
