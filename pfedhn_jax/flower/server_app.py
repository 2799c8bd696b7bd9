"""The Flower ServerApp: the hypernetwork and its optimizer state stay here, on the server's device.

One round (`PFedHNServer.train_round`), with the simulation's functions (`rounds.py`):
  sample the round's clients (`--clients-per-step`, the reference's 1), θ_i = h(v_i; φ) jitted,
  send each client its θ_i and its local PRNG key, receive δ_i = θ_i − θ̃_i, check each reply
  (names, shapes, float32, finite), and apply the VJP update once every client of the round replied.
Evaluation rounds send every client its θ_i and pool the validation and test counts they return
as `evaluate.summarize` does. Which node serves which client, the message exchange and its byte
counts are `nodes.Clients`'s. Results go to `<out>/results.json` (scripts/train.py's schema, plus
a "flower" section: faults, bytes on the wire), `<out>/curves.png`, and orbax checkpoints in
`<out>/checkpoints` (cadence of --checkpoint-every, at the end, and on SIGTERM / SIGINT).

Faults (docs/flower.md): a client that errs, disconnects, times out (run config `round-timeout`)
or sends a reply that fails the checks loses the round: the update is skipped, the hypernetwork
stays as it was, the round still counts (its PRNG key is used up, so later rounds draw as they
would have), and one line names the node, the client and the reason; the fault is listed in
results.json. Rerunning the server on the same --out resumes from the newest checkpoint.

Run config (pyproject `[tool.flwr.app.config]`, or `flwr run --run-config`): `federation` (the
folder `scripts/flower.py prepare` wrote), `out`, and in seconds `round-timeout`, `node-wait` (for
every client at the start) and `eval-wait` (for missing clients in an evaluation; default node-wait).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flwr.app import ConfigRecord, Context, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from pfedhn_jax import evaluate
from pfedhn_jax import results as rio
from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.errors import DivergenceError, UserError
from pfedhn_jax.flower import codec
from pfedhn_jax.flower.nodes import Clients
from pfedhn_jax.flower.rounds import ServerRound, ServerRunState
from pfedhn_jax.flower.shards import check_supported, initial_state, read_federation
from pfedhn_jax.history import Group, RunRecord, check_finite, communication
from pfedhn_jax.resume import finished_results, open_checkpoints
from pfedhn_jax.signals import log, stop_requests

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    node_wait = float(rc.get("node-wait", 300.0))
    serve(grid, str(rc["federation"]), str(rc["out"]), round_timeout=float(rc.get("round-timeout", 300.0)),
          node_wait=node_wait, eval_wait=float(rc.get("eval-wait", node_wait)), progress=bool(rc.get("progress", True)))


def serve(grid: Grid, federation: str, out: str, round_timeout: float = 300.0, node_wait: float = 300.0,
          progress: bool = True, eval_wait: float | None = None) -> dict:
    """Train (or resume, or report a finished run) the federation prepared in `federation` into `out`.

    round_timeout: seconds a round waits for its replies; node_wait: seconds the start waits for
    every client's SuperNode; eval_wait: seconds an evaluation keeps asking missing clients
    (default node_wait) before it pools the ones that answered."""
    return PFedHNServer(grid, federation, out, round_timeout, node_wait,
                        node_wait if eval_wait is None else eval_wait).run(progress)


def _flwr_version() -> str:
    import flwr
    return getattr(flwr, "__version__", "unknown")


class PFedHNServer:
    """The strategy: holds φ and its optimizer state, drives rounds through a Flower Grid."""

    def __init__(self, grid: Grid, federation: str, out: str, round_timeout: float, node_wait: float,
                 eval_wait: float | None = None):
        from pfedhn_jax.builders import build_algorithm
        self.round_timeout, self.node_wait = round_timeout, node_wait
        self.eval_wait = node_wait if eval_wait is None else eval_wait
        cfg, self.record = read_federation(federation)
        self.cfg = dataclasses.replace(cfg, out=str(out), overwrite=False, resume=False)
        check_supported(self.cfg)
        self.out = Path(out)
        self.alg = build_algorithm(self.cfg)
        self.rounds = ServerRound(self.alg, self.cfg)
        self.fid = self.record["federation_id"]
        self.run_key = hashlib.sha256(f"{self.out.resolve()}|{self.fid}".encode()).hexdigest()[:16]
        self.clients = Clients(grid, self.fid, self.cfg.num_clients, round_timeout)
        self.faults: list[dict] = []
        self.round_s: list[float] = []   # seconds of each training round (send, client, reply, update)
        self.theta_template = codec.theta_template(self.alg)

    def _fault(self, step: int, cid: int, kind: str, why: str) -> None:
        node = self.clients.node_of.get(cid)
        log(f"flower: {kind} round {step + 1}: node {node} (client {cid}) {why}; the hypernetwork is unchanged")
        self.faults.append({"step": step + 1, "kind": kind, "client": cid, "node": node, "reason": why})

    # ------------------------------------------------------------------ rounds
    def train_round(self, state: ServerRunState, given: np.ndarray | None, committed: int):
        """One round; returns (state, StepMetrics or None when the round was skipped)."""
        step = int(state.step)
        plan = self.rounds.plan(state, given)
        ids = [int(i) for i in plan.ids]
        missing = self.clients.wait_for(ids, 0.0)
        theta = jax.device_get(plan.theta)
        skipped = state._replace(step=state.step + 1, key=plan.next_key)
        if missing:
            for c in missing:
                self._fault(step, c, "train", "is not connected")
            return skipped, None
        msgs = [self.clients.message(RecordDict({
            "theta": codec.to_record(jax.tree.map(lambda a: a[j], theta)),
            "config": ConfigRecord({"step": step, "client_id": c, "run": self.run_key, "committed": committed,
                                    "key": [int(k) for k in plan.keys[j]]})}), c, MessageType.TRAIN, step)
            for j, c in enumerate(ids)]
        replies = self.clients.exchange(msgs, "train", self.round_timeout)
        deltas, losses, norms, bad = [], [], [], False
        for j, c in enumerate(ids):
            r = replies.get(j)
            try:
                m = self.clients.reply_metrics(r, c, step, " (disconnected or too slow)")
                deltas.append(codec.from_record(r.content["delta"], self.theta_template, "delta"))
                losses.append(codec.scalar(m["loss"], "loss"))
                norms.append(codec.scalar(m["delta_norm"], "delta_norm"))
            except (codec.BadReply, KeyError, TypeError, ValueError) as e:
                why = str(e) if isinstance(e, codec.BadReply) else f"sent a malformed reply ({type(e).__name__}: {e})"
                self._fault(step, c, "train", why if not isinstance(e, codec.BadReply) or r is None
                            or r.has_error() else f"sent a reply that was refused: {why}")
                bad = True
        if bad:
            return skipped, None
        delta = jax.tree.map(lambda *xs: jnp.stack(xs), *deltas)
        srv = self.rounds.update(state.server, jnp.asarray(plan.ids), delta)
        metrics = StepMetrics(np.asarray(plan.ids)[None], np.asarray(losses, np.float32)[None],
                              np.asarray(norms, np.float32)[None])
        return ServerRunState(state.step + 1, srv, plan.next_key), metrics

    def evaluate_round(self, state: ServerRunState) -> tuple[dict, dict, list[int]] | None:
        """Every client's val and test counts with its personal model, pooled; missing clients listed.

        Every connected client is asked and given `round_timeout` s; clients still missing are asked
        again (after looking for their nodes) for up to `eval_wait` s more. None if no client answered."""
        step = int(state.step)
        theta = jax.device_get(self.rounds.personal_theta(state))
        n = self.cfg.num_clients
        got: dict[int, dict] = {}
        end = None
        while True:
            self.clients.wait_for([c for c in range(n) if c not in got], 0.0)
            todo = [c for c in range(n) if c not in got and c in self.clients.node_of]
            wait = self.round_timeout if end is None else min(self.round_timeout, max(end - time.monotonic(), 1.0))
            msgs = [self.clients.message(RecordDict({
                "theta": codec.to_record(jax.tree.map(lambda a: a[c], theta)),
                "config": ConfigRecord({"step": step, "client_id": c, "run": self.run_key})}),
                c, MessageType.EVALUATE, step) for c in todo]
            replies = self.clients.exchange(msgs, "evaluate", wait) if msgs else {}
            for j, c in enumerate(todo):
                r = replies.get(j)
                try:
                    m = self.clients.reply_metrics(r, c, timeout=wait)
                    got[c] = {k: codec.scalar(m[k], k) for k in
                              ("val_correct", "val_total", "val_loss", "test_correct", "test_total", "test_loss")}
                except (codec.BadReply, KeyError, TypeError, ValueError) as e:
                    log(f"flower: evaluation after round {step}: node {self.clients.node_of.get(c)} (client {c}): {e}")
            end = time.monotonic() + self.eval_wait if end is None else end
            if len(got) == n or time.monotonic() >= end:
                break
            time.sleep(0.5)
        missing = [c for c in range(n) if c not in got]
        if not got:
            log(f"flower: evaluation after round {step}: no client answered; no curve point")
            return None
        if missing:
            log(f"flower: evaluation after round {step} pools {len(got)} of {n} clients; missing {missing}")
        have = sorted(got)
        split = lambda s: evaluate.summarize(evaluate.ClientMetrics(
            np.asarray([got[c][f"{s}_correct"] for c in have], np.int64),
            np.asarray([got[c][f"{s}_total"] for c in have], np.int64),
            np.asarray([got[c][f"{s}_loss"] for c in have], np.float32)))
        return split("val"), split("test"), missing

    # ------------------------------------------------------------------ the run
    def run(self, progress: bool = True) -> dict:
        from pfedhn_jax.xla import resolve_conv_impl
        cfg, out = self.cfg, self.out
        rio.prepare_output_dir(str(out), False, False)
        group = Group(cfg, [cfg.seed], out, [out])
        done = finished_results(group)
        if done is not None:
            log(f"{out} holds a finished run of this federation: results in {out / 'results.json'}")
            return done[0]
        with stop_requests() as stop:
            t0 = time.perf_counter()
            (out / "serverapp.pid").parent.mkdir(parents=True, exist_ok=True)
            rio.write_text(out / "serverapp.pid", f"{os.getpid()}\n")
            init = initial_state(self.alg, cfg)
            ckpt, state, resumed = open_checkpoints(group, ServerRunState(init.step, init.server, init.key))
            del init
            log(f"flower: compiling the hypernetwork's programs on {jax.default_backend()}")
            t_c = time.perf_counter()
            given = None if cfg.client_order is None else np.zeros(cfg.clients_per_step, np.int32)
            plan = self.rounds.plan(state, given)
            zero = jax.tree.map(jnp.zeros_like, plan.theta)
            jax.block_until_ready((self.rounds.update(state.server, jnp.asarray(plan.ids), zero),
                                   self.rounds.personal_theta(state)))
            compile_s = time.perf_counter() - t_c
            order = None
            if cfg.client_order is not None:
                from pfedhn_jax.data.replay import load_client_order
                order = load_client_order(cfg.client_order, cfg.num_clients, cfg.num_steps)[:, None]
            comm = communication(self.alg, cfg)
            if not resumed:
                group.records = [RunRecord(group.run_config(0), {
                    "config": group.run_config(0).to_dict(), "data": self.record["data"],
                    "environment": rio.environment(),
                    "algorithm": {**self.alg.describe(), "lr": cfg.effective_lr,
                                  "conv_impl": resolve_conv_impl(cfg)},
                    "group": None, "communication": comm, "compile_s": compile_s, "status": "running",
                    "curves": [], "best": None,
                    "flower": {"flwr": _flwr_version(), "federation_id": self.fid, "faults": [], "wire": {},
                               "round_timeout_s": self.round_timeout,
                               "fault_policy": "skip the round: hypernetwork unchanged, round counted"}},
                    wall_s=time.perf_counter() - t0)]
            else:
                rec = group.records[0]
                rec.results.setdefault("resumed", []).append({"at_step": group.step, "compile_s": compile_s})
                self.faults = rec.results.get("flower", {}).get("faults", [])
                self.round_s = rec.results.get("flower", {}).get("round_s", [])
                w = rec.results.get("flower", {}).get("wire", {}).get("counts")
                if w:
                    self.clients.wire = {k: list(v) for k, v in w.items()}
            log(f"flower: waiting for the {cfg.num_clients} clients' SuperNodes")
            missing = self.clients.wait_for(range(cfg.num_clients), self.node_wait)
            if missing:
                raise UserError(f"flower: {len(missing)} of {cfg.num_clients} clients never connected within "
                                f"{self.node_wait:g} s: {missing[:10]}")
            log(f"flower: {cfg.num_clients} clients connected; training from round {group.step + 1}")
            return self._loop(group, state, ckpt, stop, order, progress)

    def _record_flower(self, group: Group) -> None:
        rec = group.records[0]
        rounds = max(group.step, 1)
        w = self.clients.wire
        rec.results["flower"]["faults"] = self.faults
        rec.results["flower"]["round_s"] = self.round_s
        rec.results["flower"]["wire"] = {
            "counts": w,
            "what": "serialized Flower objects (message, records, arrays) per message, as Flower deflates them "
                    "for the wire; TLS and HTTP framing not included",
            "train_bytes_down_per_round": w["train"][1] / rounds, "train_bytes_up_per_round": w["train"][2] / rounds,
            "evaluate_bytes_down": w["evaluate"][1], "evaluate_bytes_up": w["evaluate"][2],
            "query_bytes": w["query"][1] + w["query"][2]}

    def _loop(self, group: Group, state: ServerRunState, ckpt, stop: dict, order, progress: bool) -> dict:
        from pfedhn_jax.loop import all_finite, is_eval_step, progress_bar
        cfg = self.cfg
        step = group.step
        rec = group.records[0]

        def checkpoint():
            if ckpt is None or ckpt.latest_step() == step:
                return
            check_finite(group.pending, step - len(group.pending), group.labels)
            if not all_finite(state.server.params):
                raise DivergenceError(f"training diverged by round {step}: non-finite hypernetwork parameters")
            self._record_flower(group)
            ckpt.save(step, state, group.host())

        bar = progress_bar(cfg.num_steps, progress, initial=step)
        try:
            t_seg = time.perf_counter()
            while step < cfg.num_steps and stop["signal"] is None:
                committed = ckpt.latest_step() or 0
                t_round = time.perf_counter()
                state, metrics = self.train_round(state, None if order is None else order[step], committed)
                jax.block_until_ready(state)
                self.round_s.append(time.perf_counter() - t_round)
                if metrics is not None:
                    group.pending.append(metrics)
                step = group.step = step + 1
                bar.update(1)
                if is_eval_step(step, cfg):
                    losses = check_finite(group.pending, step - len(group.pending), group.labels)
                    rec.train_s += time.perf_counter() - t_seg
                    t_eval = time.perf_counter()
                    pooled = self.evaluate_round(state)
                    if pooled is not None:
                        val, test, missing = pooled
                        loss = float(losses[:, 0].mean()) if losses.size else float("nan")
                        point = rec.add_evaluation(step, loss, val, test, time.perf_counter() - t_eval)
                        if missing:
                            point["missing_clients"] = missing
                        group.pending = []
                        bar.set_postfix(val=f"{val['acc']:.4f}", test=f"{test['acc']:.4f}",
                                        test_at_best_val=f"{rec.tracker.test_acc:.4f}")
                    else:
                        rec.eval_s += time.perf_counter() - t_eval
                    self._record_flower(group)
                    group.write("running")
                    t_seg = time.perf_counter()
                if step == cfg.num_steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    rec.train_s += time.perf_counter() - t_seg
                    checkpoint()
                    t_seg = time.perf_counter()
            if stop["signal"] is not None and step < cfg.num_steps:
                checkpoint()
                self._record_flower(group)
                group.write("interrupted")
                log(f"stopped: interrupted by {stop['signal']} after round {step}; checkpoint of step {step} saved "
                    f"in {ckpt.directory}; start the server again on the same --out to continue")
                return {**rec.results, "state": state}
        except DivergenceError as e:
            rec.results["error"] = str(e)
            group.write("diverged")
            raise
        finally:
            bar.close()
            if ckpt is not None:
                ckpt.close()
        self._record_flower(group)
        group.write("finished")
        rio.plot_run(rec.results, self.out / "curves.png")
        print(summary_line(rec.results), file=sys.stderr, flush=True)
        return {**rec.results, "state": state}


def summary_line(res: dict) -> str:
    """scripts/train.py's last line, plus the bytes Flower moved."""
    b, comm, w = res["best"], res.get("communication") or {}, res["flower"]["wire"]
    return (f"test acc at the best val step {b['best_step']}: {b['test_acc']:.4f} (val {b['best_val_acc']:.4f}; "
            f"per client min {b['test_min']:.4f} max {b['test_max']:.4f} std {b['test_std']:.4f}); "
            f"wall {res['timing']['wall_s']:.0f} s, compile {res['compile_s']:.1f} s; "
            f"{comm.get('bytes_down_per_round', 0) / 1e6:.2f} MB down and up per round, hypernetwork "
            f"{comm.get('hypernet_bytes', 0) / 1e6:.1f} MB (never sent); on the wire "
            f"{w['train_bytes_down_per_round'] / 1e6:.3f} MB down, {w['train_bytes_up_per_round'] / 1e6:.3f} MB up "
            f"per training round")
