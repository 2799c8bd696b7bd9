"""Bad input to scripts/train.py: exit status 2, one line naming the flag, fast, no traceback."""

import subprocess
import sys
import time

import pytest

from conftest import ROOT, train_script


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
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]  # after the status lines
    assert p.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: --num-clients"), p.stderr
    assert "Traceback" not in p.stderr
    assert dt < 30


def test_existing_output_is_not_overwritten(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    p, _ = run_cli("--data-dir", str(data_dir), "--out", str(out))
    assert p.returncode == 2 and "--out" in p.stderr and "--overwrite" in p.stderr
    assert (out / "results.json").read_text() == "{}"


def test_help_describes_every_flag_in_groups():
    import dataclasses

    from pfedhn_jax.config import Config
    p = train_script().parser()
    flags = {a.dest: a for a in p._actions if a.option_strings and a.dest != "help"}
    assert set(flags) >= {f.name for f in dataclasses.fields(Config)}
    for dest, a in flags.items():
        assert a.help and len(a.help) > 15, f"--{dest} has no real description"
        assert "(default: None)" not in a.help and a.help.count("default") <= 1, a.help
    titles = [g.title for g in p._action_groups]
    assert any("data" in t for t in titles) and any("speed" in t for t in titles)
    assert flags["dataset"].choices == ("cifar10", "cifar100", "omniglot")
