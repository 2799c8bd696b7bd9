"""The novel-client experiment of the paper (Sec. 5.3) end to end: generalisation gap vs label shift,
pFedHN (a new embedding per novel client, φ frozen) against FedAvg + fine-tuning.

1. Dirichlet split: `num_clients` training clients with `alpha_train`, `num_novel` novel clients,
   each with an α from `novel_alphas` (repeated in order); no sample in two clients.
2. pFedHN (reference defaults, docs/reference.md §3) trained for `steps` outer steps on the
   training clients; then, φ frozen, one new embedding per novel client fitted for `fit_steps` steps.
3. Baseline: FedAvg over the training clients (`fedavg_rounds` rounds of `fedavg_clients`
   clients, the same local SGD as pFedHN's clients), then the global model fine-tuned on every
   client (training and novel) for `fit_steps` steps of the same batch size.
The building blocks are in `novel.py`; `scripts/novel_clients.py` is the command line; definitions
and results: docs/novel_clients.md.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import novel, results
from pfedhn_jax.algorithms.common import broadcast
from pfedhn_jax.algorithms.fedavg import FedAvg
from pfedhn_jax.builders import build_algorithm
from pfedhn_jax.programs import train_plain
from pfedhn_jax.xla import matmul_precision
from pfedhn_jax.config import Config
from pfedhn_jax.data.federated import ClientIndex, to_device
from pfedhn_jax.data.registry import spec
from pfedhn_jax.data.sources import DATASETS as INFOS, load_raw
from pfedhn_jax.errors import UserError
from pfedhn_jax.evaluate import summarize


@dataclasses.dataclass(frozen=True)
class NovelExperiment:
    """The experiment's settings; the defaults are the command line's (scripts/novel_clients.py --help)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    num_clients: int = 50
    num_novel: int = 10
    alpha_train: float = 0.1
    novel_alphas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    val_size: int = 0
    steps: int = 5000
    inner_steps: int = 50
    batch_size: int = 64
    fit_steps: int = 100
    fit_lr: float = 0.05
    fit_optimizer: str = "adam"
    fit_init: str = "mean"
    compare_init: bool = False
    fedavg_clients: int = 10
    fedavg_rounds: int | None = None
    finetune_lr: float | None = None
    strategy: str = "vmap"
    n_kernels: int = 16
    hyper_hid: int = 100
    n_hidden: int = 3
    seed: int = 42


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: NovelExperiment, log: Callable[[str], None] = _log) -> dict:
    """Split, train pFedHN, fit the novel embeddings, train and fine-tune the FedAvg baseline, evaluate;
    returns the results (the schema of novel.json: per novel client "novel", per α "by_alpha", ...).
    Every program is traced at the run config's matmul precision (`xla.matmul_precision`)."""
    t_start = time.perf_counter()
    cfg = Config(dataset=args.dataset, data_dir=args.data_dir, num_clients=args.num_clients, num_steps=args.steps,
                 inner_steps=args.inner_steps, batch_size=args.batch_size, n_kernels=args.n_kernels,
                 hyper_hid=args.hyper_hid, n_hidden=args.n_hidden, seed=args.seed).validate()
    with matmul_precision(cfg):
        return _run(args, cfg, t_start, log)


def _run(args: NovelExperiment, cfg: Config, t_start: float, log: Callable[[str], None]) -> dict:
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

    alg = build_algorithm(cfg, vmapped=True)  # the novel fit and FedAvg vmap their clients
    key = jax.random.key(args.seed)
    k_hn, k_fit, _, k_fedavg, k_ft = jax.random.split(key, 5)
    # Every evaluation runs on all N + M clients at once (one compiled program); metrics are split after.
    evaluate_all = lambda params: jax.device_get(novel.evaluate_models(alg.target.apply, params, alld, alld.test))
    part = lambda met, sl: jax.tree.map(lambda a: a[sl], met)
    cat = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)

    # ---- pFedHN
    log(f"training pFedHN: {args.steps} outer steps x {args.inner_steps} local steps ...")
    t0 = time.perf_counter()
    state = train_plain(alg, data, k_hn, args.steps, log_every=max(1, args.steps // 10),
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
    # the baseline: the registry's FedAvg with pFedHN's local SGD, trained by the plain loop
    fedavg = FedAvg(alg.target, n, lr=alg.inner_lr, inner_steps=args.inner_steps, batch_size=args.batch_size,
                    clients_per_step=args.fedavg_clients, strategy=args.strategy, weight_decay=alg.inner_wd)
    log(f"training FedAvg: {rounds} rounds x {args.fedavg_clients} clients x {args.inner_steps} local steps ...")
    t0 = time.perf_counter()
    fa_params = train_plain(fedavg, data, k_fedavg, rounds, log_every=max(1, rounds // 5),
                            log=lambda s, l: log(f"  FedAvg round {s}/{rounds}: local loss {l:.3f}")).shared
    jax.block_until_ready(fa_params)
    t_fedavg = time.perf_counter() - t0
    log(f"  FedAvg done ({t_fedavg:.0f} s); fine-tuning on each of the {n} training + {m} novel clients for "
        f"{args.fit_steps} steps ...")
    t0 = time.perf_counter()
    fa_global = evaluate_all(broadcast(fa_params, n + m))
    fa_met = evaluate_all(novel.finetune(fedavg, fa_params, alld, alld.train, k_ft, args.fit_steps, args.finetune_lr))
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
        "args": dataclasses.asdict(args), "fedavg_rounds": rounds,
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
    return res
