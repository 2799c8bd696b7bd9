"""Round speed of every algorithm beside pFedHN's outer step, on the training loop's own program.

For each --algos entry: the program `scripts/train.py` would run for one run (the plain step,
`pfedhn_jax.programs.GroupPrograms`), compiled ahead of time (reported apart), then one round
timed (median of --repeats after --warmup) and one evaluation of every client (val + test).
All algorithms use the same data, split, target and C clients per round (--clients-per-step),
interleaved in one process, so the ratios compare like with like.

  round_s           = median wall time of one round (C clients x --inner-steps local iterations)
  client_iters_per_s = C x inner_steps / round_s   (one "iteration" is the algorithm's own local
                      step: K gradients for pFedMe, 2 for Per-FedAvg, 3 batches for its HF variant)
  x_pfedhn          = pfedhn's round_s / this algorithm's round_s (> 1: faster than pFedHN's step)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = common.base_parser("algorithm_rounds", __doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--algos", default="pfedhn,pfedhn-pc,local,fedavg,fedper,lg-fedavg,pfedme,per-fedavg,per-fedavg-hf",
                   help="comma list of --algo names (pfedhn first: the ratios are against it)")
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--clients-per-step", type=int, default=1)
    p.add_argument("--inner-steps", type=int, default=50)
    common.add_matmul_precision(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pfedhn_jax.builders import load_group_data
    from pfedhn_jax.config import Config
    from pfedhn_jax.programs import GroupPrograms

    env = common.environment(jax_info=True)
    common.print_env(env)
    record = {"benchmark": "algorithm_rounds", "command": common.cmdline(), "environment": env, "note": args.note,
              "settings": vars(args), "rows": []}
    columns = ["algo", "compile_s", "round_s", "client_iters_per_s", "x_pfedhn", "eval_s"]
    data = None
    base = None
    for algo in common.parse_strs(args.algos):
        cfg = Config(data_dir=args.data_dir, algo=algo, num_clients=args.num_clients, inner_steps=args.inner_steps,
                     clients_per_step=args.clients_per_step, matmul_precision=args.matmul_precision).validate()
        if data is None:  # one split for every algorithm (the algorithm does not enter the data)
            data = load_group_data(cfg, [cfg.seed])[0]
        compile_s, stats, evals = common.time_programs(GroupPrograms(cfg, data, 1), [cfg.seed], args.repeats,
                                                       args.warmup, max(1, args.repeats // 2), 1)
        base = base or stats["median_s"]
        row = {"algo": algo, "compile_s": compile_s, "round_s": stats["median_s"],
               "client_iters_per_s": args.clients_per_step * args.inner_steps / stats["median_s"],
               "x_pfedhn": base / stats["median_s"], "eval_s": evals["median_s"], "timing": stats,
               "eval_timing": evals}
        common.add_row(args.out, record, row, columns)
    common.finish(args.out, record)
    return record


if __name__ == "__main__":
    main()
