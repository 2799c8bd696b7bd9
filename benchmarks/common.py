"""Shared helpers for the benchmark scripts: environment record, timing, tables, JSON.

Every script records the machine and library versions next to its numbers, reports compile time
separately from run time, and times with the median of >= 5 runs after warm-up.
Import-light on purpose: jax and torch are imported only when a record of them is asked for, so
the torch script can run without jax in its process and vice versa.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA_DIR = os.environ.get("PFEDHN_DATA_DIR", str(REPO.parent / "shared" / "data"))
CONTENTION_NOTE = os.environ.get("BENCH_NOTE", "")


def default_out(name: str) -> str:
    return str(BENCH_DIR / "out" / f"{name}.json")


def base_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser with the flags every script shares: --out, --repeats, --warmup, --note."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out(name), help="JSON output path (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the median is reported (>= 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after compilation")
    p.add_argument("--note", default=CONTENTION_NOTE,
                   help="free text stored in the JSON, e.g. 'another training job was running'")
    return p


# ----------------------------------------------------------------------------- environment

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD / matrix extensions that matter for XLA:CPU and oneDNN speed."""
    want = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in want if f in have]
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken: just not recorded
        return None


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pfedhn_jax"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty(pfedhn_jax)" if dirty else "") if head else None
    except Exception:  # noqa: BLE001
        return None


def environment(jax_info: bool = True, torch_info: bool = False) -> dict[str, Any]:
    """Machine, versions and backend. jax/torch are imported only when asked for."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
        "load_average_1_5_15": load_average(), "python": platform.python_version(),
        "platform": platform.platform(), "git": git_commit(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "nice": os.nice(0),
    }
    if jax_info:
        import jax
        env.update(jax=jax.__version__, jaxlib=_version("jaxlib"), optax=_version("optax"),
                   backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
                   device_kind=jax.devices()[0].device_kind)
    if torch_info:
        import torch
        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   torch_cuda=torch.cuda.is_available(),
                   torch_mkldnn=bool(torch.backends.mkldnn.is_available()))
    return env


# ----------------------------------------------------------------------------- timing

def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
                sync: Callable[[Any], Any] = lambda r: r) -> dict[str, Any]:
    """Run `fn` warmup times untimed, then `repeats` times timed; `sync(result)` blocks until done.

    Returns {'median_s', 'min_s', 'max_s', 'times_s', 'cpu_median_s', 'cpu_times_s', 'repeats', 'warmup'};
    cpu_* is this process's CPU time (all threads) per run: under contention from other jobs it is
    a steadier, though not equivalent, figure than wall time.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        sync(fn())
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": times, "cpu_median_s": statistics.median(cpu), "cpu_times_s": cpu,
            "repeats": repeats, "warmup": warmup}


class Timer:
    """with Timer() as t: ...; t.s is the elapsed wall time."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- output

def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "nan"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """A GitHub-markdown table (paste-able into RESULTS.md) of dict rows."""
    if not rows:
        return f"{title or ''}\n(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"
    out = [title] if title else []
    out += [line(columns), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def print_env(env: dict[str, Any]) -> None:
    keys = ("date", "host_cpu", "cpu_count", "cpu_flags", "load_average_1_5_15", "backend", "device_kind",
            "jax", "jaxlib", "optax", "torch", "torch_threads", "git")
    print("  ".join(f"{k}={env[k]}" for k in keys if k in env), flush=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write through the library's one writer (creates the folder); returns the path."""
    from pfedhn_jax.results import write_json as _write
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _write(p, obj)
    return p


def time_programs(programs: Any, seeds: Sequence[int], repeats: int, warmup: int,
                  eval_repeats: int | None = None, eval_warmup: int | None = None) -> tuple[float, dict, dict]:
    """A `GroupPrograms`'s compile seconds, then median_time of its step and of its evaluation
    (every client's val + test), from state initialised at `seeds`."""
    import jax
    holder = [programs.init(list(seeds))]
    with Timer() as t:
        programs.compile(holder[0])

    def run():
        holder[0], metrics = programs.step(holder[0])
        return metrics

    stats = median_time(run, repeats, warmup, sync=jax.block_until_ready)
    evals = median_time(lambda: programs.evaluate_runs(holder[0]), eval_repeats or repeats,
                        warmup if eval_warmup is None else eval_warmup)
    return t.s, stats, evals


def add_row(path: str | os.PathLike, record: dict[str, Any], row: dict[str, Any], columns: Sequence[str]) -> None:
    """Append `row` to record["rows"], print it, and write the record so far (partial results
    survive a timeout)."""
    record["rows"].append(row)
    print(table([row], columns), flush=True)
    write_json(path, record)


def choices_list(choices: tuple[str, ...], many: bool = True):
    """An argparse `type`: a comma list of `choices` (`many`) or exactly one of them, with one clear
    error naming the choices."""
    def parse(text: str):
        values = parse_strs(text)
        if not values or any(v not in choices for v in values) or (len(values) > 1 and not many):
            raise argparse.ArgumentTypeError(f"expected {'a comma list from' if many else 'one of'} "
                                             f"{', '.join(choices)}; got '{text}'")
        return values if many else values[0]
    return parse


def add_matmul_precision(p: argparse.ArgumentParser, many: bool = False) -> None:
    """--matmul-precision, as scripts/train.py's (float32 unless asked; it changes speed and numbers
    only off CPU); `many`: a comma list, parsed to a list."""
    from pfedhn_jax.config import MATMUL_PRECISIONS  # plain Python: JAX is not imported here
    p.add_argument("--matmul-precision", type=choices_list(MATMUL_PRECISIONS, many), default=["float32"] if many else "float32",
                   help="precision of float32 matmuls and convolutions, as scripts/train.py's: "
                        f"{'a comma list from ' if many else ''}float32, tensorfloat32, default (default: float32)")


def parse_ints(s: str) -> list[int]:
    return [int(v) for v in s.replace(" ", "").split(",") if v]


def parse_strs(s: str) -> list[str]:
    return [v for v in s.replace(" ", "").split(",") if v]


def cmdline() -> str:
    return " ".join([Path(sys.executable).name] + sys.argv)


def finish(path: str, record: dict[str, Any]) -> None:
    p = write_json(path, record)
    print(f"wrote {p}", flush=True)


def ensure_repo_on_path() -> None:
    """Let `python benchmarks/x.py` import both `benchmarks.common` siblings and `pfedhn_jax`."""
    for d in (str(REPO), str(BENCH_DIR)):
        if d not in sys.path:
            sys.path.insert(0, d)

