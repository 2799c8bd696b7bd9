"""Ctrl-C / SIGTERM at any moment end scripts/train.py with one line and exit 130 / 143: during data
loading, during compilation (nothing written) and during training (a resumable checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tiny_flags, wait_for_file

TINY = [*tiny_flags(checkpoint_every=0), "--no-progress"]


def start(data_dir, out, *extra):
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--data-dir", str(data_dir), "--out", str(out),
           *TINY, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for_line(proc, prefix: str, timeout: float = 120) -> list[str]:
    """Read stderr until a line starting with `prefix`; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        assert line, f"process ended before '{prefix}': {lines}"
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no '{prefix}' within {timeout} s: {lines}")


@pytest.mark.parametrize("phase,prefix,sig", [
    ("loading data", "loading", signal.SIGINT),
    ("compiling", "compiling", signal.SIGTERM),
])
def test_signal_during_start_up_ends_cleanly(data_dir, tmp_path, phase, prefix, sig):
    # the whole file: loading takes seconds, and its shapes are compiled by no other test, so
    # the signal lands while it loads / compiles, not after
    out = tmp_path / "run"
    proc = start(data_dir, out, "--num-steps", "50")
    try:
        seen = wait_for_line(proc, prefix)
        proc.send_signal(sig)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    err = [line for line in seen + rest.splitlines() if line.strip()]
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in rest and "Segmentation" not in rest
    final = [line for line in err if line.startswith(("stopped:", "error:"))]
    assert len(final) == 1 and f"during start-up ({phase})" in final[0] and "nothing was written" in final[0], err
    assert not out.exists() or not any(out.iterdir())  # no half-written output folder


def test_sigterm_during_training_checkpoints_within_a_step(small_cifar_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(small_cifar_dir, out, "--num-steps", "100000", "--eval-every", "5")
    try:
        wait_for_file(proc, out / "results.json", timeout=180)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
        latency = time.perf_counter() - t0
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "checkpoint of step" in stopped[0] and "Traceback" not in err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted"
    assert latency < 30, latency  # one tiny outer step plus a checkpoint write, with a wide margin


def test_every_interruption_leaves_a_run_that_resumes_to_the_straight_one(small_cifar_dir, tmp_path):
    """Ctrl-C twice (before the first checkpoint), SIGKILL as the first checkpoint is being written,
    SIGTERM after a later one, SIGKILL again a moment after a resume; each time the same command is
    run again, and the run ends with the curves and best step of a run that was never interrupted.
    (Checkpoints and results.json are written atomically: a temporary renamed into place.)"""
    from conftest import TINY_RUN
    from pfedhn_jax.config import Config
    from pfedhn_jax.loop import train

    sched = dict(num_steps=10, eval_every=2, checkpoint_every=2)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--data-dir", str(small_cifar_dir), "--out", str(out),
           *tiny_flags(**sched), "--no-progress"]
    ckpts = out / "checkpoints"
    finished = lambda: sorted(int(c.name) for c in ckpts.iterdir() if c.name.isdigit()) if ckpts.is_dir() else []

    def interrupt(when, *signals, pause=0.0):
        """Run the command, send `signals` once `when()` holds (polled every 2 ms); the exit status."""
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            deadline = time.time() + 120
            while not when():
                assert proc.poll() is None, f"the run ended before the moment to interrupt it: {proc.stderr.read()}"
                assert time.time() < deadline
                time.sleep(0.002)
            time.sleep(pause)
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.01)
            err = proc.communicate(timeout=120)[1]
        finally:
            proc.kill()
        assert "Traceback" not in err, err
        return proc.returncode, err

    rc, err = interrupt(lambda: (out / "results.json").is_file(), signal.SIGINT, signal.SIGINT)
    assert rc == 130, err
    rc, _ = interrupt(lambda: ckpts.is_dir() and any(ckpts.iterdir()), signal.SIGKILL)
    assert rc == -signal.SIGKILL
    rc, err = interrupt(lambda: any(s >= 4 for s in finished()), signal.SIGTERM)
    assert rc == 143 and "checkpoint of step" in err, err
    before = (out / "results.json").stat().st_mtime_ns
    rc, _ = interrupt(lambda: (out / "results.json").stat().st_mtime_ns != before, signal.SIGKILL)  # resumed, trains
    assert rc == -signal.SIGKILL
    final = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert final.returncode == 0 and "resuming the run in" in final.stderr, final.stderr
    got = json.loads((out / "results.json").read_text())

    straight = train(Config(**{**TINY_RUN, **sched, "data_dir": str(small_cifar_dir), "out": str(tmp_path / "s")}),
                     progress=False)
    drop = lambda res: [{k: v for k, v in p.items() if k != "wall_s"} for p in res["curves"]]
    assert got["status"] == "finished" and drop(got) == drop(straight)
    assert got["best"] == json.loads(json.dumps(straight["best"]))
