"""Compile time and step time of the default CIFAR-10 step (N=50, K=50) under each XLA:CPU
setting that `xla.compiler_options` chooses between, each in a fresh process (no
compilation cache), settings alternated, and the hypernetwork init program's compile time.

    python benchmarks/compile_options.py --repeats 2

Prints one line per process: the setting, compile s, median step s over --steps steps after one
warm-up step; then the medians per setting. Numbers: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SETTINGS = {"fusion emitters on (XLA default)": True, "fusion emitters off (ours)": False}

CHILD = """
import json, statistics, sys, time
import jax
from pfedhn_jax.builders import build_algorithm, load_data
from pfedhn_jax.xla import compiler_options, init_compiler_options
from pfedhn_jax.config import Config
cfg = Config(num_clients=50, data_dir=sys.argv[1], seed=42)
alg, data = build_algorithm(cfg), load_data(cfg)[0]
emitters = sys.argv[2] == "1"
key = jax.random.key(0)
t = time.perf_counter()
init = jax.jit(alg.init, compiler_options={**init_compiler_options(), "xla_cpu_use_fusion_emitters": emitters})
init = init.lower(key).compile()
init_s = time.perf_counter() - t
state = init(key)
t = time.perf_counter()
step = jax.jit(alg.step, compiler_options={**compiler_options(), "xla_cpu_use_fusion_emitters": emitters})
step = step.lower(data, state).compile()
compile_s = time.perf_counter() - t
state, _ = step(data, state)
jax.block_until_ready(state)
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    state, _ = step(data, state)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
print(json.dumps({"init_compile_s": init_s, "compile_s": compile_s, "step_s": statistics.median(times)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--repeats", type=int, default=2, help="processes per setting (alternated)")
    p.add_argument("--steps", type=int, default=6, help="timed outer steps per process")
    p.add_argument("--out", default=str(common.BENCH_DIR / "out" / "compile_options.json"))
    args = p.parse_args()
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_PLATFORMS": "cpu"}
    rows = []
    for r in range(args.repeats):
        for name, on in SETTINGS.items():
            out = subprocess.run([sys.executable, "-c", CHILD, args.data_dir, "1" if on else "0", str(args.steps)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            row = {"setting": name, "repeat": r, **json.loads(out.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{name}: init compile {row['init_compile_s']:.1f} s, step compile {row['compile_s']:.1f} s, "
                  f"step {row['step_s']:.3f} s", flush=True)
    summary = {name: {k: statistics.median(r[k] for r in rows if r["setting"] == name)
                      for k in ("init_compile_s", "compile_s", "step_s")} for name in SETTINGS}
    for name, s in summary.items():
        print(f"median, {name}: init compile {s['init_compile_s']:.1f} s, step compile {s['compile_s']:.1f} s, "
              f"step {s['step_s']:.3f} s")
    common.write_json(Path(args.out), {"cmdline": common.cmdline(), "environment": common.environment(),
                                       "time_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                                       "rows": rows, "median": summary})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
