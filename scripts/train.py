#!/usr/bin/env python
"""Train pFedHN / pFedHN-PC. Defaults reproduce the reference (CIFAR-10, 50 clients, 5000 steps).

    python scripts/train.py --data-dir ../shared/data --out runs/c10-n50-s42

Every flag is a field of `pfedhn_jax.Config`; bad values exit with one line and status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from pfedhn_jax.config import Config
from pfedhn_jax.errors import DataError, DivergenceError, Interrupted, UserError

HELP = {
    "dataset": "cifar10 | cifar100 | omniglot",
    "data_dir": "folder with <dataset>.npz (or a TFDS data dir); default $PFEDHN_DATA_DIR",
    "data_source": "auto | npz | tfds",
    "download": "let TFDS download and prepare the dataset",
    "classes_per_client": "-1: the paper's value (2 for CIFAR-10, 10 for CIFAR-100)",
    "split": "reference (pathological, the paper's) | dirichlet",
    "alpha": "Dirichlet concentration for --split dirichlet",
    "algo": "pfedhn | pfedhn-pc",
    "lr": "hypernetwork lr (default 1e-2 for pfedhn, 5e-2 for pfedhn-pc)",
    "embed_lr": "embedding lr (default = --lr)",
    "embed_dim": "-1: int(1 + num_clients/4)",
    "optim": "hypernetwork optimizer: sgd | adam",
    "clients_per_step": "clients per outer step, VJPs averaged (reference: 1; >1 is a deviation)",
    "out": "output folder (results.json, curves.png, checkpoints/); a folder holding a checkpoint of the "
           "same config is resumed; any other non-empty folder is refused unless --overwrite",
    "overwrite": "delete the run files in --out (results.json, curves.png, checkpoints/) and start over",
    "resume": "require a checkpoint in --out to continue (resuming is automatic when one exists)",
    "checkpoint_every": "outer steps between checkpoints (0: only at the end and on SIGINT/SIGTERM)",
    "keep_checkpoints": "how many of the newest checkpoints to keep",
    "strategy": "how the clients of a step run: auto | vmap | map | loop (speed only)",
    "conv_impl": "auto | xla | im2col (speed only)",
    "compute_dtype": "float32 | bfloat16 (bf16 matmuls: a deviation, faster on some hardware)",
    "unroll": "lax.scan unroll of the local loop (speed only)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            p.add_argument(flag, action="store_true", help=HELP.get(f.name))
            continue
        typ = next(t for t in (int, float, str) if t in typing.get_args(hints[f.name]) + (hints[f.name],))
        p.add_argument(flag, type=typ, default=f.default,
                       help=f"{HELP.get(f.name, '')} (default: {f.default})".strip())
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="checkpoint and exit after outer step STEP (run a long schedule in chunks)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    progress = not args.pop("no_progress")
    stop_at = args.pop("stop_at")
    try:
        cfg = Config(**args).validate()
        from pfedhn_jax.experiment import train  # heavy imports after validation
        if stop_at is not None and (stop_at < 1 or cfg.out is None):
            raise UserError("--stop-at: needs a positive step and --out (where the checkpoint goes)")
        res = train(cfg, progress=progress, stop_at=stop_at)
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130 if e.signal == "SIGINT" else 143
    if res["status"] == "paused":
        print(f"paused after outer step {int(res['state'].step)}; "
              f"checkpoint in {cfg.out}/checkpoints; rerun the same command without --stop-at to continue")
        return 0
    b = res["best"]
    print(f"best val acc {b['best_val_acc']:.4f} at step {b['best_step']}: test acc {b['test_acc']:.4f} "
          f"(per client min {b['test_min']:.4f} max {b['test_max']:.4f} std {b['test_std']:.4f}); "
          f"wall {res['timing']['wall_s']:.0f} s, compile {res['compile_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
