"""Several processes: two processes under jax.distributed on localhost (gloo CPU collectives), one
CPU device each, train two seeds sharded over them, stop at a checkpoint, resume from it in a new
pair of processes, and get the numbers of one process run straight through (pFedHN-PC, and pFedMe
for the baselines); only process 0 writes results. Two tasks of a simulated srun job step, given no multi-host flags, join one job and get
the same numbers. Also the --cpu-devices / multi-host flag checks."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY_RUN, xla_env
from pfedhn_jax import distributed
from pfedhn_jax.checkpoint import Checkpointer
from pfedhn_jax.errors import UserError

SCRIPT = """
import json, sys
from pfedhn_jax import distributed
if sys.argv[2] == "launcher":  # started as tasks of a launcher (srun): no flags, the job from its environment
    assert distributed.initialize()
else:
    distributed.initialize(sys.argv[2], 2, int(sys.argv[3]))
import jax
from pfedhn_jax.config import Config
from pfedhn_jax.loop import train_seeds
cfg = Config(**json.loads(sys.argv[4]), out=sys.argv[1])
from pfedhn_jax.errors import Interrupted
stop_at = json.loads(sys.argv[5])
try:
    g = train_seeds(cfg, [5, 6], progress=False, stop_at=stop_at)
except Interrupted as e:
    print("RESULT " + json.dumps({"process": jax.process_index(), "devices": len(jax.devices()), "interrupted": e.signal}))
    sys.exit(0)
print("RESULT " + json.dumps({"process": jax.process_index(), "devices": len(jax.devices()), "status": [r["status"] for r in g["runs"]],
                              "resumed": [r.get("resumed") for r in g["runs"]],
                              "curves": [r["curves"] for r in g["runs"]]}))
"""
CFG = dict(TINY_RUN, num_steps=4, eval_every=2, checkpoint_every=4)  # one process: test_group's 2-seed program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_env(task: int, tasks: int = 2) -> dict[str, str]:
    """What srun puts in the environment of task `task` of a one-node job step (plus the port JAX's
    SLURM detection would otherwise derive from the job id)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": str(tasks),
            "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)}


def start(outs: list, cfg: str, stop_at: int | None, launcher: bool = False) -> list[subprocess.Popen]:
    """SCRIPT as processes 0 and 1 of one jax.distributed job, process i writing to outs[i]; with
    `launcher`, as two tasks of an srun job step that name no coordinator."""
    port = free_port()
    env = xla_env()  # one CPU device per process
    procs = []
    for i, out in enumerate(outs):
        addr, task_env = ("launcher", {**srun_env(i), "JAX_COORDINATOR_PORT": str(port)}) if launcher \
            else (f"127.0.0.1:{port}", {})
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), addr, str(i), cfg, json.dumps(stop_at)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**env, **task_env}, cwd=ROOT))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    """Each process's (return code, stdout, stderr), once all have ended."""
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:  # a hung job (e.g. processes waiting on each other) must not outlive the test
        for p in procs:
            p.kill()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def launch(outs: list, cfg: str, stop_at: int | None, launcher: bool = False) -> list[tuple[int, str, str]]:
    return finish(start(outs, cfg, stop_at, launcher))


def parse(results: list[tuple[int, str, str]]) -> list[dict]:
    """The RESULT dicts of processes that all exited cleanly."""
    for rc, _, e in results:
        assert rc == 0, e[-3000:]
    got = [json.loads(next(line[7:] for line in o.splitlines() if line.startswith("RESULT "))) for _, o, _ in results]
    assert sorted(g["process"] for g in got) == [0, 1] and all(g["devices"] == 2 for g in got)
    return got


def two_processes(out, cfg: str, stop_at: int | None) -> list[dict]:
    """Processes 0 and 1 of one job, both writing to `out`; their RESULT dicts."""
    return parse(launch([out, out], cfg, stop_at))


@pytest.fixture(scope="module")
def one_process(small_cifar_dir) -> dict:
    """CFG's two seeds trained straight through in this process (one device)."""
    from pfedhn_jax.config import Config
    from pfedhn_jax.loop import train_seeds
    return train_seeds(Config(data_dir=str(small_cifar_dir), out=None, **CFG), [5, 6], progress=False)


def assert_same_curves(got: list[dict], one: dict):
    for g in got:
        for mine, ref in zip(g["curves"], one["runs"]):
            for a, b in zip(mine, ref["curves"]):
                for k in ("val_acc", "test_acc"):
                    assert a[k] == pytest.approx(b[k], abs=1e-6)
                for k in ("train_loss", "val_loss", "test_loss"):
                    assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6)


def test_two_processes_stop_resume_equal_one(small_cifar_dir, one_process, tmp_path):
    cfg = json.dumps({**CFG, "data_dir": str(small_cifar_dir)})  # real images, a small file read fast
    out = tmp_path / "out"
    first = two_processes(out, cfg, stop_at=2)  # a checkpoint at step 2, written by both processes
    assert all(g["status"] == ["paused"] * 2 for g in first)  # on process 1 too, which writes nothing
    got = two_processes(out, cfg, stop_at=None)  # a new job resumes from it
    assert all(g["status"] == ["finished"] * 2 and all(r[0]["at_step"] == 2 for r in g["resumed"]) for g in got)
    assert_same_curves(got, one_process)
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "seed-5", "seed-6", "summary.json", "summary.md"]


def test_a_baseline_in_two_processes_equals_one(small_cifar_dir, tmp_path):
    """pFedMe (a server model, a personal model per client, 2 sampled clients per round): two seeds
    over two processes give one process's numbers, through the same run machinery as pFedHN."""
    from pfedhn_jax.config import Config
    from pfedhn_jax.loop import train_seeds
    cfg = {**CFG, "algo": "pfedme", "clients_per_step": 2, "data_dir": str(small_cifar_dir)}
    one = train_seeds(Config(**cfg, out=None), [5, 6], progress=False)
    got = two_processes(tmp_path / "out", json.dumps(cfg), stop_at=None)
    assert all(g["status"] == ["finished"] * 2 for g in got)
    assert [p["step"] for p in got[0]["curves"][0]] == [1, 3, 4]
    assert_same_curves(got, one)


def test_tasks_of_an_srun_step_join_one_job_unasked(small_cifar_dir, one_process, tmp_path):
    """Two tasks started by srun with no multi-host flags train as one job (not two jobs writing
    one folder) and give one process's numbers."""
    out = tmp_path / "out"
    results = launch([out, out], json.dumps({**CFG, "data_dir": str(small_cifar_dir)}), None, launcher=True)
    got = parse(results)  # two processes of one job, two devices in all
    assert all("joining the 2 tasks started by SLURM (srun) as one job" in e for _, _, e in results)
    assert all(g["status"] == ["finished"] * 2 for g in got)
    assert_same_curves(got, one_process)


def test_launcher_tasks_are_read_from_the_environment():
    assert distributed.launcher_tasks(srun_env(1, tasks=4)) == ("SLURM (srun)", 4, 1)
    assert distributed.launcher_tasks(srun_env(0, tasks=1)) is None  # a one-task step
    batch = {k: v for k, v in srun_env(0, tasks=4).items() if not k.startswith("SLURM_STEP")}
    assert distributed.launcher_tasks(batch) is None  # an sbatch script: one process, whatever --ntasks says
    mpi = {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://127.0.0.1:5"}
    assert distributed.launcher_tasks(mpi) == ("Open MPI (mpirun)", 3, 2)
    assert distributed.launcher_tasks({k: v for k, v in mpi.items() if k != "OMPI_MCA_orte_hnp_uri"}) is None
    assert distributed.launcher_tasks({}) is None


def test_flag_checks(monkeypatch):
    with pytest.raises(UserError, match="^--cpu-devices"):
        distributed.set_cpu_devices("two")
    with pytest.raises(UserError, match="^--num-processes"):
        distributed.initialize("localhost:1234", None, 0)
    with pytest.raises(UserError, match="^--process-id"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(UserError, match="^--coordinator: --num-processes"):
        distributed.initialize(None, 2, 0)
    with pytest.raises(UserError, match="^--process-id: --coordinator none"):
        distributed.initialize("none", None, 1)
    assert distributed.initialize() is False and distributed.is_main()
    for k, v in srun_env(1).items():
        monkeypatch.setenv(k, v)
    assert distributed.launcher_tasks() is not None
    assert distributed.initialize("none") is False  # srun's tasks, each on its own when asked


def test_an_out_folder_the_processes_do_not_share_is_refused(small_cifar_dir, tmp_path):
    """Two hosts with their own disks: the same --out names two folders. Both processes stop with one
    line before loading data, and process 0 leaves no folder behind."""
    cfg = json.dumps({**CFG, "data_dir": str(small_cifar_dir)})
    got = launch([tmp_path / "host0" / "out", tmp_path / "host1" / "out"], cfg, None)
    for rc, o, e in got:
        assert rc != 0 and "UserError: --out:" in e and "not one folder shared by every process: process(es) 1 " in e
        assert "loading" not in o + e
    assert not (tmp_path / "host0" / "out").exists()


def test_a_signal_to_one_process_stops_both_at_one_checkpoint(small_cifar_dir, tmp_path):
    """SIGTERM to process 1 only (which writes nothing): both processes stop after the same outer
    step and save one checkpoint together (signals.stop_now), and a new job resumes from it."""
    cfg = json.dumps({**CFG, "num_steps": 100000, "eval_every": 5, "checkpoint_every": 0,
                      "data_dir": str(small_cifar_dir)})
    out = tmp_path / "out"
    procs = start([out, out], cfg, None)
    try:
        deadline = time.time() + 240
        # summary.json is written at the first evaluation (step 1): compiled, training
        while not (out / "summary.json").is_file() and all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        results = finish(procs, timeout=120)
    got = parse(results)  # a process that failed before the signal shows its stderr here
    assert [g["interrupted"] for g in got] == ["SIGTERM", "SIGTERM"]
    step = Checkpointer(out / "checkpoints").latest_step()
    assert step is not None and step >= 1  # the first evaluation (summary.json) is at step 1
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    resumed = two_processes(out, cfg, stop_at=step + 2)
    assert all(g["status"] == ["paused"] * 2 and all(r[0]["at_step"] == step for r in g["resumed"]) for g in resumed)
    assert Checkpointer(out / "checkpoints").latest_step() == step + 2
