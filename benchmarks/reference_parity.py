"""Accuracy parity with the reference: the official PyTorch trainer and ours, on the same draws.

(a) The unchanged official trainer (AvivSham/pFedHN, `experiments.pfedhn[_pc].trainer`) runs
    through the tool `run_official.py` (--official-tool) in a separate Python that has torch
    (--torch-python), with PFEDHN_OFFICIAL_DUMP set, so it also writes what it drew: the
    federated split, the initial hypernetwork (and -PC private heads) and the client of every
    step. Its evaluation curve (pooled val / test accuracy after steps 1, 1+k, 1+2k, ... and the
    last, k = --eval-every) is read from the results JSON the trainer saves, the step numbers
    from its log lines "Step: s, AVG Loss: ..., AVG Acc: ...".
(b) Ours replays those draws through the library (`pfedhn_jax.data.replay`: split, initial
    state, client order; `PFedHN.step(..., client_ids=...)`) and is evaluated at the same steps
    (`evaluate.evaluate_clients`, pooled accuracy as the reference, docs/reference.md §5).

Only the local batch sampling differs (torch's RNG vs JAX's), so the two curves should agree up
to that noise. Printed: both curves side by side, the mean and sd of (ours - reference) test and
val accuracy over the evaluation steps, and the best-val test accuracy of each; written: JSON and
a PNG (default benchmarks/out/reference_parity[_quick]/).

    python benchmarks/reference_parity.py --quick --algos pfedhn,pfedhn-pc \\
        --official-dir /work/official --torch-python /work/torchenv/bin/python \\
        --data ../shared/data/cifar10.npz
    # full: N=50, 1500 steps (about 1.5 h per algorithm per side on 2 CPU cores)

--quick is N=10 clients, 200 steps; the full setting N=50, 1500 steps. A reference run whose
outputs are already in <out>/<algo>/reference/ is reused unless --rerun-reference.

The two sides can run at the same time, on separate cores: `--skip-ours` runs the reference;
`--skip-reference --dump D` runs ours on the draws in D, made before the reference finishes by
benchmarks/predict_reference_draws.py; a last call with `--reuse-ours` compares them, and refuses
unless D holds exactly the arrays the reference dumped.

The noise floor: `--skip-reference --dump D --seed S2 --out O2` replays the same draws with other
batch draws; then `--reuse-ours --noise-from O2/<algo>/ours.json` compares that run with ours
exactly as ours with the reference (overall and by third of the evaluations). A gap to the
reference well beyond the gap between our own replays is not batch-draw noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

MODULES = {"pfedhn": "experiments.pfedhn.trainer", "pfedhn-pc": "experiments.pfedhn_pc.trainer"}
EVAL_LINE = re.compile(r"Step: (\d+), AVG Loss: ([-\d.naninf]+),\s+AVG Acc: ([-\d.naninf]+)")
QUICK = {"num_clients": 10, "num_steps": 200}
FULL = {"num_clients": 50, "num_steps": 1500}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N=10 clients, 200 steps (default: N=50, 1500 steps)")
    p.add_argument("--algos", default="pfedhn", help="comma list of pfedhn, pfedhn-pc (default: %(default)s)")
    p.add_argument("--data", default=str(Path(common.DEFAULT_DATA_DIR) / "cifar10.npz"),
                   help="the dataset npz (cifar10.npz / cifar100.npz layout) both sides read (default: %(default)s)")
    p.add_argument("--official-dir", default="../official",
                   help="a checkout of AvivSham/pFedHN (holds experiments/) (default: %(default)s)")
    p.add_argument("--official-tool", default="../shared/tools/run_official.py",
                   help="the script that runs the official trainer and dumps its draws (default: %(default)s)")
    p.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", "python3"),
                   help="a Python with torch and numpy for the reference (default: $TORCH_PYTHON or python3)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the reference (speed only; default %(default)s on a shared 2-core CPU)")
    p.add_argument("--num-clients", type=int, default=None, help="override N of the chosen setting")
    p.add_argument("--num-steps", type=int, default=None, help="override the outer steps of the chosen setting")
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--seed", type=int, default=42, help="the reference's seed, and our batch-sampling key")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/out/reference_parity[_quick])")
    p.add_argument("--rerun-reference", action="store_true", help="run the reference even if its outputs exist")
    p.add_argument("--skip-ours", action="store_true", help="only run (or reuse) the reference")
    p.add_argument("--skip-reference", action="store_true", help="only run ours (needs --dump)")
    p.add_argument("--dump", default=None,
                   help="ours replays this dump instead of the reference's own (e.g. predicted draws, so both sides "
                        "run at once); the comparison checks it equals the reference's dump")
    p.add_argument("--reuse-ours", action="store_true", help="read ours from <out>/<algo>/ours.json instead of running")
    p.add_argument("--interrupted-reference", action="store_true",
                   help="reuse a reference run stopped with SIGINT (its dump is written at exit): compare the test "
                        "curve of its log up to its last evaluation; it has no val curve or results JSON")
    p.add_argument("--noise-from", default=None, metavar="OURS_JSON",
                   help="another of our replays of the same dump with another --seed (only the batch draws differ; "
                        "its <out>/<algo>/ours.json): compared with ours like the reference, the noise floor")
    p.add_argument("--note", default=common.CONTENTION_NOTE, help="free text stored in the JSON")
    args = p.parse_args(argv)
    setting = QUICK if args.quick else FULL
    args.num_clients = args.num_clients or setting["num_clients"]
    args.num_steps = args.num_steps or setting["num_steps"]
    args.algos = common.parse_strs(args.algos)
    bad = [a for a in args.algos if a not in MODULES]
    if bad:
        p.error(f"--algos: unknown {bad}; choose from {', '.join(MODULES)}")
    if args.skip_reference and not args.dump:
        p.error("--skip-reference: ours needs draws to replay; give --dump PATH")
    if args.dump and len(args.algos) != 1:
        p.error("--dump: holds one algorithm's draws; give exactly one --algos")
    # absolute: the reference runs with its own folder as the working directory
    args.out = Path(args.out or common.BENCH_DIR / "out" / f"reference_parity{'_quick' if args.quick else ''}").resolve()
    return args


def dataset_name(data: str | Path) -> str:
    """The run_official tool's rule: cifar100 if the file name says so, else cifar10."""
    return "cifar100" if "cifar100" in Path(data).name else "cifar10"


def eval_steps(num_steps: int, eval_every: int) -> list[int]:
    """Steps completed at each evaluation: the reference evaluates when step % k == 0 (0-based),
    i.e. after 1, 1+k, ..., and once more after the last step if that was not one of them."""
    steps = [s + 1 for s in range(num_steps) if s % eval_every == 0]
    return steps + ([num_steps] if steps[-1] != num_steps else [])


# ----------------------------------------------------------------------------- (a) the reference


def reference_command(args, algo: str, ref_dir: Path) -> list[str]:
    cmd = [args.torch_python, str(Path(args.official_tool).resolve()), str(Path(args.official_dir).resolve()),
           str(Path(args.data).resolve()), MODULES[algo], "--num-nodes", str(args.num_clients),
           "--num-steps", str(args.num_steps), "--eval-every", str(args.eval_every), "--seed", str(args.seed),
           "--save-path", str(ref_dir)]
    if dataset_name(args.data) == "cifar100":
        cmd += ["--data-name", "cifar100"]
    return cmd


def reference_done(ref_dir: Path) -> bool:
    return (ref_dir / "dump.npz").is_file() and any(ref_dir.glob("results*.json"))


def run_reference(args, algo: str, ref_dir: Path) -> dict:
    """Run the official trainer (or reuse its outputs); returns its command and wall time."""
    cmd = reference_command(args, algo, ref_dir)
    if reference_done(ref_dir) and not args.rerun_reference:
        print(f"[{algo}] reusing the reference run in {ref_dir}", flush=True)
        return {"command": cmd, "reused": True, "wall_s": None}
    for f in ref_dir.glob("*"):
        f.unlink()
    ref_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PFEDHN_OFFICIAL_DUMP": str(ref_dir / "dump.npz"), "OMP_NUM_THREADS": str(args.torch_threads)}
    print(f"[{algo}] reference: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(ref_dir / "log.txt", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ref_dir).returncode
    wall = time.perf_counter() - t0
    if rc != 0 or not reference_done(ref_dir):
        tail = (ref_dir / "log.txt").read_text()[-2000:]
        sys.exit(f"the reference run failed (exit {rc}); its log ends:\n{tail}")
    return {"command": cmd, "reused": False, "wall_s": wall}


def read_interrupted_reference(ref_dir: Path, eval_every: int) -> dict:
    """A reference stopped early: the test curve of its log lines (val and best are not logged)."""
    logged = [(int(s), float(a)) for s, _, a in EVAL_LINE.findall((ref_dir / "log.txt").read_text(errors="replace"))]
    steps = [s for s, _ in logged]
    if not logged or steps != eval_steps(steps[-1], eval_every):
        raise SystemExit(f"{ref_dir}: no usable evaluations in its log ({steps[:5]}...)")
    nan = [math.nan] * len(steps)
    return {"steps": steps, "test_acc": [a for _, a in logged], "val_acc": nan, "test_loss": nan, "val_loss": nan,
            "best": {k: math.nan for k in ("step", "val_acc", "test_acc", "test_min", "test_max", "test_std")},
            "interrupted_after_eval_step": steps[-1]}


def read_reference(ref_dir: Path, num_steps: int, eval_every: int) -> dict:
    """The reference's curve: its results JSON, with step numbers from its log lines."""
    (res_path,) = sorted(ref_dir.glob("results*.json"))
    res = json.loads(res_path.read_text())
    log = (ref_dir / "log.txt").read_text(errors="replace")
    logged = [(int(s), float(a)) for s, _, a in EVAL_LINE.findall(log)]
    steps = eval_steps(num_steps, eval_every)
    if [s for s, _ in logged] != steps or len(res["test_avg_acc"]) != len(steps):
        raise SystemExit(f"{ref_dir}: the reference evaluated at {[s for s, _ in logged]} "
                         f"({len(res['test_avg_acc'])} results), expected {steps}")
    best_step = int(res["best_step"][-1]) + 1  # the reference stores the 0-based step index
    return {"steps": steps, "test_acc": res["test_avg_acc"], "val_acc": res["val_avg_acc"],
            "test_loss": res["test_avg_loss"], "val_loss": res["val_avg_loss"],
            "best": {"step": best_step, "val_acc": res["best_val_acc"][-1],
                     "test_acc": res["best_test_acc_based_on_val_beststep"][-1],
                     "test_min": res["test_best_min_based_on_step"][-1],
                     "test_max": res["test_best_max_based_on_step"][-1],
                     "test_std": res["test_best_std_based_on_step"][-1]}}


# ----------------------------------------------------------------------------- (b) ours


def same_draws(a: Path, b: Path) -> bool:
    """Whether two dumps hold the same arrays (split, initial weights, client order)."""
    import numpy as np
    with np.load(a) as x, np.load(b) as y:
        return set(x.files) == set(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)


def run_ours(args, algo: str, dump: Path) -> dict:
    """Our library, replaying the reference's split, initial weights and client order."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pfedhn_jax import evaluate
    from pfedhn_jax.builders import build_algorithm
    from pfedhn_jax.xla import at_precision, compiler_options
    from pfedhn_jax.config import Config
    from pfedhn_jax.data.federated import to_device
    from pfedhn_jax.data.replay import load_client_order, load_split_file
    from pfedhn_jax.replay import load_initial_state
    from pfedhn_jax.data.sources import DATASETS, load_npz

    name = dataset_name(args.data)
    info = DATASETS[name]
    cfg = Config(dataset=name, num_clients=args.num_clients, algo=algo, num_steps=args.num_steps,
                 eval_every=args.eval_every, seed=args.seed)
    alg = build_algorithm(cfg)
    raw = load_npz(Path(args.data), info)
    split = load_split_file(dump, len(raw.y_train), len(raw.y_test), cfg.num_clients)
    order = load_client_order(dump, cfg.num_clients, cfg.num_steps)
    data = to_device(raw, info, split, cfg.batch_size)
    opts = compiler_options()
    state = load_initial_state(dump, alg, jax.jit(alg.init)(jax.random.key(cfg.seed)))
    ids = jnp.arange(cfg.num_clients)
    step_fn = jax.jit(at_precision(cfg, alg.step), compiler_options=opts)  # float32, as training
    eval_fn = jax.jit(at_precision(cfg, lambda s, d: tuple(
        evaluate.evaluate_clients(alg.target.apply, alg.personal_params(s, ids), d, split_)
        for split_ in (d.val, d.test))), compiler_options=opts)

    t0 = time.perf_counter()
    step_fn = step_fn.lower(data, state, order[:1]).compile()
    eval_fn = eval_fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    wanted = set(eval_steps(cfg.num_steps, cfg.eval_every))
    curve = {"steps": [], "test_acc": [], "val_acc": [], "test_loss": [], "val_loss": []}
    tracker = evaluate.BestTracker()
    train_s = eval_s = 0.0
    t_seg = time.perf_counter()
    for t in range(cfg.num_steps):
        state, metrics = step_fn(data, state, order[t:t + 1])
        if t + 1 in wanted:
            jax.block_until_ready(state)
            train_s += time.perf_counter() - t_seg
            t_eval = time.perf_counter()
            val, test = (evaluate.summarize(m) for m in eval_fn(state, data))
            eval_s += time.perf_counter() - t_eval
            if not math.isfinite(val["loss"]):
                raise SystemExit(f"[{algo}] ours diverged by step {t + 1}")
            tracker.update(t + 1, val, test)
            for k, v in (("steps", t + 1), ("test_acc", test["acc"]), ("val_acc", val["acc"]),
                         ("test_loss", test["loss"]), ("val_loss", val["loss"])):
                curve[k].append(v)
            print(f"[{algo}] ours step {t + 1}: val {val['acc']:.4f} test {test['acc']:.4f}", flush=True)
            t_seg = time.perf_counter()
    assert np.array_equal(np.asarray(metrics.client_ids), order[-1:])  # the replayed client was trained
    return {**curve, "best": {"step": tracker.best_step, "val_acc": tracker.best_val_acc, "test_acc": tracker.test_acc,
                              "test_min": tracker.test_min, "test_max": tracker.test_max, "test_std": tracker.test_std},
            "compile_s": compile_s, "train_s": train_s, "eval_s": eval_s,
            "client_counts": {k: [len(ix) for ix in getattr(split, k)] for k in ("train", "val", "test")},
            "conv_impl": alg.target.conv_impl, "hyper_lr": alg.lr, "data_sha256": raw.sha256}


# ----------------------------------------------------------------------------- comparison and output


def compare(ref: dict, ours: dict) -> dict:
    """Mean and sd over the evaluation steps of ours - reference (accuracy in [0, 1])."""
    out = {}
    for k in ("test_acc", "val_acc"):
        d = [o - r for o, r in zip(ours[k], ref[k]) if not math.isnan(r)]  # an interrupted reference has no val
        if not d:
            continue
        out[k] = {"mean_diff": statistics.fmean(d), "sd_diff": statistics.stdev(d) if len(d) > 1 else 0.0,
                  "max_abs_diff": max(abs(v) for v in d), "n": len(d)}
    out["best_test_acc_diff"] = ours["best"]["test_acc"] - ref["best"]["test_acc"]
    out["last_test_acc_diff"] = ours["test_acc"][-1] - ref["test_acc"][-1]
    # test difference in each third of the evaluations: early noise vs a late, steady gap
    d, steps = [o - r for o, r in zip(ours["test_acc"], ref["test_acc"])], ref["steps"]
    cuts = [round(i * len(d) / 3) for i in range(4)]
    out["test_acc_by_third"] = [{"steps": [steps[a], steps[b - 1]], "mean_diff": statistics.fmean(d[a:b]),
                                 "sd_diff": statistics.stdev(d[a:b]) if b - a > 1 else 0.0,
                                 "positive": sum(v > 0 for v in d[a:b]), "n": b - a}
                                for a, b in zip(cuts, cuts[1:]) if b > a]
    return out


def side_by_side(algo: str, ref: dict, ours: dict, cmp: dict, ref_label: str = "reference (official PyTorch)") -> str:
    """Both curves, the differences' mean and sd overall and by third, and each side's best-val test."""
    rows = [{"step": s, "ref val": ref["val_acc"][i], "ours val": ours["val_acc"][i],
             "ref test": ref["test_acc"][i], "ours test": ours["test_acc"][i],
             "test diff": ours["test_acc"][i] - ref["test_acc"][i]}
            for i, s in enumerate(ref["steps"])]
    t = common.table(rows, title=f"\n{algo}: pooled accuracy, {ref_label} vs ours (JAX), same draws")
    name = ref_label.split(" (")[0]
    for k in (k for k in ("test_acc", "val_acc") if k in cmp):
        c = cmp[k]
        t += (f"\n{k} difference (ours - {name}) over {c['n']} evaluations: mean {c['mean_diff']:+.4f}, "
              f"sd {c['sd_diff']:.4f}, max |diff| {c['max_abs_diff']:.4f}")
    t += "\ntest difference by third of the evaluations: " + "; ".join(
        f"steps {w['steps'][0]}-{w['steps'][1]}: {w['mean_diff']:+.4f} (sd {w['sd_diff']:.4f}, "
        f"{w['positive']}/{w['n']} > 0)"
        for w in cmp["test_acc_by_third"])
    for side, r in ((name, ref), ("ours", ours)):
        b = r["best"]
        t += (f"\n{side:>9}: best val {b['val_acc']:.4f} at step {b['step']} -> test {b['test_acc']:.4f} "
              f"(per client min {b['test_min']:.3f} max {b['test_max']:.3f} std {b['test_std']:.3f}); "
              f"last test {r['test_acc'][-1]:.4f}")
    return t


def plot(record: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algos = [a for a in record["algos"] if "ours" in record["algos"][a]]
    if not algos:
        return
    fig, axes = plt.subplots(1, len(algos), figsize=(6 * len(algos), 4), squeeze=False)
    for ax, algo in zip(axes[0], algos):
        r = record["algos"][algo]
        for side, style in (("reference", "-"), ("ours", "--")):
            c = r[side]
            ax.plot(c["steps"], c["test_acc"], style, color="C0", label=f"{side} test")
            ax.plot(c["steps"], c["val_acc"], style, color="C1", label=f"{side} val")
        t = r["compare"]["test_acc"]
        ax.set(title=f"{algo}: test diff {t['mean_diff']:+.4f} ± {t['sd_diff']:.4f}", xlabel="outer step",
               ylabel="pooled accuracy")
        ax.legend()
    s = record["setting"]
    fig.suptitle(f"{s['label']}, N={s['num_clients']}, {s['num_steps']} steps, seed {s['seed']}: "
                 "official PyTorch (solid) vs JAX (dashed), same split / init / client order")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merged(path: Path, record: dict) -> dict:
    """`record` plus the algorithms an earlier run of the same setting left in `path` (so that the
    algorithms can be run one invocation at a time, or side by side, into one JSON and PNG)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return record
    if old.get("setting") != record["setting"]:
        return record
    return {**record, "algos": {**old.get("algos", {}), **record["algos"]}}


def reused_ours(out: Path, algo: str, json_path: Path, dump: Path) -> dict:
    """Our curve from an earlier invocation: `<out>/<algo>/ours.json` (--skip-reference), else the
    entry of a full run in `<out>/reference_parity.json` (which replayed the reference's own dump)."""
    path = out / algo / "ours.json"
    if path.is_file():
        ours = json.loads(path.read_text())
        if Path(ours.pop("dump")) != dump.resolve():
            sys.exit(f"--reuse-ours: {path} replayed another dump; give it as --dump")
        return ours
    try:
        return json.loads(json_path.read_text())["algos"][algo]["ours"]
    except (OSError, ValueError, KeyError):
        sys.exit(f"--reuse-ours: neither {path} nor an entry for {algo} in {json_path}")


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    name = dataset_name(args.data)
    record = {"cmdline": common.cmdline(), "note": args.note,
              "setting": {"quick": args.quick, "num_clients": args.num_clients, "num_steps": args.num_steps,
                          "eval_every": args.eval_every, "seed": args.seed, "data": str(Path(args.data).resolve()),
                          "dataset": name, "label": "CIFAR-10 (JPEG copy)" if name == "cifar10" else name},
              "environment": common.environment(jax_info=not args.skip_ours), "algos": {}}
    json_path = args.out / "reference_parity.json"
    for algo in args.algos:
        ref_dir = args.out / algo / "reference"
        dump = Path(args.dump) if args.dump else ref_dir / "dump.npz"
        if args.skip_reference:
            ours = run_ours(args, algo, dump)
            (args.out / algo).mkdir(parents=True, exist_ok=True)
            common.write_json(args.out / algo / "ours.json", {**ours, "dump": str(dump.resolve())})
            print(f"[{algo}] wrote {args.out / algo / 'ours.json'}", flush=True)
            continue
        if args.interrupted_reference:
            ref_run = {"command": reference_command(args, algo, ref_dir), "reused": True, "wall_s": None}
            ref = read_interrupted_reference(ref_dir, args.eval_every)
            args.num_steps = record["setting"]["num_steps"] = ref["steps"][-1]
        else:
            ref_run = run_reference(args, algo, ref_dir)
            ref = read_reference(ref_dir, args.num_steps, args.eval_every)
        entry = {"reference": {**ref, **ref_run}, "cmdline": record["cmdline"], "environment": record["environment"]}
        if dump != ref_dir / "dump.npz" and not same_draws(dump, ref_dir / "dump.npz"):
            sys.exit(f"--dump {dump}: its draws differ from the reference's {ref_dir / 'dump.npz'}; not comparable")
        if args.reuse_ours:
            ours = reused_ours(args.out, algo, json_path, dump)
        if not args.skip_ours:
            ours = ours if args.reuse_ours else run_ours(args, algo, dump)
            entry.update(ours=ours, compare=compare(ref, ours))
            print(side_by_side(algo, ref, ours, entry["compare"]), flush=True)
            if args.noise_from:
                other = json.loads(Path(args.noise_from).read_text())
                if other["steps"] != ours["steps"] or Path(other.pop("dump")) != dump.resolve():
                    sys.exit(f"--noise-from {args.noise_from}: not a replay of {dump} at the same steps")
                entry["noise"] = {"ours_json": str(Path(args.noise_from).resolve()), "compare": compare(other, ours)}
                print(side_by_side(algo, other, ours, entry["noise"]["compare"],
                                   "ours with another batch seed (the noise floor)"), flush=True)
        record["algos"][algo] = entry
        record = merged(json_path, record)
        common.write_json(json_path, record)
    if args.skip_reference:
        return
    plot(record, args.out / "reference_parity.png")
    print(f"\n{record['setting']['label']}, N={args.num_clients}, {args.num_steps} steps, seed {args.seed}:")
    for algo, e in record["algos"].items():
        if "compare" in e:
            t, b = e["compare"]["test_acc"], e["compare"]["best_test_acc_diff"]
            print(f"  {algo:>9}: test acc ours - reference: mean {t['mean_diff']:+.4f}, sd {t['sd_diff']:.4f} over "
                  f"{t['n']} evaluations; best-val test: reference {e['reference']['best']['test_acc']:.4f}, "
                  f"ours {e['ours']['best']['test_acc']:.4f} ({b:+.4f})")
    print(f"wrote {json_path} and {args.out / 'reference_parity.png'}", flush=True)


if __name__ == "__main__":
    main()
