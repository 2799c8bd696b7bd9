"""Runs per program: the outer step of S runs (seeds) in one compiled program, S = 1, 3, 8, 24.

Builds the training loop's own program (`pfedhn_jax.programs.GroupPrograms`: the plain step for S = 1;
for S > 1 a leading run axis, run by run on CPU or vmapped, and a 'runs' device mesh), compiles
it ahead of time (reported apart), then times one outer step of all S runs and one evaluation
(median of --repeats after --warmup).
`--cpu-devices N` splits a CPU into N XLA devices before JAX starts (runs are padded to fill them);
compare `--cpu-devices 1` and `--cpu-devices auto` on the same machine, back to back.

  run-steps/s = S / median time of one outer step of all runs    (x S=1: the gain of batching runs)
  eval_s      = median time of one evaluation of every client of all runs (val + test)
  by_run      = the S runs go one after another (`programs.run_by_run`; the default on CPU) rather
                than under `vmap`; --both times the other way too
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = common.base_parser("runs_per_program", __doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--runs", default="1,3,8,24", help="comma list of runs per program S")
    p.add_argument("--cpu-devices", default="1", help="'auto' or N XLA devices on a CPU (set before JAX starts)")
    p.add_argument("--inner-steps", type=int, default=50)
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--algo", default="pfedhn", choices=("pfedhn", "pfedhn-pc"))
    p.add_argument("--both", action="store_true",
                   help="S > 1: also time the other way to run several runs (run by run / vmapped), same process")
    common.add_matmul_precision(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pfedhn_jax.distributed import set_cpu_devices
    set_cpu_devices(args.cpu_devices)
    import jax
    from pfedhn_jax.builders import load_group_data
    from pfedhn_jax.config import Config
    from pfedhn_jax.programs import GroupPrograms, device_mesh, padded_size

    env = common.environment(jax_info=True)
    common.print_env(env)
    cfg = Config(data_dir=args.data_dir, num_clients=args.num_clients, inner_steps=args.inner_steps, algo=args.algo,
                 matmul_precision=args.matmul_precision).validate()
    record = {"benchmark": "runs_per_program", "command": common.cmdline(), "environment": env, "note": args.note,
              "settings": vars(args), "rows": []}
    base = None
    columns = ["runs", "padded_runs", "devices", "by_run", "compile_s", "step_s", "run_steps_per_s", "x_one_run",
               "local_steps_per_s", "eval_s"]
    for s in common.parse_ints(args.runs):
        padded = padded_size(s, len(jax.devices())) if s > 1 else 1
        seeds = list(range(s)) + [s - 1] * (padded - s)
        data, _, _ = load_group_data(cfg, seeds)
        default = GroupPrograms(cfg, data, padded, device_mesh(padded))
        ways = [default.by_run] + ([not default.by_run] if s > 1 and args.both else [])
        for by_run in ways:  # the GroupPrograms's default way first, then the other one in the same process
            trainer = default if by_run == default.by_run else GroupPrograms(cfg, data, padded, device_mesh(padded),
                                                                       by_run=by_run)
            compile_s, stats, evals = common.time_programs(trainer, seeds, args.repeats, args.warmup)
            rate = s / stats["median_s"]
            base = base or rate
            row = {"runs": s, "padded_runs": padded, "devices": len(jax.devices()), "by_run": trainer.by_run,
                   "compile_s": compile_s, "step_s": stats["median_s"], "run_steps_per_s": rate, "x_one_run": rate / base,
                   "local_steps_per_s": rate * args.inner_steps, "eval_s": evals["median_s"], "timing": stats,
                   "eval_timing": evals}
            common.add_row(args.out, record, row, columns)
    common.finish(args.out, record)
    return record


if __name__ == "__main__":
    main()
