#!/usr/bin/env python
"""Train pFedHN / pFedHN-PC or a baseline (--algo). Defaults reproduce the reference (CIFAR-10, 50 clients,
5000 steps).

    python scripts/train.py --data-dir ../shared/data --out runs/c10-n50-s42

Every flag of the first four groups is a field of `pfedhn_jax.Config`; the last two groups are not. Evaluation (every client, val
and test) happens after outer steps 1, 1+k, 1+2k, ... (k = --eval-every) and after the last step,
as in the reference. Bad values exit with one line and status 2; Ctrl-C / SIGTERM checkpoint and
exit with 130 / 143; rerunning the same command resumes (a larger --num-steps extends a run).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from pfedhn_jax.config import (ALGOS, COMPUTE_DTYPES, CONV_IMPLS, DATA_SOURCES, DATASETS, DEFAULT_LR,
                               MATMUL_PRECISIONS, OPTIMIZERS, SPLITS, STRATEGIES, Config)
from pfedhn_jax.algorithms import SPECS as ALGORITHMS
from pfedhn_jax.cli import OneLineParser, comma_list
from pfedhn_jax.errors import DataError, DivergenceError, Interrupted, UserError

# (group, help) for every Config field; "{default}" is filled in; choices are listed by argparse.
GROUPS = {
    "data": "data and the federated split",
    "algorithm": "algorithm (defaults: the reference's, docs/reference.md §3)",
    "output": "evaluation, output and checkpoints",
    "speed": "speed and arithmetic (the numbers do not change, except with --compute-dtype, and with "
             "--matmul-precision off CPU)",
}
HELP = {
    "dataset": ("data", "dataset (default: {default})"),
    "data_dir": ("data", "folder holding <dataset>.npz, or a TFDS data dir (default: $PFEDHN_DATA_DIR)"),
    "data_source": ("data", "where to read the data: npz file, TFDS, or auto (npz if present) (default: {default})"),
    "download": ("data", "let TFDS download and prepare the dataset (needs `pip install -e .[tfds]`)"),
    "num_clients": ("data", "number of clients N (Omniglot: at most 50, one alphabet each) (default: {default})"),
    "classes_per_client": ("data", "CIFAR: classes per client; -1 = the paper's (2 for CIFAR-10, 10 for "
                                   "CIFAR-100) (default: {default})"),
    "split": ("data", "CIFAR: the reference's pathological split, or Dirichlet label skew (default: {default})"),
    "alpha": ("data", "Dirichlet concentration, with --split dirichlet (default: {default})"),
    "val_size": ("data", "CIFAR: validation images carved out of the training set (default: {default})"),
    "image_size": ("data", "Omniglot only: side of the downsampled images, 16..105 (default: {default})"),
    "n_train": ("data", "Omniglot only: drawings per character for training (default: {default})"),
    "n_val": ("data", "Omniglot only: drawings per character for validation; the rest test (default: {default})"),
    "split_file": ("data", "replay: per-client train/val/test indices from a reference run's dump "
                           "(split/{{train,val,test}}/<client>; CIFAR only)"),
    "algo": ("algorithm", "pfedhn, pfedhn-pc (a private classifier head per client), or a baseline of the paper's "
                          "Table 1 (docs/algorithms.md) (default: {default})"),
    "num_steps": ("algorithm", "outer steps (rounds) (default: {default})"),
    "inner_steps": ("algorithm", "local SGD steps per client per round (default: {default})"),
    "batch_size": ("algorithm", "local batch size (default: {default})"),
    "lr": ("algorithm", "the algorithm's learning rate, the one --lrs sweeps; defaults: " + "; ".join(
        f"{', '.join(n for n, s in ALGORITHMS.items() if (s.lr, DEFAULT_LR[n]) == key)}: {key[1]:g}, {key[0]}"
        for key in dict.fromkeys((s.lr, DEFAULT_LR[n]) for n, s in ALGORITHMS.items()))),
    "inner_lr": ("algorithm", "pFedHN's local SGD learning rate (the baselines' is --lr) (default: {default})"),
    "embed_lr": ("algorithm", "client-embedding learning rate (default: = --lr)"),
    "wd": ("algorithm", "hypernetwork weight decay (default: {default})"),
    "inner_wd": ("algorithm", "local weight decay (default: {default})"),
    "optim": ("algorithm", "hypernetwork optimizer (default: {default})"),
    "embed_dim": ("algorithm", "client-embedding size; -1 = int(1 + N/4) (default: {default})"),
    "hyper_hid": ("algorithm", "hypernetwork hidden width (default: {default})"),
    "n_hidden": ("algorithm", "hypernetwork hidden layers (default: {default})"),
    "n_kernels": ("algorithm", "CIFAR target: kernels of the first conv (the second has twice) (default: {default})"),
    "client_widths": ("algorithm", "heterogeneous targets (paper Sec. 5.2): one hypernetwork for CIFAR CNNs of these "
                                   "--n-kernels values, e.g. 8,16,32; each client receives only its architecture's "
                                   "slice; replaces --n-kernels; pfedhn only (docs/heterogeneous.md)"),
    "client_assign": ("algorithm", "with --client-widths, each client's architecture: round-robin (client i gets i "
                                   "mod #widths) or N comma-separated indices into the widths (default: {default})"),
    "clients_per_step": ("algorithm", "clients per outer step, VJPs averaged; the reference uses 1, more is a "
                                      "deviation (default: {default})"),
    "init_from": ("algorithm", "replay: the initial hypernetwork (hnet/*) and private heads (local/<client>/*) "
                               "of a reference run's dump"),
    "client_order": ("algorithm", "replay: the client of every outer step (client_order) of a reference run's dump"),
    "eval_every": ("output", "evaluate after steps 1, 1+k, 1+2k, ... and the last (default: {default})"),
    "seed": ("output", "seed of the split, the initialisation and the client/batch draws (default: {default})"),
    "out": ("output", "output folder (results.json, curves.png, checkpoints/); a folder holding a checkpoint of "
                      "the same run is resumed; any other non-empty folder is refused unless --overwrite"),
    "overwrite": ("output", "delete the run files in --out (results.json, curves.png, checkpoints/) and start over"),
    "resume": ("output", "require a checkpoint in --out to continue (resuming is automatic when one exists)"),
    "checkpoint_every": ("output", "outer steps between checkpoints; 0 = only at the end and on SIGINT/SIGTERM "
                                   "(default: {default})"),
    "keep_checkpoints": ("output", "how many of the newest checkpoints to keep; each holds the hypernetwork and "
                                   "its optimizer state (sizes in README) (default: {default})"),
    "strategy": ("speed", "how the clients of a step run: vmap, lax.map, a Python loop, or auto per backend "
                          "(default: {default})"),
    "conv_impl": ("speed", "convolutions as lax.conv (xla), lax.conv with a loop-friendly gradient (nhwc_vjp) "
                           "or patches @ kernel (im2col); auto: xla off CPU, on CPU nhwc_vjp, or im2col when local "
                           "loops are vmapped (default: {default})"),
    "compute_dtype": ("speed", "bfloat16 matmul inputs with float32 accumulation: a deviation (default: {default})"),
    "matmul_precision": ("speed", "precision of float32 matmuls and convolutions: float32 as the reference "
                                  "computes, tensorfloat32 (TF32 on NVIDIA GPUs), or JAX's own setting (TF32 on "
                                  "NVIDIA GPUs, bfloat16 passes on TPUs); no effect on CPU (default: {default})"),
    "unroll": ("speed", "lax.scan unroll of the local loop (default: {default})"),
    # each algorithm's own hyperparameters, with their help text, from the registry
    **{f: (s.name, text) for s in reversed(ALGORITHMS.values()) for f, text in s.fields.items()},
}
GROUPS.update({g: f"{ALGORITHMS[g].label} only" for g in dict.fromkeys(g for g, _ in HELP.values()) if g in ALGORITHMS})
CHOICES = {"dataset": DATASETS, "data_source": DATA_SOURCES, "split": SPLITS, "algo": ALGOS, "optim": OPTIMIZERS,
           "strategy": STRATEGIES, "conv_impl": CONV_IMPLS, "compute_dtype": COMPUTE_DTYPES,
           "matmul_precision": MATMUL_PRECISIONS}


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {k: p.add_argument_group(title) for k, title in GROUPS.items()}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        group, text = HELP[f.name]
        flag, g = "--" + f.name.replace("_", "-"), groups[group]
        if hints[f.name] is bool:
            g.add_argument(flag, action="store_true", help=text)
            continue
        typ = next(t for t in (int, float, str) if t in typing.get_args(hints[f.name]) + (hints[f.name],))
        g.add_argument(flag, type=typ, default=f.default, choices=CHOICES.get(f.name),
                       metavar=None if f.name in CHOICES else f.name.upper(),
                       help=text.format(default=f.default))
    scale = p.add_argument_group("several runs, devices and hosts")
    scale.add_argument("--seeds", type=comma_list(int), default=None, metavar="S1,S2,...",
                       help="train one run per seed in one program (results in <out>/seed-<s>/, mean ± std in "
                            "<out>/summary.md); replaces --seed")
    scale.add_argument("--lrs", type=comma_list(float), default=None, metavar="LR1,LR2,...",
                       help="sweep --lr (the hypernetwork's for pFedHN, the baselines' own): one run per value (and per seed of --seeds) in "
                            "the same program; results in <out>/lr-<lr>/seed-<s>/, a table in <out>/summary.md; "
                            "replaces --lr")
    scale.add_argument("--cpu-devices", default="1", metavar="auto|N",
                       help="on CPU, split the machine into N XLA devices over which --seeds runs are sharded; "
                            "auto = one per core (default: 1)")
    scale.add_argument("--coordinator", default=None, metavar="HOST:PORT|auto|none",
                       help="multi-host: address of process 0 for jax.distributed (with --num-processes, "
                            "--process-id); auto: detect the cluster (TPU pod slice, SLURM, Open MPI); none: "
                            "never join a job (default: tasks started together by srun or mpirun join one job)")
    scale.add_argument("--num-processes", type=int, default=None, metavar="P", help="multi-host: number of processes")
    scale.add_argument("--process-id", type=int, default=None, metavar="I", help="multi-host: this process's index")
    run = p.add_argument_group("this invocation")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar (status lines and errors still go to stderr)")
    run.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                     help="checkpoint and exit after outer step STEP (run a long schedule in chunks)")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write the curves as TensorBoard events to <out>/tensorboard (needs tensorboardX)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        args = vars(p.parse_args(argv))
    except SystemExit as e:  # argparse printed its usage + error; keep its status (2), or 0 for --help
        return int(e.code or 0)
    progress = not args.pop("no_progress")
    stop_at = args.pop("stop_at")
    tensorboard = args.pop("tensorboard")
    seeds = args.pop("seeds")
    lrs = args.pop("lrs")
    hosts = {k: args.pop(k) for k in ("coordinator", "num_processes", "process_id")}
    cpu_devices = args.pop("cpu_devices")
    try:
        from pfedhn_jax.data.registry import validate
        cfg = validate(Config(**args))
        if stop_at is not None and (stop_at < 1 or cfg.out is None):
            raise UserError("--stop-at: needs a positive step and --out (where the checkpoint goes)")
        given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv)}
        for one, many in (("--seed", seeds), ("--lr", lrs)):
            if many is not None and one in given:
                raise UserError(f"{one}s: replaces {one}; pass one of {one} and {one}s, not both")
        from pfedhn_jax.results import check_output_path
        check_output_path(cfg.out)  # a folder that cannot be created fails here, not after loading and compiling
        from pfedhn_jax import distributed
        distributed.set_cpu_devices(cpu_devices)  # before JAX starts
        distributed.initialize(**hosts)
        from pfedhn_jax.loop import train, train_seeds  # heavy imports after validation
        if seeds is not None or lrs is not None:
            group = train_seeds(cfg, seeds or [cfg.seed], progress=progress and distributed.is_main(),
                                stop_at=stop_at, tensorboard=tensorboard, lrs=lrs)
            return _report_group(group, cfg)
        res = train(cfg, progress=progress and distributed.is_main(), stop_at=stop_at, tensorboard=tensorboard)
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130 if e.signal == "SIGINT" else 143
    except KeyboardInterrupt:
        print("aborted by a second Ctrl-C; nothing more was saved; rerun the same command to resume from the "
              "last checkpoint (or to start over, if there is none)", file=sys.stderr)
        return 130
    if res["status"] == "paused":
        print(f"paused after outer step {int(res['state'].step)}; "
              f"checkpoint in {cfg.out}/checkpoints; rerun the same command without --stop-at to continue")
        return 0
    if res["status"] == "finished" and "state" not in res:
        print(f"already finished: {cfg.out}/results.json")
    b, comm = res["best"], res.get("communication")
    kept = f", hypernetwork {comm['hypernet_bytes'] / 1e6:.1f} MB (never sent)" if comm and "hypernet_bytes" in comm else ""
    traffic = (f"; {comm['bytes_down_per_round'] / 1e6:.2f} MB down and up per round, {comm['bytes_total'] / 1e9:.2f} "
               f"GB in all{kept}" if comm else "")
    for arch, c in zip(res.get("best_per_arch", ()), (comm or {}).get("per_arch", ())):
        print(f"  width {arch['width']}: {c['clients']} clients, {c['bytes_down_per_client']:,} bytes down and up per "
              f"client per round, test acc at the best val step {arch['test_acc']:.4f}")
    print(f"test acc at the best val step {b['best_step']}: {b['test_acc']:.4f} (val {b['best_val_acc']:.4f}; "
          f"per client min {b['test_min']:.4f} max {b['test_max']:.4f} std {b['test_std']:.4f}); "
          f"wall {res['timing']['wall_s']:.0f} s, compile {(res.get('resumed') or [res])[-1]['compile_s']:.1f} s{traffic}")
    return 0


def _report_group(group: dict, cfg: Config) -> int:
    s = group["summary"]
    if s["status"] == "paused":
        print(f"paused after outer step {s['steps']}; rerun the same command without --stop-at to continue")
        return 0
    where = f"; summary in {cfg.out}/summary.md" if cfg.out else ""
    if "rows" in s:
        rows = ", ".join(f"lr {r['lr']:g}: {r['mean']:.4f} ± {r['std']:.4f}" for r in s["rows"])
        print(f"test acc at the best val step, mean ± std over {len(s['rows'][0]['seeds'])} seed(s): {rows}; "
              f"lr chosen on validation {s['best_lr']:g}{where}")
        return 0
    per_seed = ", ".join(f"{k}: {v:.4f}" for k, v in s["test_acc_at_best_val"].items())
    print(f"test acc at the best val step, {len(s['seeds'])} seeds: {s['mean']:.4f} ± {s['std']:.4f} "
          f"({per_seed}){where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
