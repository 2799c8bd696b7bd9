#!/usr/bin/env python
"""Heterogeneous targets ("computational budget", paper Sec. 5.2 / Table 2): one hypernetwork, clients
whose CIFAR CNNs have different widths.

    python scripts/hetero.py --data-dir ../shared/data --widths 8,16,32 --out runs/hetero

CIFAR-10 with the reference split (--num-clients, --seed); client i gets the CNN with
n_kernels = widths[assign[i]] (round-robin by default). pFedHN with the reference's defaults
(docs/reference.md §3), one client per outer step. Evaluation (every client, val and test) after
outer steps 1, 1+k, 1+2k, ... (k = --eval-every) and after the last. <out>/results.json holds the
test accuracy per architecture and overall at the step of best pooled validation accuracy (over
all clients), the curves, and the bytes per client per round of each architecture. Design and
results: docs/heterogeneous.md. Bad flags exit 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pfedhn_jax.cli import OneLineParser, comma_list


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data-dir", default=None, help="folder holding cifar10.npz (default: $PFEDHN_DATA_DIR)")
    a("--num-clients", type=int, default=50, help="clients N (default: 50)")
    a("--widths", type=comma_list(int), default=[8, 16, 32], metavar="W1,W2,...",
      help="n_kernels of each architecture (the second conv has twice) (default: 8,16,32)")
    a("--assign", default="round-robin", metavar="round-robin|A1,A2,...",
      help="architecture of each client: round-robin (client i gets i mod #widths), or N comma-separated "
           "indices into --widths (default: round-robin)")
    a("--num-steps", type=int, default=5000, help="outer steps (default: 5000, the reference's)")
    a("--inner-steps", type=int, default=50, help="local SGD steps per client per round (default: 50)")
    a("--eval-every", type=int, default=30, help="evaluate every k outer steps (default: 30)")
    a("--clients-per-step", type=int, default=1, help="clients per outer step (default: 1, the reference's)")
    a("--seed", type=int, default=42, help="seed of the split, the initialisation and every draw (default: 42)")
    a("--out", required=True, help="output folder (created; results.json is overwritten)")
    return p


def check(args: argparse.Namespace) -> list[int] | None:
    """Exit 2 with one line on the first bad value (before any heavy import); returns the assignment."""
    def bad(flag: str, msg: str):
        print(f"error: --{flag}: {msg}", file=sys.stderr)
        sys.exit(2)
    for flag in ("num_clients", "num_steps", "inner_steps", "eval_every", "clients_per_step"):
        if getattr(args, flag) < 1:
            bad(flag.replace("_", "-"), f"must be a positive integer, got {getattr(args, flag)}")
    if not args.widths or any(w < 1 for w in args.widths):
        bad("widths", f"must be positive integers, got {','.join(map(str, args.widths))}")
    if args.clients_per_step > args.num_clients:
        bad("clients-per-step", f"{args.clients_per_step} exceeds --num-clients {args.num_clients}")
    assign = None
    if args.assign != "round-robin":
        try:
            assign = comma_list(int)(args.assign)
        except argparse.ArgumentTypeError as e:
            bad("assign", f"{e}, or round-robin")
        if len(assign) != args.num_clients:
            bad("assign", f"needs {args.num_clients} entries (one per client), got {len(assign)}")
        if not all(0 <= x < len(args.widths) for x in assign):
            bad("assign", f"entries are indices into --widths, in [0, {len(args.widths)})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        bad("out", f"{out} exists and is not a folder")
    return assign


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    assign = check(args)
    from pfedhn_jax.errors import UserError
    try:
        return run(args, assign)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, assign: list[int] | None) -> int:
    t_start = time.perf_counter()
    import jax
    import numpy as np

    from pfedhn_jax import hetero, results
    from pfedhn_jax.builders import compiler_options, load_data, resolve_conv_impl
    from pfedhn_jax.config import Config
    from pfedhn_jax.evaluate import BestTracker
    from pfedhn_jax.targets import cifar_cnn

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(dataset="cifar10", data_dir=args.data_dir, num_clients=args.num_clients, num_steps=args.num_steps,
                 inner_steps=args.inner_steps, eval_every=args.eval_every, clients_per_step=args.clients_per_step,
                 seed=args.seed).validate()
    log("loading cifar10 ...")
    data, _, desc = load_data(cfg)
    targets = tuple(cifar_cnn(10, n_kernels=w, conv_impl=resolve_conv_impl(cfg.conv_impl)) for w in args.widths)
    hn = hetero.HeteroHyperNetwork(targets, cfg.num_clients, tuple(assign or ()), cfg.embed_dim, cfg.hyper_hid,
                                   cfg.n_hidden)
    alg = hetero.HeteroPFedHN(hn, inner_steps=cfg.inner_steps, batch_size=cfg.batch_size, inner_lr=cfg.inner_lr,
                              inner_wd=cfg.inner_wd, optim=cfg.optim, lr=cfg.hyper_lr, embed_lr=cfg.embed_lr,
                              wd=cfg.wd, clients_per_step=cfg.clients_per_step)
    comm = hetero.communication(hn, cfg.clients_per_step)
    for a, w in enumerate(args.widths):
        c = comm["per_arch"][a]
        log(f"  width {w}: {c['clients']} clients, {c['params']:,} params, {c['bytes_down_per_client']:,} bytes down "
            f"(and up) per client per round")
    log(f"  hypernetwork: {comm['hypernet_params']:,} params, one flat head of {hn.total_size:,} outputs")

    opts = compiler_options()
    step = jax.jit(alg.step, compiler_options=opts)
    ev = jax.jit(lambda s, d: (hetero.evaluate_arches(alg, s, d, d.val), hetero.evaluate_arches(alg, s, d, d.test)),
                 compiler_options=opts)
    state = jax.jit(alg.init, compiler_options=opts)(jax.random.key(cfg.seed))
    best, best_arch = BestTracker(), [BestTracker() for _ in targets]
    best_per_arch: list = []
    best_val_per_arch: list = []
    curves, losses, arch_counts = [], [], np.zeros(len(targets), np.int64)
    t_train = t_eval = 0.0

    def write(status: str) -> dict:
        """results.json after every evaluation (status 'running'), and at the end ('done')."""
        per_arch = []
        for a, w in enumerate(args.widths):
            t, c = best_per_arch[a], comm["per_arch"][a]
            per_arch.append({"width": w, "clients": c["clients"], "params": c["params"],
                             "bytes_down_per_client_per_round": c["bytes_down_per_client"],
                             "bytes_up_per_client_per_round": c["bytes_up_per_client"],
                             "test_acc": t["acc"], "val_acc": best_val_per_arch[a]["acc"], "test_min": t["min"],
                             "test_max": t["max"], "test_std": t["std"], "rounds_trained": int(arch_counts[a]),
                             "own_best": {"step": best_arch[a].best_step, "val_acc": best_arch[a].best_val_acc,
                                          "test_acc": best_arch[a].test_acc}})
        res = {
            "what": "pFedHN with heterogeneous targets (paper Sec. 5.2): CIFAR CNNs of different widths, "
                    "one hypernetwork",
            "dataset": desc["label"], "sha256": desc["sha256"], "args": vars(args), "config": cfg.to_dict(),
            "widths": args.widths, "assignment": list(hn.assignment),
            "protocol": "test accuracy (pooled) at the evaluation with the best pooled validation accuracy over ALL "
                        "clients; per_arch pools within each architecture's clients at that same step; own_best "
                        "selects each architecture's step on its own validation accuracy",
            "best": {"step": best.best_step, "val_acc": best.best_val_acc, "test_acc": best.test_acc,
                     "test_min": best.test_min, "test_max": best.test_max, "test_std": best.test_std},
            "per_arch": per_arch, "communication": comm, "curves": curves,
            "timing_s": {"train": t_train, "eval": t_eval, "total": time.perf_counter() - t_start},
            "environment": results.environment(),
        }
        res["status"] = status
        results.write_json(out / "results.json", res)
        return res

    log(f"training: {cfg.num_steps} outer steps x {cfg.inner_steps} local steps, eval every {cfg.eval_every} ...")
    for s in range(1, cfg.num_steps + 1):
        t0 = time.perf_counter()
        state, m = step(data, state)
        loss = np.asarray(m.loss)  # blocks
        t_train += time.perf_counter() - t0
        losses.append(float(loss.mean()))
        arch_counts += np.bincount([hn.assignment[int(i)] for i in np.asarray(m.client_ids)], minlength=len(targets))
        if not np.all(np.isfinite(loss)):
            raise SystemExit(f"error: non-finite local loss at step {s}")
        if (s - 1) % cfg.eval_every and s != cfg.num_steps:
            continue
        t0 = time.perf_counter()
        val, test = (hetero.summarize_arches(hn, x) for x in jax.device_get(ev(state, data)))
        t_eval += time.perf_counter() - t0
        row = {"step": s, "train_loss": float(np.mean(losses[-cfg.eval_every:])),
               "val_acc": val["overall"]["acc"], "test_acc": test["overall"]["acc"],
               "val_acc_per_arch": [v["acc"] for v in val["per_arch"]],
               "test_acc_per_arch": [t["acc"] for t in test["per_arch"]]}
        curves.append(row)
        if best.update(s, val["overall"], test["overall"]):
            best_per_arch = test["per_arch"]
            best_val_per_arch = val["per_arch"]
        for a in range(len(targets)):
            best_arch[a].update(s, val["per_arch"][a], test["per_arch"][a])
        log(f"  step {s}: loss {row['train_loss']:.3f}, val {row['val_acc']:.4f}, test {row['test_acc']:.4f} "
            f"(per width: {' '.join(f'{w}:{t:.4f}' for w, t in zip(args.widths, row['test_acc_per_arch']))}) "
            f"[{time.perf_counter() - t_start:.0f} s]")
        write("running")

    res = write("done")
    per_arch = res["per_arch"]
    print(f"{'width':>5} {'clients':>7} {'params':>8} {'bytes/round':>11} {'test acc':>8}")
    for r in per_arch:
        print(f"{r['width']:5d} {r['clients']:7d} {r['params']:8d} {r['bytes_down_per_client_per_round']:11d} "
              f"{r['test_acc']:8.4f}")
    print(f"overall test acc {best.test_acc:.4f} at step {best.best_step} (best pooled val {best.best_val_acc:.4f}); "
          f"wrote {out / 'results.json'} ({res['timing_s']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
