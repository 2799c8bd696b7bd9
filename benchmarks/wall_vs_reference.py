"""Whole-process wall time of a training run: the reference trainer against `scripts/train.py`,
same dataset, N, outer steps and evaluation cadence, back to back on the same machine.

    python benchmarks/wall_vs_reference.py --num-steps 300 --repeats 2 \\
        --official-dir /work/official --torch-python /work/torchenv/bin/python

Each repeat runs both sides as fresh processes (ours without a compilation cache: start-up,
data, compilation, training and evaluation all count), in alternating order. The reference is
the unchanged official trainer through the tool `run_official.py`, with torch's default thread
count (all cores) unless --torch-threads. Prints each wall time, the medians and
reference ÷ ours (> 1: ours is faster); writes JSON. Numbers: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.reference_parity import MODULES, reference_command  # noqa: E402


def parse_args(argv=None):
    p = common.base_parser("wall_vs_reference", __doc__)
    p.set_defaults(repeats=1, warmup=0)
    p.add_argument("--data", default=str(Path(common.DEFAULT_DATA_DIR) / "cifar10.npz"),
                   help="the dataset npz (CIFAR-10 layout; both sides read it)")
    p.add_argument("--algo", default="pfedhn", choices=sorted(MODULES))
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--num-steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--official-dir", default="../official", help="a checkout of AvivSham/pFedHN")
    p.add_argument("--official-tool", default="../shared/tools/run_official.py")
    p.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", "python3"))
    p.add_argument("--torch-threads", type=int, default=None, help="OMP_NUM_THREADS for the reference (default: torch's)")
    p.add_argument("--ours-flags", default="", help="extra flags for scripts/train.py, e.g. '--conv-impl im2col'")
    return p.parse_args(argv)


def timed(cmd: list[str], env: dict, log: Path) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{cmd[1]} failed (exit {rc}); its log ends:\n{log.read_text()[-2000:]}")
    return wall


def main(argv=None) -> None:
    args = parse_args(argv)
    env = common.environment()
    common.print_env(env)
    data = Path(args.data).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.repeats):
            sides = ["reference", "ours"] if r % 2 == 0 else ["ours", "reference"]
            for side in sides:
                out = tmp / f"{side}-{r}"
                out.mkdir()
                if side == "reference":
                    cmd = reference_command(args, args.algo, out)
                    e = dict(os.environ)
                    if args.torch_threads:
                        e["OMP_NUM_THREADS"] = str(args.torch_threads)
                else:
                    cmd = [sys.executable, str(common.REPO / "scripts" / "train.py"), "--data-dir", str(data.parent),
                           "--out", str(out / "run"), "--algo", args.algo, "--num-clients", str(args.num_clients),
                           "--num-steps", str(args.num_steps), "--eval-every", str(args.eval_every),
                           "--seed", str(args.seed), "--no-progress", *args.ours_flags.split()]
                    e = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
                wall = timed(cmd, e, out / "log.txt")
                rows.append({"side": side, "repeat": r, "wall_s": wall, "command": " ".join(cmd)})
                print(f"repeat {r}, {side}: {wall:.1f} s", flush=True)
    med = {s: statistics.median(x["wall_s"] for x in rows if x["side"] == s) for s in ("reference", "ours")}
    ratio = med["reference"] / med["ours"]
    print(f"median wall: reference {med['reference']:.1f} s, ours {med['ours']:.1f} s; "
          f"reference / ours = {ratio:.3f} ({'ours faster' if ratio > 1 else 'ours slower'})")
    common.write_json(args.out, {"cmdline": common.cmdline(), "environment": env, "note": args.note,
                                 "settings": vars(args), "rows": rows, "median_wall_s": med,
                                 "reference_over_ours": ratio})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
