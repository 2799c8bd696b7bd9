#!/usr/bin/env python
"""pFedHN on Flower: prepare a federation's shards, simulate it, make TLS certificates and node keys.

    # the federated split of a run (scripts/train.py's flags), one shard per client
    python scripts/flower.py prepare --fed fed/c10 --data-dir ../shared/data --num-clients 4 ...
    # Flower's simulation engine on this machine, one virtual SuperNode per client
    python scripts/flower.py simulate --fed fed/c10 --out runs/flower-sim
    # a CA, the SuperLink's certificate and one authentication key pair per SuperNode
    python scripts/flower.py certs --dir certs --nodes 4

Real processes (a SuperLink, one SuperNode per client, `flwr run`): docs/flower.md.
Needs `pip install -e ".[flower]"`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prepare(argv: list[str]) -> int:
    from pfedhn_jax.config import Config
    from pfedhn_jax.errors import DataError, UserError
    p = _train_script().parser()
    p.prog = "flower.py prepare"
    p.add_argument("--fed", required=True, help="folder to write federation.json and client-<i>.npz into")
    args = vars(p.parse_args(argv))
    fed = args.pop("fed")
    for k in ("no_progress", "stop_at", "tensorboard", "seeds", "lrs", "coordinator", "num_processes",
              "process_id", "cpu_devices"):
        args.pop(k, None)
    try:
        from pfedhn_jax.flower.shards import prepare as write
        rec = write(Config(**args), fed)
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = rec["data"]["client_counts"]
    print(f"prepared {len(counts['train'])} client shards in {fed} (federation {rec['federation_id']}; "
          f"train samples per client {min(counts['train'])}..{max(counts['train'])})")
    return 0


def simulate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flower.py simulate", description="Flower's simulation engine, one virtual "
                                "SuperNode per client of the prepared federation")
    p.add_argument("--fed", required=True, help="a folder written by `prepare`")
    p.add_argument("--out", required=True, help="results.json, curves.png and checkpoints/ go here")
    p.add_argument("--round-timeout", type=float, default=300.0)
    p.add_argument("--cpus-per-client", type=float, default=1.0,
                   help="Ray CPUs per virtual client (how many ClientApps run at once)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from pfedhn_jax.flower.simulation import run
    res = run(a.fed, a.out, round_timeout=a.round_timeout, cpus_per_client=a.cpus_per_client,
              progress=not a.no_progress)
    return 0 if res.get("status") in ("finished", "interrupted") else 1


def certs(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flower.py certs", description="A self-signed CA, a SuperLink TLS "
                                "certificate for the given host names, and one SuperNode key pair per node")
    p.add_argument("--dir", required=True)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--hosts", default="localhost,127.0.0.1", help="names and IPs the SuperLink is reached at")
    a = p.parse_args(argv)
    hosts = [h.strip() for h in a.hosts.split(",") if h.strip()]
    if a.nodes < 1:
        print(f"error: --nodes {a.nodes}: give at least 1 (one key pair per SuperNode)", file=sys.stderr)
        return 2
    if not hosts:
        print("error: --hosts is empty: give the SuperLink's names and IPs, e.g. --hosts localhost,127.0.0.1",
              file=sys.stderr)
        return 2
    from pfedhn_jax.flower.certs import make_certificates
    files = make_certificates(a.dir, hosts, a.nodes)
    print("\n".join(f"{k}: {v}" for k, v in files.items()))
    return 0


COMMANDS = {"prepare": prepare, "simulate": simulate, "certs": certs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        print(f"usage: flower.py {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
