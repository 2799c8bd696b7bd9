"""Bad input to scripts/train.py: exit status 2, one line naming the flag, fast, no traceback."""

import subprocess
import sys
import time

import pytest

from conftest import ROOT


def run_cli(*args, env_data_dir=None, timeout=60):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--no-progress", *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p, time.perf_counter() - t0


@pytest.mark.parametrize("args,flag", [
    (["--dataset", "mnist"], "--dataset"),
    (["--num-clients", "0"], "--num-clients"),
    (["--num-steps", "-3"], "--num-steps"),
    (["--inner-steps", "0"], "--inner-steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--inner-lr", "-1"], "--inner-lr"),
    (["--classes-per-client", "11"], "--classes-per-client"),
    (["--optim", "rmsprop"], "--optim"),
    (["--clients-per-step", "51"], "--clients-per-step"),
])
def test_bad_flags(args, flag):
    p, dt = run_cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), p.stderr
    assert "Traceback" not in p.stderr
    assert dt < 20


def test_missing_data_dir(tmp_path):
    p, _ = run_cli("--data-dir", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "--data-dir" in p.stderr and "cifar10.npz" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_too_many_clients(data_dir):
    p, dt = run_cli("--data-dir", str(data_dir), "--num-clients", "40000")
    assert p.returncode == 2 and p.stderr.startswith("error: --num-clients"), p.stderr
    assert dt < 30


def test_existing_output_is_not_overwritten(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    p, _ = run_cli("--data-dir", str(data_dir), "--out", str(out))
    assert p.returncode == 2 and "--out" in p.stderr and "--overwrite" in p.stderr
    assert (out / "results.json").read_text() == "{}"
