"""Accuracy under each matmul precision: the same runs at float32 and at TF32 (JAX's GPU default).

For each algorithm, the seeds are trained as one group (`loop.train_seeds`) once per
--matmul-precision. Same seed, same split, initial weights, client order and batch draws: only
the arithmetic of the matmuls and convolutions differs, so the curves pair up evaluation by
evaluation. Printed and written (JSON, PNG): per algorithm and precision the test accuracy at the
best validation step, mean ± std over the seeds; per other precision the paired difference
against the first one (mean and sd over every seed's evaluations, and of the best-val test).

    python benchmarks/precision_accuracy.py                      # on a GPU: float32 vs default (TF32)
    python benchmarks/precision_accuracy.py --num-steps 5000     # the paper's schedule

On CPU every precision computes the same numbers (XLA:CPU multiplies in float32 whatever the
precision; tests/test_group.py), so the differences there are exactly 0: a check of this script.
This decides `--matmul-precision`'s default off CPU (docs/reference.md §9).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = common.base_parser("precision_accuracy", __doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--algos", default="pfedhn,pfedhn-pc", help="comma list of pfedhn, pfedhn-pc")
    p.add_argument("--seeds", default="42,27,13", help="comma list; trained as one group per precision")
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--num-steps", type=int, default=1500, help="outer steps (the paper's schedule: 5000)")
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--inner-steps", type=int, default=50)
    common.add_matmul_precision(p, many=True)
    p.set_defaults(matmul_precision=["float32", "default"])
    return p.parse_args(argv)


def curves(group: dict) -> list[dict]:
    """Per run: its evaluation steps, val and test accuracy, and the test accuracy at the best val step."""
    return [{"seed": r["config"]["seed"], "steps": [c["step"] for c in r["curves"]],
             "val_acc": [c["val_acc"] for c in r["curves"]], "test_acc": [c["test_acc"] for c in r["curves"]],
             "best_test_acc": r["best"]["test_acc"], "best_step": r["best"]["best_step"]} for r in group["runs"]]


def paired(base: list[dict], other: list[dict]) -> dict:
    """other - base, run by run (same seeds): every evaluation's test accuracy, and the best-val test."""
    diffs = [o - b for rb, ro in zip(base, other) for b, o in zip(rb["test_acc"], ro["test_acc"])]
    best = [ro["best_test_acc"] - rb["best_test_acc"] for rb, ro in zip(base, other)]
    return {"test_acc_mean_diff": statistics.fmean(diffs), "test_acc_sd_diff": statistics.pstdev(diffs),
            "evaluations": len(diffs), "best_test_acc_diffs": best, "best_test_acc_mean_diff": statistics.fmean(best)}


def plot(record: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algos = record["algos"]
    fig, axes = plt.subplots(1, len(algos), figsize=(6 * len(algos), 4), squeeze=False)
    for ax, (algo, by_precision) in zip(axes[0], algos.items()):
        for precision, e in by_precision.items():
            runs = e["runs"]
            mean = [statistics.fmean(r["test_acc"][i] for r in runs) for i in range(len(runs[0]["steps"]))]
            ax.plot(runs[0]["steps"], mean, label=f"{precision}: {e['best_mean']:.4f} ± {e['best_std']:.4f}")
        ax.set(title=f"{algo}: test accuracy, mean of {len(runs)} seeds", xlabel="outer step", ylabel="pooled accuracy")
        ax.legend(title="best-val test")
    s = record["settings"]
    fig.suptitle(f"{record['label']}, N={s['num_clients']}, {s['num_steps']} steps, {record['device_kind']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    from pfedhn_jax.config import Config
    from pfedhn_jax.loop import train_seeds

    env = common.environment(jax_info=True)
    common.print_env(env)
    seeds, algos = common.parse_ints(args.seeds), common.parse_strs(args.algos)
    record = {"benchmark": "precision_accuracy", "command": common.cmdline(), "environment": env, "note": args.note,
              "settings": {**vars(args), "seeds": seeds, "algos": algos}, "device_kind": jax.devices()[0].device_kind,
              "algos": {}}
    rows = []
    for algo in algos:
        by_precision = record["algos"].setdefault(algo, {})
        for precision in args.matmul_precision:
            cfg = Config(data_dir=args.data_dir, algo=algo, num_clients=args.num_clients, num_steps=args.num_steps,
                         eval_every=args.eval_every, inner_steps=args.inner_steps, matmul_precision=precision)
            t0 = time.perf_counter()
            group = train_seeds(cfg, seeds, progress=False)
            runs = curves(group)
            best = [r["best_test_acc"] for r in runs]
            record["label"] = group["runs"][0]["data"]["label"]
            e = by_precision[precision] = {"runs": runs, "wall_s": time.perf_counter() - t0,
                                           "best_mean": statistics.fmean(best),
                                           "best_std": statistics.stdev(best) if len(best) > 1 else 0.0}
            first = next(iter(by_precision.values()))
            if e is not first:
                e["vs_" + args.matmul_precision[0]] = paired(first["runs"], runs)
            rows.append({"algo": algo, "precision": precision, "best_test_mean": e["best_mean"],
                         "best_test_std": e["best_std"], "wall_s": e["wall_s"],
                         "mean_diff_vs_first": e.get("vs_" + args.matmul_precision[0], {}).get("test_acc_mean_diff"),
                         "sd_diff_vs_first": e.get("vs_" + args.matmul_precision[0], {}).get("test_acc_sd_diff")})
            print(common.table(rows[-1:]), flush=True)
            common.write_json(args.out, record)  # partial results survive a timeout
    print(common.table(rows, title=f"\n{record['label']}, N={args.num_clients}, {args.num_steps} steps, seeds "
                                   f"{seeds}, {record['device_kind']}: test accuracy at the best val step; paired "
                                   f"differences against {args.matmul_precision[0]} over every evaluation"))
    png = Path(args.out).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(record, png)
    print(f"wrote {png}")
    common.finish(args.out, record)
    return record


if __name__ == "__main__":
    main()
