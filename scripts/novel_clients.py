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
import time
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
    a("--seed", type=int, default=42, help="seed of the split, the initialisations and every draw (default: 42)")
    a("--out", required=True, help="output folder (created; novel.json and gap_vs_tv.png are overwritten)")
    return p


def check(args: argparse.Namespace) -> None:
    """Exit 2 with one line on the first bad value (before any heavy import)."""
    def bad(flag: str, msg: str):
        print(f"error: --{flag}: {msg}", file=sys.stderr)
        sys.exit(2)
    for flag in ("num_clients", "num_novel", "steps", "inner_steps", "batch_size", "fit_steps", "fedavg_clients"):
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
    from pfedhn_jax.errors import UserError
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pfedhn_jax import novel, results
    from pfedhn_jax.builders import build_algorithm, compiler_options
    from pfedhn_jax.config import Config
    from pfedhn_jax.data.federated import ClientIndex, to_device
    from pfedhn_jax.data.registry import spec
    from pfedhn_jax.data.sources import DATASETS as INFOS, load_raw
    from pfedhn_jax.errors import UserError
    from pfedhn_jax.evaluate import summarize

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(dataset=args.dataset, data_dir=args.data_dir, num_clients=args.num_clients, num_steps=args.steps,
                 inner_steps=args.inner_steps, batch_size=args.batch_size, seed=args.seed).validate()
    info = INFOS[args.dataset]

    log(f"loading {args.dataset} ...")
    raw = load_raw(args.dataset, args.data_dir)
    label = spec(args.dataset).display_name(raw.sha256)
    alphas = novel.novel_alphas(args.novel_alphas, args.num_novel)
    try:
        split = novel.make_novel_split(raw.y_train, raw.y_test, info.n_classes, args.num_clients, args.alpha_train,
                                       alphas, args.seed, args.val_size)
    except ValueError as e:
        raise UserError(f"--num-clients / --novel-alphas: {e}") from e
    data = to_device(raw, info, split.train, args.batch_size)       # the N training clients
    alld = novel.with_clients(data, split.combined(), args.batch_size)  # all N + M (training first), images shared
    n, m = args.num_clients, args.num_novel
    novel_train = ClientIndex(alld.train.index[n:], alld.train.count[n:])
    y_all = np.concatenate([raw.y_train, raw.y_test])
    pooled = novel.pooled_distribution([y_all[ix] for ix in split.train.train], info.n_classes)
    train_dists = [novel.label_distribution(y_all[ix], info.n_classes) for ix in split.train.train]
    train_tv = [novel.tv_distance(d, pooled) for d in train_dists]
    n_tr = [len(ix) for ix in split.train.train]
    log(f"{label}: {n} training clients (α={args.alpha_train:g}, {min(n_tr)}-{max(n_tr)} training "
        f"samples each), {m} novel clients (α={','.join(f'{a:g}' for a in alphas)})")

    alg = build_algorithm(cfg)
    opts = compiler_options()
    key = jax.random.key(args.seed)
    k_hn, k_fit, k_fa_init, k_fedavg, k_ft = jax.random.split(key, 5)
    # Every evaluation runs on all N + M clients at once (one compiled program); metrics are split after.
    evaluate_all = lambda params: jax.device_get(novel.evaluate(alg.target.apply, params, alld, alld.test))
    part = lambda met, sl: jax.tree.map(lambda a: a[sl], met)
    cat = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)

    # ---- pFedHN
    log(f"training pFedHN: {args.steps} outer steps x {args.inner_steps} local steps ...")
    t0 = time.perf_counter()
    state = novel.train_pfedhn(alg, data, k_hn, args.steps, compiler_options=opts, log_every=max(1, args.steps // 10),
                               log=lambda s, l: log(f"  pFedHN step {s}/{args.steps}: local loss {l:.3f} "
                                                    f"({time.perf_counter() - t0:.0f} s)"))
    t_pfedhn = time.perf_counter() - t0
    log(f"fitting {m} novel embeddings: {args.fit_steps} steps, {args.fit_optimizer} lr {args.fit_lr:g}, "
        f"init {args.fit_init} ...")
    t0 = time.perf_counter()
    hparams = state.server.params
    fit = novel.fit_novel_embeddings(alg, hparams, alld, novel_train, k_fit, steps=args.fit_steps, lr=args.fit_lr,
                                     optimizer=args.fit_optimizer, init=args.fit_init)
    jax.block_until_ready(fit)
    t_fit = time.perf_counter() - t0
    train_theta = alg.personal_params(state, jnp.arange(n))
    met = evaluate_all(cat(train_theta, novel.novel_params(alg, hparams, fit.embeddings)))
    met_init = evaluate_all(cat(train_theta, novel.novel_params(alg, hparams, fit.init)))
    train_m, novel_m, init_m = part(met, slice(0, n)), part(met, slice(n, None)), part(met_init, slice(n, None))
    train_sum = summarize(train_m)
    gap = novel.generalization_gap(novel_m, train_m)
    fit_loss = np.asarray(fit.loss)
    log(f"  training clients: pooled test accuracy {train_sum['acc']:.4f}; novel fit loss {fit_loss[0].mean():.3f} "
        f"-> {fit_loss[-1].mean():.3f}, novel accuracy {summarize(novel_m)['acc']:.4f} ({t_fit:.0f} s)")
    other_m = None
    if args.compare_init:   # the same program (same keys and batches), started from the other init
        other = {"mean": "normal", "normal": "mean"}[args.fit_init]
        fit_o = novel.fit_novel_embeddings(alg, hparams, alld, novel_train, k_fit, steps=args.fit_steps,
                                           lr=args.fit_lr, optimizer=args.fit_optimizer, init=other)
        other_m = part(evaluate_all(cat(train_theta, novel.novel_params(alg, hparams, fit_o.embeddings))),
                       slice(n, None))
        log(f"  fitted from init {other} instead: novel accuracy {summarize(other_m)['acc']:.4f}")

    # ---- FedAvg + fine-tuning
    rounds = args.fedavg_rounds if args.fedavg_rounds is not None else max(1, args.steps // args.fedavg_clients)
    local = novel.LocalSGD.of(alg)
    ft_local = local if args.finetune_lr is None else novel.LocalSGD(args.finetune_lr, local.momentum,
                                                                    local.weight_decay, local.clip)
    log(f"training FedAvg: {rounds} rounds x {args.fedavg_clients} clients x {args.inner_steps} local steps ...")
    t0 = time.perf_counter()
    # (the initial weights eagerly: compiling a random init costs more than running it op by op)
    fa = novel.fedavg_train(alg.target, alg.target.init(k_fa_init), data, k_fedavg, rounds,
                            args.fedavg_clients, args.inner_steps, args.batch_size, local, args.strategy)
    jax.block_until_ready(fa.params)
    t_fedavg = time.perf_counter() - t0
    log(f"  FedAvg done ({t_fedavg:.0f} s); fine-tuning on each of the {n} training + {m} novel clients for "
        f"{args.fit_steps} steps ...")
    t0 = time.perf_counter()
    fa_global = evaluate_all(novel.broadcast_clients(fa.params, n + m))
    fa_met = evaluate_all(novel.finetune(alg.target, fa.params, alld, alld.train, k_ft, args.fit_steps,
                                         args.batch_size, ft_local, args.strategy))
    t_ft = time.perf_counter() - t0
    fa_train, fa_novel = part(fa_met, slice(0, n)), part(fa_met, slice(n, None))
    fa_train_g, fa_novel_g = part(fa_global, slice(0, n)), part(fa_global, slice(n, None))
    base_gap = novel.generalization_gap(fa_novel, fa_train)
    log(f"  FedAvg + fine-tuning: training clients {summarize(fa_train)['acc']:.4f}, novel "
        f"{summarize(fa_novel)['acc']:.4f} ({t_ft:.0f} s)")

    # ---- results
    acc = lambda m: (np.asarray(m.correct) / np.maximum(np.asarray(m.total), 1)).tolist()
    rows = []
    for j, ix in enumerate(split.novel.train):
        d = novel.label_distribution(y_all[ix], info.n_classes)
        rows.append({
            "client": j, "alpha": float(alphas[j]), "tv": novel.tv_distance(d, pooled),
            "tv_nearest_train_client": min(novel.tv_distance(d, t) for t in train_dists),
            "n_train": len(ix), "n_test": len(split.novel.test[j]), "label_distribution": d.tolist(),
            "acc": acc(novel_m)[j], "acc_at_init": acc(init_m)[j], "gap": float(gap[j]),
            "baseline_acc": acc(fa_novel)[j], "baseline_acc_global": acc(fa_novel_g)[j],
            "baseline_gap": float(base_gap[j]),
            "fit_loss_first": float(fit_loss[0, j]), "fit_loss_last": float(fit_loss[-1, j]),
        } | ({"acc_other_init": acc(other_m)[j]} if other_m is not None else {}))
    by_alpha = {}
    for a in sorted(set(float(x) for x in alphas)):
        sel = [r for r in rows if r["alpha"] == a]
        keys = ("tv", "tv_nearest_train_client", "acc", "acc_at_init", "gap", "baseline_acc", "baseline_gap") + \
            (("acc_other_init",) if other_m is not None else ())
        by_alpha[f"{a:g}"] = {k: float(np.mean([r[k] for r in sel])) for k in keys} | {"clients": len(sel)}
    res = {
        "dataset": args.dataset, "label": label, "source": raw.source, "sha256": raw.sha256,
        "args": {k: v for k, v in vars(args).items()}, "fedavg_rounds": rounds,
        "definitions": {
            "tv": "0.5*sum|p-q|, p = the novel client's training-label distribution, q = the pooled "
                  "training-label distribution of all training clients (their label distributions "
                  "averaged with weights = their training-sample counts)",
            "gap": "novel client's test accuracy minus the pooled test accuracy of the training clients "
                   "(total correct / total test samples), each method against its own training clients",
        },
        "train_clients": {"pooled_test_acc": train_sum["acc"], "min": train_sum["min"], "max": train_sum["max"],
                          "tv_mean": float(np.mean(train_tv)), "tv_min": float(np.min(train_tv)),
                          "tv_max": float(np.max(train_tv)), "n_train": n_tr,
                          "baseline_pooled_test_acc": summarize(fa_train)["acc"],
                          "baseline_global_pooled_test_acc": summarize(fa_train_g)["acc"]},
        "pooled_label_distribution": pooled.tolist(),
        "novel": rows, "by_alpha": by_alpha,
        "timing_s": {"pfedhn": t_pfedhn, "fit": t_fit, "fedavg": t_fedavg, "finetune_and_eval": t_ft,
                     "total": time.perf_counter() - t_start},
        "environment": results.environment(),
    }
    results.write_json(out / "novel.json", res)
    title = (f"{label}, N={args.num_clients} (α={args.alpha_train:g}) + {args.num_novel} novel; pFedHN "
             f"{args.steps} steps, FedAvg {rounds}x{args.fedavg_clients}; fit/fine-tune {args.fit_steps} steps; "
             f"seed {args.seed}")
    plot(rows, train_tv, out / "gap_vs_tv.png", title)
    print(f"{'alpha':>6} {'TV':>6} {'pFedHN acc':>10} {'gap':>7} {'FedAvg+FT acc':>13} {'gap':>7}")
    for r in sorted(rows, key=lambda r: r["tv"]):
        print(f"{r['alpha']:6g} {r['tv']:6.3f} {r['acc']:10.4f} {r['gap']:+7.4f} {r['baseline_acc']:13.4f} "
              f"{r['baseline_gap']:+7.4f}")
    print(f"training clients pooled test acc: pFedHN {train_sum['acc']:.4f}, FedAvg+FT "
          f"{res['train_clients']['baseline_pooled_test_acc']:.4f}; wrote {out / 'novel.json'}, "
          f"{out / 'gap_vs_tv.png'} ({res['timing_s']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
