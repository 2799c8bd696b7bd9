"""Wall time of the paper's CIFAR-10 / 50-client schedule (5000 outer steps, eval every 30), or of a
fraction of it scaled up linearly to the full schedule.

Runs `pfedhn_jax.loop.train(cfg, progress=False)` (data loading, compilation, training and
evaluation of all clients on val + test, as a user's run) with num_steps = fraction * 5000.
The full-schedule estimate is

  setup (data + jit objects) + compile + (train_s / steps) * 5000 + (eval_s / evals) * evals_full

where evals_full is the number of evaluations the full schedule makes (after step 1, 31, ..., and
the last). With --fraction 1 nothing is extrapolated. One run per --repeats (default 1: a run is
long); with several runs the median of each quantity is reported.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

FULL_STEPS = 5000
# docs/reference.md §8: official PyTorch code, CIFAR-10 / 50 clients, 2-core AVX-512/AMX CPU.
REFERENCE_FULL_RUN_S = 50 * 60


def parse_args(argv=None):
    p = common.base_parser("end_to_end", __doc__)
    p.set_defaults(repeats=1, warmup=0)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--fraction", type=float, default=0.02, help="fraction of the 5000-step schedule to run")
    p.add_argument("--full-steps", type=int, default=FULL_STEPS)
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--clients-per-step", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "nhwc_vjp", "im2col"))
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    common.add_matmul_precision(p)
    return p.parse_args(argv)


def one_run(cfg, full_cfg) -> dict:
    from pfedhn_jax.loop import is_eval_step, train

    with common.Timer() as t:
        res = train(cfg, progress=False)
    timing, compile_s = res["timing"], res["compile_s"]
    steps = timing["steps"]
    evals = len(res["curves"])
    evals_full = sum(is_eval_step(s, full_cfg) for s in range(1, full_cfg.num_steps + 1))
    setup_s = t.s - timing["train_s"] - timing["eval_s"] - compile_s
    per_step, per_eval = timing["train_s"] / steps, timing["eval_s"] / max(evals, 1)
    full_train, full_eval = per_step * full_cfg.num_steps, per_eval * evals_full
    return {
        "measured": {"steps": steps, "evals": evals, "wall_s": t.s, "setup_s": setup_s, "compile_s": compile_s,
                     "train_s": timing["train_s"], "eval_s": timing["eval_s"],
                     "outer_steps_per_s": timing["outer_steps_per_s"],
                     "local_steps_per_s": timing["local_steps_per_s"],
                     "s_per_eval": per_eval, "final_test_acc": res["final"]["test"]["acc"]},
        "extrapolated_full": {"steps": full_cfg.num_steps, "evals": evals_full, "setup_s": setup_s,
                              "compile_s": compile_s, "train_s": full_train, "eval_s": full_eval,
                              "wall_s": setup_s + compile_s + full_train + full_eval,
                              "exact": steps == full_cfg.num_steps},
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pfedhn_jax.config import Config

    env = common.environment(jax_info=True)
    common.print_env(env)
    steps = max(1, round(args.fraction * args.full_steps))
    kw = dict(data_dir=args.data_dir, num_clients=args.num_clients, eval_every=args.eval_every,
              clients_per_step=args.clients_per_step, strategy=args.strategy, conv_impl=args.conv_impl,
              compute_dtype=args.compute_dtype, matmul_precision=args.matmul_precision, checkpoint_every=0)
    cfg = Config(num_steps=steps, **kw).validate()
    full_cfg = Config(num_steps=args.full_steps, **kw).validate()
    print(f"running {steps} of {args.full_steps} outer steps (fraction {steps / args.full_steps:g}), "
          f"eval every {args.eval_every}, {args.repeats} run(s)", flush=True)
    runs = []
    record = {"benchmark": "end_to_end", "command": common.cmdline(), "environment": env, "note": args.note,
              "settings": {**kw, "num_steps": steps, "full_steps": args.full_steps}, "runs": runs}
    for _ in range(args.repeats):
        runs.append(one_run(cfg, full_cfg))
        common.write_json(args.out, record)
    med = lambda part, key: statistics.median(r[part][key] for r in runs)
    keys = ("steps", "evals", "setup_s", "compile_s", "train_s", "eval_s", "wall_s")
    rows = [{"what": "MEASURED", **{k: med("measured", k) for k in keys}},
            {"what": "EXTRAPOLATED full" if steps != args.full_steps else "full (measured)",
             **{k: med("extrapolated_full", k) for k in keys}}]
    record["summary"] = {
        "measured": rows[0], "extrapolated_full": rows[1],
        "outer_steps_per_s": med("measured", "outer_steps_per_s"),
        "local_steps_per_s": med("measured", "local_steps_per_s"), "s_per_eval": med("measured", "s_per_eval"),
        "full_wall_min": rows[1]["wall_s"] / 60,
        "speedup_vs_reference_50min": REFERENCE_FULL_RUN_S / rows[1]["wall_s"],
    }
    s = record["summary"]
    print(common.table(rows, ("what",) + keys,
                       title=f"end_to_end ({env['backend']}, {env['device_kind']}): CIFAR-10 (JPEG copy), "
                             f"N={args.num_clients}, C={args.clients_per_step}"))
    print(f"train: {s['outer_steps_per_s']:.3g} outer steps/s = {s['local_steps_per_s']:.4g} local steps/s; "
          f"one evaluation of all clients (val+test): {s['s_per_eval']:.3g} s")
    print(f"full schedule ({args.full_steps} steps): {s['full_wall_min']:.1f} min "
          f"{'(extrapolated linearly from the measured fraction)' if steps != args.full_steps else '(measured)'}; "
          f"reference PyTorch on a 2-core AVX-512 CPU (docs/reference.md §8): ~50 min -> "
          f"x{s['speedup_vs_reference_50min']:.2f} (different CPUs: indicative only)")
    common.finish(args.out, record)
    return record


if __name__ == "__main__":
    main()
