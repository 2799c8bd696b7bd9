"""The compiled programs of a group of R runs: one outer step of every run, every run's evaluation.

The runs of a group share the algorithm (any `algorithms.base.FederatedAlgorithm`) and the images
and differ in their seed (split, initial weights, client and batch draws) and swept learning rate
(`with_learning_rate`): the state and the per-client
index arrays carry a leading run axis, which `vmap` batches and the mesh axis 'runs' shards, so R
runs train in one program on every device (on CPU the runs of a device go one after another,
`run_by_run`, which is faster there). A single run with several clients per step shards its
clients over the mesh axis 'clients' instead (`client_sharding`). A group of one runs the
plain program (`alg.step` on unbatched leaves), so a single run is exactly the library's step;
tests check that R runs in one program give the numbers of R single runs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pfedhn_jax.algorithms.base import StepMetrics
from pfedhn_jax.builders import build_algorithm
from pfedhn_jax.xla import at_precision, compiler_options, init_compiler_options, matmul_precision, resolve_conv_impl
from pfedhn_jax.config import Config
from pfedhn_jax.data.federated import ClientIndex, FederatedData
from pfedhn_jax.errors import UserError

# vmap axes of FederatedData in a group: images shared, per-client index arrays per run
DATA_RUN_AXES = FederatedData(None, None, None, None, 0, 0, 0)


def device_mesh(num_runs: int, clients_per_step: int = 1, devices: list | None = None) -> Mesh | None:
    """A 2-D mesh ('runs', 'clients') over the devices (all processes'), or None for one device.

    Several runs: every device on 'runs' (`num_runs` must divide by the device count: pad the group
    first, `padded_size`). One run with several clients per step: every device on 'clients'; an
    indivisible --clients-per-step is refused (padding clients would change the averaged VJP).
    """
    devices = jax.devices() if devices is None else devices
    d = len(devices)
    if d == 1 or (num_runs == 1 and clients_per_step == 1):
        return None
    if num_runs > 1:
        if num_runs % d:
            raise ValueError(f"{num_runs} runs do not divide over {d} devices; pad the group")
        shape = (d, 1)
    elif clients_per_step % d:
        raise UserError(f"--clients-per-step: {clients_per_step} clients do not divide over {d} devices; "
                        f"use a multiple of {d}, or fewer devices (--cpu-devices)")
    else:
        shape = (1, d)
    return Mesh(np.array(devices).reshape(shape), ("runs", "clients"))


def run_by_run(fn, mesh: Mesh | None):
    """fn(data, *args) of one run -> the same over a group, one run after another (`lax.map`).

    data's per-client index arrays and every leaf of args carry a leading run axis, as do the
    results; with a mesh, each device maps over its own runs (`shard_map` over 'runs'). On CPU
    this beats `vmap` over runs, whose per-run kernels turn convolutions into im2col or grouped
    ones (benchmarks/RESULTS.md), and each run computes exactly as the plain program does.
    """
    def local(data: FederatedData, *args):
        one = lambda a: fn(data._replace(train=a[0], val=a[1], test=a[2]), *a[3])
        return jax.lax.map(one, (data.train, data.val, data.test, args))

    if mesh is None:
        return local
    runs = ClientIndex(P("runs"), P("runs"))
    data_spec = FederatedData(P(), P(), P(), P(), runs, runs, runs)
    return lambda data, *args: jax.shard_map(local, mesh=mesh, in_specs=(data_spec,) + (P("runs"),) * len(args),
                                             out_specs=P("runs"))(data, *args)


# compiled (step, evaluation) of recent Trainers, keyed by algorithm, run count, mesh and shapes
_PROGRAMS: dict = {}


def padded_size(num_runs: int, num_devices: int) -> int:
    """Runs needed to fill every device evenly (the extra runs repeat the last one and are discarded)."""
    return -(-num_runs // num_devices) * num_devices


class GroupPrograms:
    """Compiled step and evaluation for `num_runs` runs of one config's algorithm (what the loop runs).

    data: FederatedData whose ClientIndex leaves have a leading run axis (R, N, L).
    States passed in and out have a leading run axis R on every leaf.
    by_run: step and evaluate several runs one after another (`run_by_run`) instead of under
    `vmap`; default: on CPU, where it is faster.
    """

    def __init__(self, cfg: Config, data: FederatedData, num_runs: int, mesh: Mesh | None = None,
                 by_run: bool | None = None):
        self.cfg, self.num_runs, self.mesh = cfg, num_runs, mesh
        self.by_run = num_runs > 1 and (jax.default_backend() == "cpu" if by_run is None else by_run)
        client_mesh = mesh is not None and mesh.shape["clients"] > 1  # the step's clients vmapped, spread
        vmapped = (num_runs > 1 and not self.by_run) or client_mesh  # local loops under vmap: another convolution
        self.conv_impl = resolve_conv_impl(cfg, vmapped)
        self.alg = build_algorithm(cfg, vmapped)
        if client_mesh:
            self.alg = dataclasses.replace(self.alg, client_sharding=NamedSharding(mesh, P("clients")))
        alg, n = self.alg, cfg.num_clients
        clients_per_batch = None if jax.default_backend() == "cpu" else n  # all clients at once off CPU
        spread = alg.client_sharding is not None and n % mesh.shape["clients"] == 0

        def evaluate_run(data: FederatedData, state: Any):
            # spread: every client at once, the clients split over the devices like training
            return tuple(alg.evaluate(state, data, split, n if spread else clients_per_batch,
                                      alg.client_sharding if spread else None) for split in (data.val, data.test))

        if num_runs == 1:  # the plain program: squeeze the run axis in, expand it out
            squeeze = lambda t: jax.tree.map(lambda a: a[0], t)
            expand = lambda t: jax.tree.map(lambda a: a[None], t)
            one = lambda data: data._replace(**{k: squeeze(getattr(data, k)) for k in ("train", "val", "test")})
            step = lambda data, state, ids: expand(alg.step(one(data), squeeze(state), None if ids is None else ids[0]))
            ev = lambda data, state: expand(evaluate_run(one(data), squeeze(state)))
        elif self.by_run:
            steps, ev = run_by_run(alg.step, mesh), run_by_run(evaluate_run, mesh)
            step = lambda data, state, ids: steps(data, state) if ids is None else steps(data, state, ids)
        else:
            step = jax.vmap(alg.step, in_axes=(DATA_RUN_AXES, 0, 0))
            ev = jax.vmap(evaluate_run, in_axes=(DATA_RUN_AXES, 0))
        step, ev = at_precision(cfg, step), at_precision(cfg, ev)
        self.data = self._place(data)
        opts = compiler_options()
        # with a mesh: states stay sharded over 'runs'; metrics and evaluations come back replicated,
        # so every process (of a multi-host job) can read them
        runs, rep = (None, None) if mesh is None else (NamedSharding(mesh, P("runs")), NamedSharding(mesh, P()))
        self._jitted = (jax.jit(step, compiler_options=opts, out_shardings=None if mesh is None else (runs, rep)),
                        jax.jit(ev, compiler_options=opts, out_shardings=rep))
        self._step, self._eval = self._jitted  # until `compile` swaps in the compiled programs

        def init(key_data, lrs):
            return alg.with_learning_rate(jax.vmap(alg.init)(jax.random.wrap_key_data(key_data)), lrs)

        self._init = jax.jit(init, out_shardings=runs, compiler_options=init_compiler_options())

    def _place(self, data: FederatedData) -> FederatedData:
        """Images replicated, per-run index arrays sharded over the 'runs' axis (with a mesh).

        Built from host copies with `make_array_from_callback`, so it also works when the mesh
        spans several processes (each holds the same host data and fills its own devices).
        """
        if self.mesh is None:
            return data
        rep, runs = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("runs"))
        place = lambda a, s: (lambda h: jax.make_array_from_callback(h.shape, s, lambda i: h[i]))(np.asarray(a))
        per_run = ClientIndex(runs, runs)
        return jax.tree.map(place, data, FederatedData(rep, rep, rep, rep, per_run, per_run, per_run))

    def init(self, seeds: list[int], lrs: list[float] | None = None) -> Any:
        """Initial states of the runs, one per seed (each equal to `alg.init(jax.random.key(seed))`),
        each with its own hypernetwork learning rate (`lrs`, default the config's)."""
        key_data = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in seeds])
        lrs = [self.alg.learning_rate] * len(seeds) if lrs is None else lrs
        return self._init(key_data, np.asarray(lrs, np.float32))

    def _client_ids(self, with_client_ids: bool) -> jax.Array | None:
        """The shape of replayed clients (R, C) for tracing, or None (the step samples them)."""
        return jnp.zeros((self.num_runs, self.cfg.clients_per_step), jnp.int32) if with_client_ids else None

    def lower(self, state: Any, with_client_ids: bool = False) -> tuple[jax.stages.Lowered, jax.stages.Lowered]:
        """The step (for sampled clients, or for given ones when replaying) and the evaluation,
        traced and lowered for these shapes; `.as_text()` shows a program, `.compile()` builds it."""
        ids = self._client_ids(with_client_ids)
        step, ev = self._jitted
        return step.lower(self.data, state, ids), ev.lower(self.data, state)

    def compile(self, state: Any, with_client_ids: bool = False) -> float:
        """Compile `lower`'s programs ahead of time; returns seconds spent. A later GroupPrograms of the
        same algorithm, precision, mesh and shapes in this process reuses the executables (a grid,
        a resumed run, tests)."""
        t0 = time.perf_counter()
        ids = self._client_ids(with_client_ids)
        avals = jax.tree.map(lambda a: (a.shape, a.dtype, getattr(a, "sharding", None)), (self.data, state, ids))
        with matmul_precision(self.cfg):  # the precision the programs are traced at
            precision = jax.default_matmul_precision.value
        key = (self.alg, precision, self.num_runs, self.mesh, self.by_run, jax.tree.structure(avals),
               tuple(jax.tree.leaves(avals)))
        try:
            programs = _PROGRAMS.pop(key, None)
        except TypeError:  # an unhashable algorithm (e.g. a user's target): no reuse
            key, programs = None, None
        if programs is None:
            programs = tuple(lowered.compile() for lowered in self.lower(state, with_client_ids))
        if key is not None:
            _PROGRAMS[key] = programs  # most recent last
            while len(_PROGRAMS) > 8:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
        self._step, self._eval = programs
        return time.perf_counter() - t0

    def step(self, state: Any, client_ids: np.ndarray | None = None) -> tuple[Any, StepMetrics]:
        """One outer step of every run; client_ids (R, C) replays given clients instead of sampling
        (the program must have been compiled `with_client_ids`)."""
        return self._step(self.data, state, None if client_ids is None else jnp.asarray(client_ids, jnp.int32))

    def evaluate_runs(self, state: Any) -> list[tuple[dict, dict]]:
        """(val, test) summaries of every run (`evaluate.summarize`), in run order."""
        val, test = jax.device_get(self._eval(self.data, state))
        pick = lambda m, r: jax.tree.map(lambda a: a[r], m)
        return [tuple(self.alg.summarize(pick(m, r)) for m in (val, test)) for r in range(self.num_runs)]


def train_plain(alg, data: FederatedData, key: jax.Array, steps: int, log=None, log_every: int = 50) -> Any:
    """`steps` rounds of any algorithm's jitted `step` from `alg.init(key)`: the plain loop, without
    evaluation, checkpoints or resume (the novel-client experiment). log(step, mean local loss since
    the last call) every log_every steps and after the last one. Raises FloatingPointError on a
    non-finite loss."""
    opts = compiler_options()
    step = jax.jit(alg.step, compiler_options=opts)
    state = jax.jit(alg.init, compiler_options=init_compiler_options())(key)
    losses = []
    for s in range(1, steps + 1):
        state, m = step(data, state)
        losses.append(m.loss)
        if s % log_every == 0 or s == steps:
            mean = float(jnp.mean(jnp.stack(losses)))
            losses = []
            if not np.isfinite(mean):
                raise FloatingPointError(f"training diverged before round {s} (loss {mean})")
            if log is not None:
                log(s, mean)
    return state
