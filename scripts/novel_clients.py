#!/usr/bin/env python
"""Generalisation to novel clients (pFedHN paper Sec. 5.3): gap vs. label shift, pFedHN vs. FedAvg + fine-tuning.

    python scripts/novel_clients.py --data-dir ../shared/data --out runs/novel

1. Dirichlet split: --num-clients training clients with --alpha-train, --num-novel novel clients,
   each with an α from --novel-alphas (repeated in order); no sample in two clients.
2. pFedHN (reference defaults, docs/reference.md §3) trained for --steps outer steps on the
   training clients; then, φ frozen, one new embedding per novel client fitted for --fit-steps steps.
3. Baseline: FedAvg over the training clients (--fedavg-rounds rounds of --fedavg-clients clients,
   the same local SGD as pFedHN's clients), then the global model fine-tuned on every client
   (training and novel) for --fit-steps steps of the same batch size.
4. <out>/novel.json (per novel client: α, TV distance, accuracy, gap, baseline accuracy and gap) and
   <out>/gap_vs_tv.png. Definitions: docs/novel_clients.md. Bad flags exit 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pfedhn_jax.cli import OneLineParser, comma_list

DATASETS = ("cifar10", "cifar100")


def _floats(text: str) -> list[float]:
    vals = comma_list(float)(text)
    if not vals or not all(v > 0 and v < float("inf") for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive concentrations, got '{text}'")
    return vals


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--dataset", default="cifar10", choices=DATASETS, help="dataset (default: cifar10)")
    a("--data-dir", default=None, help="folder holding <dataset>.npz (default: $PFEDHN_DATA_DIR)")
    a("--num-clients", type=int, default=50, help="training clients N (default: 50)")
    a("--num-novel", type=int, default=10, help="novel clients M (default: 10)")
    a("--alpha-train", type=float, default=0.1, help="Dirichlet α of every training client (default: 0.1)")
    a("--novel-alphas", type=_floats, default=[0.1, 0.3, 1.0, 3.0, 10.0], metavar="A1,A2,...",
      help="α sweep of the novel clients, repeated in order over them (default: 0.1,0.3,1,3,10)")
    a("--val-size", type=int, default=0, help="validation images carved out of the training set (default: 0)")
    a("--steps", type=int, default=5000, help="pFedHN outer steps (default: 5000, the reference's)")
    a("--inner-steps", type=int, default=50, help="local SGD steps per client per round (default: 50)")
    a("--batch-size", type=int, default=64, help="batch size of every local, fitting and fine-tuning step (default: 64)")
    a("--fit-steps", type=int, default=100,
      help="steps of novel-embedding fitting, and of fine-tuning for the baseline (default: 100)")
    a("--fit-lr", type=float, default=0.05, help="learning rate of the embedding fit (default: 0.05)")
    a("--fit-optimizer", default="adam", choices=("adam", "sgd"), help="embedding optimizer (default: adam)")
    a("--fit-init", default="mean", choices=("mean", "normal"),
      help="initial novel embedding: mean of the trained ones, or N(0,1) (default: mean)")
    a("--compare-init", action="store_true",
      help="also fit from the other --fit-init and record that accuracy (acc_other_init) for comparison")
    a("--fedavg-clients", type=int, default=10, help="FedAvg clients per round (default: 10)")
    a("--fedavg-rounds", type=int, default=None,
      help="FedAvg rounds (default: steps / fedavg-clients, the same number of local updates as pFedHN)")
    a("--finetune-lr", type=float, default=None, help="baseline fine-tuning SGD lr (default: the local lr, 5e-3)")
    a("--strategy", default="vmap", choices=("vmap", "map", "loop", "auto"),
      help="how the baseline's clients run: vmap (default), lax.map or a loop (same numbers; map is faster "
           "on CPU); the embedding fit is always vmapped")
    a("--n-kernels", type=int, default=16, help="target CNN width: conv channels n, 2n (default: 16, the paper's)")
    a("--hyper-hid", type=int, default=100, help="hypernetwork hidden width (default: 100)")
    a("--n-hidden", type=int, default=3, help="hypernetwork hidden layers (default: 3)")
    a("--seed", type=int, default=42, help="seed of the split, the initialisations and every draw (default: 42)")
    a("--out", required=True, help="output folder (created; novel.json and gap_vs_tv.png are overwritten)")
    return p


def check(args: argparse.Namespace) -> None:
    """Exit 2 with one line on the first bad value (before any heavy import)."""
    def bad(flag: str, msg: str):
        print(f"error: --{flag}: {msg}", file=sys.stderr)
        sys.exit(2)
    for flag in ("num_clients", "num_novel", "steps", "inner_steps", "batch_size", "fit_steps", "fedavg_clients",
                 "n_kernels", "hyper_hid", "n_hidden"):
        if getattr(args, flag) < 1:
            bad(flag.replace("_", "-"), f"must be a positive integer, got {getattr(args, flag)}")
    if args.fedavg_rounds is not None and args.fedavg_rounds < 1:
        bad("fedavg-rounds", f"must be a positive integer, got {args.fedavg_rounds}")
    for flag in ("alpha_train", "fit_lr", "finetune_lr"):
        v = getattr(args, flag)
        if v is not None and not (v > 0 and v < float("inf")):
            bad(flag.replace("_", "-"), f"must be positive, got {v}")
    if args.fedavg_clients > args.num_clients:
        bad("fedavg-clients", f"{args.fedavg_clients} exceeds --num-clients {args.num_clients}")
    if args.val_size < 0:
        bad("val-size", f"must be >= 0, got {args.val_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        bad("out", f"{out} exists and is not a folder")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plot(rows: list[dict], train_tv: list[float], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    tv = [r["tv"] for r in rows]
    ax.scatter(tv, [100 * r["gap"] for r in rows], label="pFedHN (new embedding, φ frozen)", marker="o")
    ax.scatter(tv, [100 * r["baseline_gap"] for r in rows], label="FedAvg + fine-tuning", marker="s")
    for r in rows:
        ax.annotate(f"α={r['alpha']:g}", (r["tv"], 100 * r["gap"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(0, color="gray", lw=0.8, ls=":")
    lo, hi = min(train_tv), max(train_tv)
    ax.axvspan(lo, hi, color="gray", alpha=0.12, label="TV range of the training clients")
    ax.set(xlabel="TV distance to the training clients' pooled label distribution",
           ylabel="generalisation gap (accuracy points)", title="novel clients")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check(args)
    import dataclasses

    from pfedhn_jax import results
    from pfedhn_jax.errors import UserError
    from pfedhn_jax.novel_experiment import NovelExperiment, run
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(NovelExperiment)}
    exp = NovelExperiment(**{**settings, "novel_alphas": tuple(args.novel_alphas)})
    try:
        res = run(exp, log)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, label, rounds = res["novel"], res["label"], res["fedavg_rounds"]
    train_tv = [res["train_clients"]["tv_min"], res["train_clients"]["tv_max"]]
    train_sum = res["train_clients"]
    results.write_json(out / "novel.json", res)
    title = (f"{label}, N={args.num_clients} (α={args.alpha_train:g}) + {args.num_novel} novel; pFedHN "
             f"{args.steps} steps, FedAvg {rounds}x{args.fedavg_clients}; fit/fine-tune {args.fit_steps} steps; "
             f"seed {args.seed}")
    plot(rows, train_tv, out / "gap_vs_tv.png", title)
    print(f"{'alpha':>6} {'TV':>6} {'pFedHN acc':>10} {'gap':>7} {'FedAvg+FT acc':>13} {'gap':>7}")
    for r in sorted(rows, key=lambda r: r["tv"]):
        print(f"{r['alpha']:6g} {r['tv']:6.3f} {r['acc']:10.4f} {r['gap']:+7.4f} {r['baseline_acc']:13.4f} "
              f"{r['baseline_gap']:+7.4f}")
    print(f"training clients pooled test acc: pFedHN {train_sum['pooled_test_acc']:.4f}, FedAvg+FT "
          f"{res['train_clients']['baseline_pooled_test_acc']:.4f}; wrote {out / 'novel.json'}, "
          f"{out / 'gap_vs_tv.png'} ({res['timing_s']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
