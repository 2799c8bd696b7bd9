"""Replay a reference run's initial state (--init-from): its initial hypernetwork and, for
pFedHN-PC, each client's private head, from the dump described in `data/replay.py` (whose file
helpers this uses). Beside `interop`, whose PyTorch layouts it reads, and above the algorithm whose
state it builds, so that nothing in `data/` imports upward.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax.algorithm import PFedHN, TrainState
from pfedhn_jax.data.replay import DUMP_HINT, INIT_FLAG, _check_clients, _ids, _read_npz
from pfedhn_jax.errors import UserError


def load_hypernet_params(arrays: Mapping[str, np.ndarray], path: str | Path, alg: PFedHN,
                         template: dict) -> dict:
    """Our hypernetwork params (numpy) from the dump's `hnet/*` (a reference CNNHyper state_dict).

    template: the run's hypernetwork params; its torch-layout names and shapes are what the dump
    must hold (so a dump of another client count, width or depth is refused by name).
    """
    from pfedhn_jax.interop import from_torch_hypernet, to_torch_hypernet

    state = {k[len("hnet/"):]: v for k, v in arrays.items() if k.startswith("hnet/")}
    if not state:
        raise UserError(f"{INIT_FLAG}: {path} has no hnet/* arrays (the initial hypernetwork); {DUMP_HINT}")
    want = {k: v.shape for k, v in to_torch_hypernet(template, alg.hnet).items()}
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = [f"{k} {state[k].shape} (expected {want[k]})" for k in want if k in state and state[k].shape != want[k]]
    if missing or extra or wrong:
        detail = "; ".join(s for s in (f"missing {_ids(missing)}" if missing else "",
                                       f"unexpected {_ids(extra)}" if extra else "",
                                       f"shapes {_ids(wrong)}" if wrong else "") if s)
        raise UserError(f"{INIT_FLAG}: {path}: the dumped hypernetwork does not match this run's ({detail}); use "
                        "the reference's --num-clients, --embed-dim, --hyper-hid, --n-hidden and --n-kernels")
    nonfloat = sorted(k for k, v in state.items() if not np.issubdtype(v.dtype, np.floating))
    if nonfloat:
        raise UserError(f"{INIT_FLAG}: {path}: hnet arrays {_ids(nonfloat)} are not floating point; {DUMP_HINT}")
    return from_torch_hypernet(state, alg.hnet)


def load_private_heads(arrays: Mapping[str, np.ndarray], path: str | Path, alg: PFedHN,
                       template: dict) -> dict:
    """pFedHN-PC: the clients' private heads from `local/<c>/*weight|*bias`, stacked.

    template: the run's private params (`state.clients.private`), which must be one dense layer
    {layer: {'kernel': (N, in, out), 'bias': (N, out)}}, as the reference's one nn.Linear per
    client. Torch (out, in) weights are converted to our (in, out) kernels; returns numpy leaves
    with the template's structure.
    """
    from pfedhn_jax.interop import target_from_torch

    layer = next(iter(template), None)
    if len(template) != 1 or set(template[layer]) != {"kernel", "bias"} or template[layer]["kernel"].ndim != 3:
        raise UserError(f"{INIT_FLAG}: the reference has one private dense layer per client, this run's private "
                        f"params are {jax.tree.map(lambda a: tuple(a.shape[1:]), template)}; replay it with "
                        "--algo pfedhn-pc on the CIFAR target")
    n, n_in, n_out = template[layer]["kernel"].shape
    clients: dict[str, dict[str, str]] = {}  # client id -> {name: key}
    for k in arrays:
        if k.startswith("local/"):
            c, _, name = k[len("local/"):].partition("/")
            clients.setdefault(c, {})[name] = k
    _check_clients(clients, n, INIT_FLAG, path, "the private heads (local/<c>/*)")
    weights, biases = [], []
    for c in range(n):
        names = clients[str(c)]
        w = [k for name, k in names.items() if name.endswith("weight")]
        b = [k for name, k in names.items() if name.endswith("bias")]
        if len(w) != 1 or len(b) != 1 or len(names) != 2:
            raise UserError(f"{INIT_FLAG}: {path}: local/{c}/ must hold one Linear layer (a *weight and a *bias), "
                            f"got {_ids(names)}; {DUMP_HINT}")
        w, b = arrays[w[0]], arrays[b[0]]
        if w.shape != (n_out, n_in) or b.shape != (n_out,):
            raise UserError(f"{INIT_FLAG}: {path}: client {c}'s private head has weight {w.shape} and bias "
                            f"{b.shape}, expected ({n_out}, {n_in}) and ({n_out},) (torch layout, out x in); "
                            "use the dataset (class count) the reference ran on")
        weights.append(w)
        biases.append(b)
    return target_from_torch({f"{layer}.weight": np.stack(weights), f"{layer}.bias": np.stack(biases)},
                             alg.target)


def _cast_like(template, tree, what: str, path: str | Path):
    """tree's leaves as device arrays with the template's structure, shapes and dtypes."""
    if jax.tree.structure(template) != jax.tree.structure(tree):
        raise UserError(f"{INIT_FLAG}: {path}: {what} has the structure {jax.tree.structure(tree)}, "
                        f"this run expects {jax.tree.structure(template)}")
    for t, a in zip(jax.tree.leaves(template), jax.tree.leaves(tree)):
        if tuple(t.shape) != tuple(np.shape(a)):
            raise UserError(f"{INIT_FLAG}: {path}: {what} has a leaf of shape {np.shape(a)} where this run "
                            f"expects {tuple(t.shape)}")
    return jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), template, tree)


def load_initial_state(path: str | Path, alg: PFedHN, state: TrainState) -> TrainState:
    """`state` with the reference's initial weights from a dump (`hnet/*`, and `local/<c>/*` for -PC).

    The hypernetwork params are replaced (converted from PyTorch layout) and the server optimizer
    state re-initialised for them; for pFedHN-PC each client's private head is replaced and its
    optimizer state re-initialised. The step counter and PRNG key are kept, so call this on the
    state of `alg.init(key)` before training.
    """
    from pfedhn_jax.algorithm import ClientState
    from pfedhn_jax.server import ServerState

    arrays = _read_npz(path, INIT_FLAG, ("hnet/", "local/"))
    pc_dump = any(k.startswith("local/") for k in arrays)
    pc_run = bool(jax.tree.leaves(state.clients.private))
    if pc_dump != pc_run:
        dumped, run = ("pFedHN-PC", "pfedhn") if pc_dump else ("pFedHN", "pfedhn-pc")
        raise UserError(f"{INIT_FLAG}: {path} is a dump of {dumped} but this run is --algo {run}; pass --algo "
                        f"{'pfedhn-pc' if pc_dump else 'pfedhn'}, or dump the other trainer")
    params = _cast_like(state.server.params, load_hypernet_params(arrays, path, alg, state.server.params),
                        "the hypernetwork", path)
    server = ServerState(params, jax.jit(alg.server_optimizer().init)(params))  # one compile, not one per leaf
    clients = state.clients
    if pc_run:
        private = _cast_like(state.clients.private, load_private_heads(arrays, path, alg, state.clients.private),
                             "the private heads", path)
        opt_state = jax.jit(jax.vmap(alg.private_optimizer().init, axis_size=alg.hnet.num_clients))(private)
        clients = ClientState(private, opt_state)
    return state._replace(server=server, clients=clients)
