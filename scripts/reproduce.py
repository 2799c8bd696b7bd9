#!/usr/bin/env python
"""Reproduce the paper's Table 1, all eight rows (pFedHN, pFedHN-PC and six baselines): a grid of runs,
then mean ± std tables.

    python scripts/reproduce.py --data-dir ../shared/data --out runs/table1
    python scripts/reproduce.py --data-dir ../shared/data --quick --datasets cifar10 --num-clients 10 --seeds 42

Cells: {--algos} x {--datasets} x {--num-clients} x {--seeds}; by default Table 1's: its eight
methods, CIFAR-10 and CIFAR-100 with N = 10, 50, 100, Omniglot with N = 50, seeds 42, 27, 13 (3 x 7 x
8 = 168 runs; pFedHN's reference schedule takes about 50 minutes on a 2-core CPU). Every row gets
the same local compute: --num-steps and --eval-every are pFedHN's (one client per step); the
baselines run 5 clients per round for a fifth of the rounds (docs/algorithms.md, "Budget").
The unfinished seeds of each row
(algorithm, dataset, N) train in-process as one program (a leading run axis, sharded over the
devices), each seed into `<out>/<algo>-<dataset>-n<N>-s<seed>/`, the row's checkpoint in
`<out>/<algo>-<dataset>-n<N>/`. Rerunning the same command skips finished cells and continues
unfinished rows, so the grid can be stopped (Ctrl-C) and resumed at any time. Datasets
missing from --data-dir are reported and their cells skipped. Writes `<out>/table.md`,
`<out>/table.csv` (mean ± std over finished seeds of the test accuracy at the best validation
step, the paper's value and the difference) and `<out>/curves.png` (once any cell has finished).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pfedhn_jax import grid, report
from pfedhn_jax.algorithms import TABLE_ALGOS
from pfedhn_jax.cli import comma_list
from pfedhn_jax.config import ALGOS, DATASETS
from pfedhn_jax.distributed import set_cpu_devices
from pfedhn_jax.errors import UserError
from pfedhn_jax.data.registry import spec, validate
from pfedhn_jax.paper import SEEDS

# Config fields passed through unchanged to every cell (flag --x-y for field x_y).
PASSTHROUGH = {"inner_steps": int, "batch_size": int, "eval_every": int, "clients_per_step": int,
               "val_size": int, "image_size": int, "data_source": str, "strategy": str, "conv_impl": str,
               "compute_dtype": str, "matmul_precision": str, "checkpoint_every": int, "n_kernels": int,
               "hyper_hid": int}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", type=comma_list(str), default=list(TABLE_ALGOS),
                   help=f"comma-separated, of {', '.join(ALGOS)} (default: Table 1's rows, {','.join(TABLE_ALGOS)})")
    p.add_argument("--datasets", type=comma_list(str), default=list(DATASETS),
                   help="comma-separated (default: cifar10,cifar100,omniglot)")
    p.add_argument("--num-clients", type=comma_list(int), default=None,
                   help="comma-separated, for every dataset (default: Table 1's: 10,50,100 for CIFAR, 50 for Omniglot)")
    p.add_argument("--seeds", type=comma_list(int), default=list(SEEDS), help="comma-separated (default: 42,27,13)")
    p.add_argument("--lr-factors", type=comma_list(float), default=None, metavar="F1,F2,...",
                   help="tune --lr on validation: each row sweeps its algorithm's default --lr times these factors "
                        "(e.g. 0.3,1,3) in one program, and the table reports the rate with the best mean validation "
                        "accuracy (default: the defaults only)")
    p.add_argument("--data-dir", default=None, help="folder with <dataset>.npz (default: $PFEDHN_DATA_DIR)")
    p.add_argument("--out", default=None, help="grid folder (default: runs/table1, or runs/table1-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"short schedule to check the pipeline ({', '.join(f'{k}={v}' for k, v in grid.QUICK.items())}); "
                        "the table says so")
    p.add_argument("--num-steps", type=int, default=None, help="outer steps per cell (overrides --quick's)")
    p.add_argument("--overwrite", action="store_true",
                   help="rerun cells whose folder holds results of a different config (otherwise left alone)")
    p.add_argument("--table-only", action="store_true", help="train nothing: rebuild the tables from the results files")
    p.add_argument("--list", action="store_true", help="print the cells and their state, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    p.add_argument("--cpu-devices", default="1", metavar="auto|N",
                   help="on CPU, split the machine into N XLA devices over which each row's seeds are sharded; "
                        "auto = one per core (default: 1)")
    for field, typ in PASSTHROUGH.items():
        p.add_argument("--" + field.replace("_", "-"), type=typ, default=None, help=f"Config.{field} for every cell")
    return p


def eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fields: dict = dict(grid.QUICK) if args.quick else {}
    if args.num_steps is not None:
        fields["num_steps"] = args.num_steps
    fields.update({k: getattr(args, k) for k in PASSTHROUGH if getattr(args, k) is not None})
    if args.data_dir is not None:
        fields["data_dir"] = args.data_dir
    out = Path(args.out or ("runs/table1-quick" if args.quick else "runs/table1"))
    try:
        bad = [a for a in args.algos if a not in ALGOS]
        if bad:
            raise UserError(f"--algos: unknown {', '.join(bad)}; choose from {', '.join(ALGOS)}")
        bad = [d for d in args.datasets if d not in DATASETS]
        if bad:
            raise UserError(f"--datasets: unknown {', '.join(bad)}; choose from {', '.join(DATASETS)}")
        if args.lr_factors is not None and (not args.lr_factors or min(args.lr_factors) <= 0
                                            or len(set(args.lr_factors)) != len(args.lr_factors)):
            raise UserError(f"--lr-factors: give distinct positive factors, got {args.lr_factors}")
        cells = grid.list_cells(args.algos, args.datasets, args.num_clients, args.seeds, log=eprint,
                                lr_factors=args.lr_factors)
        if not cells:
            raise UserError("the grid is empty: check --algos, --datasets, --num-clients and --seeds")
        for c in cells:  # every cell's config is valid before anything runs
            validate(grid.cell_config(c, out, **fields))
        set_cpu_devices(args.cpu_devices)  # before anything starts JAX
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for c in cells:
            cfg = grid.cell_config(c, out, **fields)
            state = grid.cell_state(cfg)
            if state in ("new", "partial") and spec(cfg.dataset).missing(cfg):  # it cannot train here
                state = "no data" if state == "new" else "partial, no data to continue it"
            print(f"{c.name}: {state}")
        return 0
    outcomes = None
    if not args.table_only:
        eprint(f"{len(cells)} cells into {out}")
        if len(cells) > 6:
            each = ("loads its data and compiles (tens of seconds on a 2-core CPU)" if args.quick else
                    "takes about 50 minutes on a 2-core CPU at the reference schedule (a few minutes on a GPU)")
            eprint(f"note: {len(cells)} cells, and each {each}; narrow the grid with --datasets, "
                   "--num-clients and --seeds")
        try:
            outcomes = grid.run_grid(cells, out, fields, overwrite=args.overwrite, progress=not args.no_progress,
                                     log=eprint)
        except KeyboardInterrupt:
            report.write_report(cells, out, fields, args.quick)
            print("stopped; rerun the same command to continue the grid", file=sys.stderr)
            return 130
        except Exception as e:
            if type(e).__name__ != "Interrupted":
                raise
            report.write_report(cells, out, fields, args.quick)
            print(f"stopped: {e}; rerun the same command to continue the grid", file=sys.stderr)
            return 130 if getattr(e, "signal", "SIGINT") == "SIGINT" else 143
    rows, written = report.write_report(cells, out, fields, args.quick, outcomes)
    print((out / "table.md").read_text())
    if outcomes is not None:
        print(f"cells: {grid.summary_line(outcomes)}; wrote {', '.join(f'{out}/{w}' for w in written)}")
    done = sum(len(r.seeds) for r in rows)
    return 0 if done == len(cells) else 1


if __name__ == "__main__":
    sys.exit(main())
