"""The cost of the network path: real Flower processes on localhost against the simulation.

For one config, this runs
  1. the simulation, `pfedhn_jax.loop.train` (scripts/train.py): outer steps per second of training;
  2. a Flower federation of real processes on this machine (`pfedhn_jax.flower.localhost`): a
     SuperLink with TLS and node authentication, one SuperNode per client, `flwr run`. It reports
     training rounds per second (the median round, from results.json["flower"]["round_s"]) and
     bytes per training round, counted three ways:
       - the project's accounting (results.json["communication"]: θ's parameters × 4 bytes);
       - Flower's serialized objects (results.json["flower"]["wire"]);
       - TCP bytes between the SuperNodes and the SuperLink (TLS and HTTP included), from a counting
         proxy in front of the SuperLink. Idle traffic (heartbeats, polling) is measured before the
         run and given per second.
Evaluations happen only after the first and the last round (both sides). The simulation is run
--repeats times (median of its training rate; compilation is timed apart); the deployment once, its
rate the median of its rounds after the first (the first also loads the ClientApps' programs).

    python benchmarks/flower_deploy.py --model tiny --num-clients 4 --num-steps 12 --repeats 5
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

MODELS = {
    "tiny": dict(inner_steps=2, batch_size=8, n_kernels=2, hyper_hid=8, n_hidden=1, val_size=600),
    "paper": dict(val_size=1000),   # the reference's CNN, hypernetwork, 50 local steps of batch 64
}


class CountingProxy:
    """TCP proxy 127.0.0.1:<port> -> target, counting bytes each way (a thread with its own loop)."""

    def __init__(self, target_port: int):
        from pfedhn_jax.flower.localhost import free_port
        self.port, self.target = free_port(), target_port
        self.down = self.up = 0   # down: SuperLink -> SuperNodes; up: SuperNodes -> SuperLink
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def pipe(reader, writer, up: bool):
            try:
                while data := await reader.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def handle(r, w):
            try:
                tr, tw = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                w.close()
                return
            await asyncio.gather(pipe(r, tw, True), pipe(tr, w, False))

        async def main():
            await asyncio.start_server(handle, "127.0.0.1", self.port)
            self.ready.set()
            await asyncio.Event().wait()

        self.loop.run_until_complete(main())

    def counts(self) -> tuple[int, int]:
        return self.down, self.up


def parse_args(argv=None):
    p = common.base_parser("flower_deploy", __doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--model", choices=sorted(MODELS), default="paper")
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=12)
    p.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle traffic measured before the run")
    p.add_argument("--work", default=str(common.BENCH_DIR / "out" / "flower"), help="scratch folder")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    import shutil

    from pfedhn_jax.config import Config
    from pfedhn_jax.flower.localhost import LocalFederation
    from pfedhn_jax.flower.shards import prepare
    from pfedhn_jax.loop import train
    work = Path(a.work) / f"{a.model}-n{a.num_clients}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = Config(**MODELS[a.model], data_dir=a.data_dir, num_clients=a.num_clients, num_steps=a.num_steps,
                 eval_every=a.num_steps, checkpoint_every=0, seed=42)
    prepare(cfg, work / "fed")

    sim_rates, sim_compile = [], []
    t0 = time.perf_counter()
    for r in range(max(a.repeats, 1)):   # the same run again: the median of its training rate, compile apart
        sim = train(dataclasses.replace(cfg, out=str(work / f"sim-{r}")), progress=False)
        sim_rates.append(sim["timing"]["outer_steps_per_s"])
        sim_compile.append(sim.get("compile_s"))
    sim_wall = (time.perf_counter() - t0) / max(a.repeats, 1)
    sim_rate = statistics.median(sim_rates)
    print(f"simulation: {sim_rate:.3f} outer steps/s (median of {len(sim_rates)} runs of {a.num_steps} steps: "
          f"{[round(x, 2) for x in sim_rates]})", flush=True)

    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "jax-cache"))  # each ClientApp process loads, not compiles
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    fed = LocalFederation(work / "deploy", work / "fed", nodes=a.num_clients, env=env)
    proxy = CountingProxy(fed.port)
    fed.node_superlink = f"127.0.0.1:{proxy.port}"
    out = work / "flower"
    try:
        fed.start()
        time.sleep(5)
        d0, u0 = proxy.counts()
        time.sleep(a.idle_s)
        d1, u1 = proxy.counts()
        idle = ((d1 - d0) / a.idle_s, (u1 - u0) / a.idle_s)
        t_sub = time.perf_counter()
        fed.submit(out, round_timeout=600, node_wait=600)
        res = fed.wait(out, "finished", 3600)
        dep_wall = time.perf_counter() - t_sub
        d2, u2 = proxy.counts()
    finally:
        fed.stop()
    fl = res["flower"]
    rounds = fl["round_s"]
    steady = rounds[1:] if len(rounds) > 2 else rounds
    med = statistics.median(steady)
    run_s = dep_wall
    tcp_down, tcp_up = d2 - d1 - idle[0] * run_s, u2 - u1 - idle[1] * run_s
    w = fl["wire"]
    record = {
        "config": {k: getattr(cfg, k) for k in ("num_clients", "num_steps", "inner_steps", "batch_size", "n_kernels",
                                                "hyper_hid", "n_hidden", "algo", "clients_per_step")},
        "model": a.model,
        "simulation": {"outer_steps_per_s": sim_rate, "step_s": 1 / sim_rate, "wall_s_per_run": sim_wall,
                       "outer_steps_per_s_runs": sim_rates, "compile_s_runs": sim_compile},
        "flower": {"rounds_per_s_median": 1 / med, "round_s_median": med, "round_s_first": rounds[0],
                   "compile_s": res.get("compile_s"),
                   "round_s": rounds, "outer_steps_per_s_results": res["timing"]["outer_steps_per_s"],
                   "wall_s_submit_to_finished": dep_wall, "faults": len(fl["faults"])},
        "bytes_per_round": {
            "project_accounting_down": res["communication"]["bytes_down_per_round"],
            "project_accounting_up": res["communication"]["bytes_up_per_round"],
            "flower_serialized_down": w["train_bytes_down_per_round"],
            "flower_serialized_up": w["train_bytes_up_per_round"]},
        "tcp": {"idle_down_per_s": idle[0], "idle_up_per_s": idle[1],
                "run_down_total": d2 - d1, "run_up_total": u2 - u1,
                "run_down_minus_idle": tcp_down, "run_up_minus_idle": tcp_up,
                "messages": {k: v[0] for k, v in w["counts"].items()},
                "flower_serialized_all_messages_down": sum(v[1] for v in w["counts"].values()),
                "flower_serialized_all_messages_up": sum(v[2] for v in w["counts"].values())},
        "slowdown_round_vs_step": med * sim_rate,
        "env": common.environment(), "load_average": common.load_average(),
        "note": a.note,
    }
    keys = ("simulation", "flower", "bytes_per_round", "tcp", "slowdown_round_vs_step")
    print(json.dumps({k: record[k] for k in keys}, indent=1), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out.replace(".json", f"-{a.model}.json")).write_text(json.dumps(record, indent=1, default=str))
    return record


if __name__ == "__main__":
    main()
