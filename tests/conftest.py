"""Shared fixtures: the offline data folder (../shared/data, or $PFEDHN_DATA_DIR) and small models."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

# One persistent XLA compilation cache for the suite and its subprocesses (the CLI, signal, device
# and process tests compile the same small programs again); set before anything imports JAX.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "pfedhn-jax-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")  # programs, not the thousands of eager ops
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# LLVM optimisation level 0 for every program of the suite and its subprocesses: on the 2-core CPU
# it compiles the tiny test step in 1.0 s instead of 2.9 s, and the suite spends over half its
# time compiling. Numbers compared within the suite all come from programs compiled alike (level
# 0 rounds differently from level 2: no fused multiply-adds), so the comparisons are unchanged;
# the learning check runs the production setting (`production_env`). A level in XLA_FLAGS wins.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()

import pytest  # noqa: E402

from pfedhn_jax.targets import ConvNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist (--dist loadfile) hands whole files to the workers in collection order: the slowest
# files go first, so none of them starts last and keeps one worker busy alone at the end
# (order by measured time per file, `pytest --durations=0`, 2-core CPU).
SLOWEST_FIRST = ("test_flower_deploy.py", "test_group.py", "test_flax_targets.py", "test_hetero.py", "test_examples.py",
                 "test_server.py",
                 "test_resume.py", "test_novel.py", "test_loop.py", "test_distributed.py", "test_client.py",
                 "test_reproduce.py", "test_pc.py", "test_checkpoint.py", "test_targets.py", "test_signals.py",
                 "test_draws.py", "test_hypernet.py", "test_replay.py", "test_flower.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: test order within a file kept


# The one small run of the end-to-end tests (with `small_cifar_dir`), in this process and in
# subprocesses: runs of equal shapes and settings lower to equal programs, which the persistent
# cache above compiles once for the whole suite. Schedules (num_steps, eval_every, checkpoints)
# do not enter the programs; a test that needs other shapes states why.
TINY_RUN = dict(num_clients=4, val_size=600, inner_steps=2, batch_size=8, n_kernels=2, hyper_hid=8, n_hidden=1,
                algo="pfedhn-pc", seed=5)


def cli_flags(**kw) -> list[str]:
    """Config fields as scripts/train.py flags: cli_flags(num_steps=3) -> ['--num-steps', '3']."""
    return [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def tiny_flags(**kw) -> list[str]:
    """TINY_RUN, updated by kw, as scripts/train.py flags."""
    return cli_flags(**{**TINY_RUN, **kw})


def xla_env(cpu_devices: int | None = None) -> dict[str, str]:
    """Environment for a subprocess that compares its numbers with this process's: the suite's
    XLA_FLAGS (see above), plus `cpu_devices` forced host CPU devices (default: one device)."""
    flags = [f for f in os.environ["XLA_FLAGS"].split() if not f.startswith("--xla_force_host_platform_device_count")]
    if cpu_devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}


def production_env() -> dict[str, str]:
    """Environment for a subprocess that runs as a user would: XLA's default optimisation level."""
    flags = [f for f in os.environ["XLA_FLAGS"].split() if f != SUITE_XLA_FLAGS]
    return {**os.environ, "XLA_FLAGS": " ".join(flags)}


def shared_data_dir() -> Path:
    return Path(os.environ.get("PFEDHN_DATA_DIR") or ROOT.parent / "shared" / "data")


def wait_for_file(proc, path: Path, timeout: float = 240) -> None:
    """Poll until `path` exists (a subprocess run's results.json: written at its first evaluation, so
    it has compiled and is training); fails if the process ends first or time runs out."""
    deadline = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)


def sigterm_once_training(cmd: list[str], out: Path) -> tuple[int, str]:
    """Start `cmd` (scripts/train.py writing to `out`), send it SIGTERM once it trains (its
    results.json exists), and return its (exit status, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for_file(proc, out / "results.json")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


def train_script():
    """scripts/train.py as a module (its `main(argv)` returns the exit status), for in-process CLI tests."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not (d / "cifar10.npz").is_file():
        pytest.fail(f"real data not found at {d}: set PFEDHN_DATA_DIR to the folder holding cifar10.npz")
    return d


@pytest.fixture(scope="session")
def small_cifar_dir(data_dir, tmp_path_factory) -> Path:
    """A folder whose cifar10.npz holds 3000 training and 1000 test images drawn from the real
    file (a fixed draw, every class): real images (a smooth loss surface, so batched and plain programs agree to rounding)
    that load in milliseconds, in this process and in subprocess tests. Use val_size <= 1000."""
    import numpy as np
    d = tmp_path_factory.mktemp("small_cifar")
    rng = np.random.default_rng(0)
    with np.load(data_dir / "cifar10.npz") as f:
        tr, te = np.sort(rng.permutation(len(f["y_train"]))[:3000]), np.sort(rng.permutation(len(f["y_test"]))[:1000])
        np.savez(d / "cifar10.npz", x_train=f["x_train"][tr], y_train=f["y_train"][tr],
                 x_test=f["x_test"][te], y_test=f["y_test"][te])
    return d


@pytest.fixture(scope="session")
def tiny_target() -> ConvNet:
    """A small ConvNet with the CIFAR net's structure (2 convs, 2 dense, head), fast to differentiate."""
    return ConvNet((10, 10, 3), (3, 4), 3, "VALID", (6, 5), 4)

