"""Local SGD steps/s and client updates/s of the library's outer step vs clients_per_step.

For each strategy (vmap, map, loop; and 'sharded': vmap with the C clients split over all devices,
`PFedHN.client_sharding`, as `scripts/train.py` does on several devices) and each
clients_per_step C, builds the real library step
(`pfedhn_jax.builders.build_algorithm` + `jax.jit(alg.step, compiler_options=compiler_options())`),
compiles it ahead of time (reported separately), then times one outer step = C clients x K local
steps (median of --repeats runs after --warmup). Data: the CIFAR-10 npz, reference split (50 clients).

  local steps/s    = C * K / median outer-step time
  client updates/s = C / median outer-step time

CPU default: C in 1,2,4 (a few minutes on 2 cores). GPU default: C in 1,2,4,...,256, and then
N = 256 clients (C cannot exceed N; the reference's N is 50, which stays the default up to C = 50).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

CPU_CPS = "1,2,4"
ACCEL_CPS = "1,2,4,8,16,32,64,128,256"


def parse_args(argv=None):
    p = common.base_parser("client_throughput", __doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--strategies", default="vmap,map,loop", help="comma list from vmap,map,loop,sharded")
    p.add_argument("--cpu-devices", default="1", help="'auto' or N XLA devices on a CPU (set before JAX starts)")
    p.add_argument("--cps", default=None, help=f"clients_per_step list (default: {CPU_CPS} on CPU, {ACCEL_CPS} elsewhere)")
    p.add_argument("--max-loop-cps", type=int, default=16,
                   help="skip strategy 'loop' above this C (it unrolls C copies of the client loop: compile grows with C)")
    p.add_argument("--inner-steps", type=int, default=50, help="K local steps per client (reference: 50)")
    p.add_argument("--num-clients", type=int, default=None,
                   help="N of the federated split (default: max(50, largest C); the reference uses 50)")
    p.add_argument("--conv-impl", type=common.choices_list(("auto", "xla", "nhwc_vjp", "im2col")), default=["auto"],
                   help="comma list from auto, xla, nhwc_vjp, im2col; auto: per backend and strategy "
                        "(pfedhn_jax.xla.resolve_conv_impl)")
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--unroll", type=int, default=1, help="lax.scan unroll of the local loop")
    common.add_matmul_precision(p, many=True)
    p.add_argument("--plot", default=None, help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def measure(cfg, data, repeats: int, warmup: int, sharded: bool = False) -> dict:
    """Compile and time the library's outer step for one config (sharded: clients over all devices)."""
    import dataclasses

    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from pfedhn_jax.builders import build_algorithm
    from pfedhn_jax.xla import at_precision, compiler_options
    from pfedhn_jax.programs import device_mesh

    alg = build_algorithm(cfg, vmapped=sharded)
    mesh = device_mesh(1, cfg.clients_per_step) if sharded else None
    if mesh is not None:
        alg = dataclasses.replace(alg, client_sharding=NamedSharding(mesh, P("clients")))
    state = alg.init(jax.random.key(cfg.seed))
    with common.Timer() as t:
        step = jax.jit(at_precision(cfg, alg.step), compiler_options=compiler_options()).lower(data, state).compile()
    holder = [state]

    def run():
        holder[0], metrics = step(data, holder[0])
        return holder[0], metrics

    stats = common.median_time(run, repeats, warmup, sync=jax.block_until_ready)
    c, k = cfg.clients_per_step, cfg.inner_steps
    return {"compile_s": t.s, "outer_step_s": stats["median_s"],
            "local_steps_per_s": c * k / stats["median_s"], "client_updates_per_s": c / stats["median_s"],
            "outer_steps_per_s": 1 / stats["median_s"], "local_steps_per_cpu_s": c * k / stats["cpu_median_s"],
            "timing": stats,
            "conv_impl": alg.target.conv_impl}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    key = lambda r: (r["strategy"], r["matmul_precision"], r["conv"])  # noqa: E731
    lines = dict.fromkeys(map(key, rows))
    varies = [len({line[i] for line in lines}) > 1 for i in range(3)]
    for line in lines:
        pts = [(r["clients_per_step"], r["local_steps_per_s"]) for r in rows
               if key(r) == line and r.get("local_steps_per_s")]
        if pts:
            label = ", ".join(v for v, show in zip(line, varies) if show) or line[0]
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted({r["clients_per_step"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yscale("log")
    ax.set(xlabel="clients_per_step C", ylabel="local SGD steps/s (batch 64)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pfedhn_jax.distributed import set_cpu_devices
    set_cpu_devices(args.cpu_devices)
    import jax
    from pfedhn_jax.config import Config
    from pfedhn_jax.builders import load_data

    env = common.environment(jax_info=True)
    common.print_env(env)
    strategies = common.parse_strs(args.strategies)
    cps_list = common.parse_ints(args.cps or (CPU_CPS if jax.default_backend() == "cpu" else ACCEL_CPS))
    if args.num_clients is None:
        args.num_clients = max(50, *cps_list)
    base = Config(data_dir=args.data_dir, num_clients=args.num_clients, inner_steps=args.inner_steps,
                  compute_dtype=args.compute_dtype, unroll=args.unroll)
    precisions = args.matmul_precision
    convs = args.conv_impl
    with common.Timer() as t_data:
        data, _, desc = load_data(base.validate())
    record = {"benchmark": "client_throughput", "command": common.cmdline(), "environment": env,
              "note": args.note, "data": {"source": desc["source"], "label": desc["label"], "load_s": t_data.s},
              "settings": {"devices": len(jax.devices()), "inner_steps": args.inner_steps, "batch_size": base.batch_size,
                           "num_clients": args.num_clients, "conv_impls": convs,
                           "compute_dtype": args.compute_dtype, "unroll": args.unroll,
                           "matmul_precisions": precisions,
                           "repeats": args.repeats, "warmup": args.warmup},
              "rows": []}
    rows = record["rows"]
    for precision, conv, s, c in itertools.product(precisions, convs, strategies, cps_list):
        row = {"strategy": s, "clients_per_step": c, "matmul_precision": precision, "conv": conv}
        if c > args.num_clients:
            row["skipped"] = f"C > num_clients {args.num_clients}"
        elif s == "loop" and c > args.max_loop_cps:
            row["skipped"] = f"loop above --max-loop-cps {args.max_loop_cps}"
        elif s == "sharded" and c % len(jax.devices()):
            row["skipped"] = f"C does not divide over {len(jax.devices())} devices"
        else:
            strategy = "vmap" if s == "sharded" else s
            cfg = Config(**{**base.to_dict(), "clients_per_step": c, "strategy": strategy,
                            "matmul_precision": precision, "conv_impl": conv}).validate()
            try:
                row.update(measure(cfg, data, args.repeats, args.warmup, sharded=s == "sharded"))
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at large C: record, go on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        rows.append(row)
        print(common.table([row], COLUMNS) if len(rows) == 1 else common.table([row], COLUMNS).splitlines()[-1],
              flush=True)
        common.write_json(args.out, record)  # partial results survive a timeout
    print()
    print(common.table(rows, COLUMNS, title=f"client_throughput ({env['backend']}, {env['device_kind']}, "
                                              f"K={args.inner_steps}; "
                                              f"median of {args.repeats})"))
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"  {r['strategy']} C={r['clients_per_step']}: {r.get('error') or r.get('skipped')}")
    if not args.no_plot:
        png = Path(args.plot or Path(args.out).with_suffix(".png"))
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, png, f"pFedHN outer step, {env['device_kind']} ({env['backend']}), K={args.inner_steps}")
        record["plot"] = str(png)
        print(f"wrote {png}")
    common.finish(args.out, record)
    return record


COLUMNS = ("strategy", "clients_per_step", "matmul_precision", "conv_impl", "compile_s", "outer_step_s",
           "local_steps_per_s", "client_updates_per_s", "local_steps_per_cpu_s")

if __name__ == "__main__":
    main()
