"""Devices and processes before JAX starts: forced CPU devices, and `jax.distributed` for several hosts.

`set_cpu_devices` must run before JAX initialises its backends (scripts call it right after
parsing flags). `initialize` joins a multi-process job, when asked or when srun / mpirun started
this process as one of several tasks (so they never run as separate jobs writing one folder):
every process runs the same program on the same data, the mesh spans every process's devices,
and only process 0 writes results.
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


# multi-process launchers whose tasks join one job unasked: (name, task count, task index, what JAX needs
# to find the coordinator). srun sets SLURM_STEP_NUM_TASKS in the tasks of a job step only, not in a batch
# script or a shell on an allocated node, which run one process whatever --ntasks says.
LAUNCHERS = (("SLURM (srun)", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
              ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_LOCALID")),
             ("Open MPI (mpirun)", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", ("OMPI_MCA_orte_hnp_uri",)))


def launcher_tasks(environ: dict | None = None) -> tuple[str, int, int] | None:
    """(launcher, task count, this task's index) when a launcher started this process as one of
    several tasks of one job step (`LAUNCHERS`), else None. Reads the environment only."""
    env = os.environ if environ is None else environ
    for name, count, index, needs in LAUNCHERS:
        if env.get(count, "").isdigit() and int(env[count]) > 1 and env.get(index, "").isdigit() \
                and all(k in env for k in needs):
            return name, int(env[count]), int(env[index])
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process job when asked, or when a launcher started this process as one of
    several tasks (`launcher_tasks`: srun, mpirun); returns whether one was joined.

    coordinator 'auto': let `jax.distributed.initialize()` detect the cluster (SLURM, Open MPI,
    Cloud TPU pod slices, ...); 'none': never join (each launched task runs on its own). Otherwise
    all three values are needed. On CPU the cross-process collectives go through gloo.
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    named = [k for k, v in given.items() if v is not None and k != "--coordinator"]
    if coordinator == "none":
        if named:
            raise UserError(f"{named[0]}: --coordinator none runs this process on its own; drop {named[0]}")
        return False
    if coordinator is None:
        if named:
            raise UserError(f"--coordinator: {named[0]} needs --coordinator HOST:PORT (or auto)")
        tasks = launcher_tasks()
        if tasks is None:
            return False
        name, num_processes, process_id = tasks  # JAX reads the coordinator's address from the launcher
        print(f"joining the {num_processes} tasks started by {name} as one job, as process {process_id} "
              "(--coordinator none runs each task on its own)", file=sys.stderr)
    elif coordinator != "auto":
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise UserError(f"{missing[0]}: a multi-process run needs --coordinator HOST:PORT, --num-processes and "
                            "--process-id (or --coordinator auto on a TPU pod slice / SLURM / Open MPI)")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id: must be in 0..{num_processes - 1}, got {process_id}")
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only: GPUs and TPUs have their own
    jax.distributed.initialize(None if coordinator in (None, "auto") else coordinator, num_processes, process_id)
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
