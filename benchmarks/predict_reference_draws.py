"""Predict the reference trainer's draws for a seed before it has run them, so ours can replay
them on the other core while the reference runs (reference_parity.py --skip-reference --dump).

The official trainer draws the client of each step with Python's `random.choice`, and the only
other consumer of that RNG is the split (`random.shuffle` of each class's indices). So: seed
as `experiments.utils.set_seed` does, build the split with the reference's own
`gen_random_loaders`, then draw one client per step. Split and initial weights are taken from
an earlier dump of the same seed and N (e.g. an interrupted run: they are drawn before step 1),
and the predicted order must match that dump's client order wherever it has one. Run it with
the Python that has torch:

    $TORCH_PYTHON benchmarks/predict_reference_draws.py --base-dump OLD/dump.npz --out predicted.npz \\
        --official-dir ../official --data ../shared/data/cifar10.npz --num-clients 50 --num-steps 1500

reference_parity.py compares only after checking that the prediction equals what the reference
dumped, so a wrong prediction cannot pass as a replay.
"""

import argparse
import random
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-dump", required=True, help="an earlier dump of the same seed and N (split, weights)")
    p.add_argument("--out", required=True)
    p.add_argument("--official-dir", default="../official")
    p.add_argument("--official-tool", default="../shared/tools/run_official.py")
    p.add_argument("--data", default="../shared/data/cifar10.npz")
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--num-steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--classes-per-client", type=int, default=2)
    args = p.parse_args()
    if Path(args.out).exists():
        sys.exit(f"--out {args.out}: exists; choose a new path")
    # The tool's in-memory torchvision stand-in, i.e. everything before its dump hooks.
    shim = Path(args.official_tool).read_text().split("dump_path =")[0]
    sys.argv = ["shim", str(Path(args.official_dir).resolve()), args.data, "unused"]
    exec(compile(shim, args.official_tool, "exec"), {"__name__": "shim"})
    import experiments.dataset as ds
    from experiments.utils import set_seed

    set_seed(args.seed)
    ds.gen_random_loaders("cifar100" if "cifar100" in Path(args.data).name else "cifar10", "unused",
                          args.num_clients, 64, args.classes_per_client)
    order = np.asarray([random.choice(range(args.num_clients)) for _ in range(args.num_steps)], np.int64)
    with np.load(args.base_dump) as f:
        draws = dict(f)
    known = draws["client_order"][:args.num_steps]
    if not np.array_equal(order[:len(known)], known):
        sys.exit(f"the predicted order differs from {args.base_dump}'s in its first {len(known)} steps")
    draws["client_order"] = order
    np.savez(args.out, **draws)
    print(f"wrote {args.out}: {args.num_steps} steps; matches the base dump's {len(known)} known steps")


if __name__ == "__main__":
    main()
