"""Stop requests: SIGINT / SIGTERM become a flag the training loop checks at safe points.

A first signal asks the run to stop after the current outer step (with a checkpoint) or, during
start-up, right after the current phase (nothing written); a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from pfedhn_jax.distributed import num_processes
from pfedhn_jax.errors import Interrupted


def log(msg: str) -> None:
    """Start-up and status lines go to stderr (stdout carries the final summary)."""
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_requests():
    """Turn SIGINT / SIGTERM into a request to stop at the next safe point (main thread only).

    Yields a dict whose 'signal' is set to the signal's name once one arrives; a second SIGINT
    interrupts at once (KeyboardInterrupt).
    """
    request: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name
        again = " (press Ctrl-C again to abort at once; rerunning resumes)" if signum == signal.SIGINT else ""
        log(f"\n{request['signal']} received: stopping at the next safe point{again}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_now(stop: dict) -> bool:
    """Whether a stop was requested. In a multi-process job the processes agree: each call shares
    every process's request (one small all-gather), so all stop at the same point and save one
    checkpoint together, even when a signal reached only some of them. Every process must call it
    at the same points (the loop calls it once per outer step)."""
    if num_processes() == 1:
        return stop["signal"] is not None
    import numpy as np
    from jax.experimental import multihost_utils
    mine = signal.Signals[stop["signal"]].value if stop["signal"] else 0
    code = int(np.max(multihost_utils.process_allgather(np.int32(mine))))
    if code and stop["signal"] is None:
        stop["signal"] = signal.Signals(code).name
        log(f"\n{stop['signal']} received by another process: stopping at the next safe point")
    return code != 0


def check_start(stop: dict, phase: str) -> None:
    """Before training starts nothing needs saving: a stop request ends the run here."""
    if stop_now(stop):
        raise Interrupted(stop["signal"], f"interrupted by {stop['signal']} during start-up ({phase}); "
                                          "nothing was written")
