"""Heterogeneous targets ("computational budget", paper Sec. 5.2 / Table 2; docs/reference.md §7).

One hypernetwork serves clients whose target networks differ in size (e.g. the CIFAR CNN at 8, 16
and 32 kernels). As the paper describes it, the hypernetwork emits ONE vector as long as all the
architectures' parameter counts together, and each client uses the slice of its own architecture:

  φ = {'embeddings': (N, e), 'mlp': HyperNetwork's trunk, 'head': {'kernel': (H, S), 'bias': (S,)}}
  h(v_i; φ) = mlp(v_i) @ head.kernel + head.bias  ∈ R^S,   S = Σ_a size_a
  θ_i = unflatten_a(h[off_a : off_a + size_a]),   a = arch(i)

The one flat head is a single linear layer, as in the paper; architecture a owns the column block
[off_a, off_a + size_a). Inside a block the layout is the target's `jax.tree` flatten order, each
tensor row-major, and the block's columns are initialised like HyperNetwork's per-tensor heads (the
same PRNG keys, PyTorch-default U(±1/√H)): with a single architecture the generated weights equal
the plain HyperNetwork's (tests/test_hetero.py). Per-architecture heads would be the same function
(a column partition of this one layer) but not the paper's description. A client receives only its
slice; θ̃ − θ is zero outside it, so the VJP gives exactly zero gradient to the other blocks and to
the other clients' embeddings. pFedHN only (no private head).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax import client, evaluate, server
from pfedhn_jax.algorithm import ClientState, PFedHNSettings, StepMetrics, TrainState
from pfedhn_jax.algorithms.common import tree_bytes, tree_size
from pfedhn_jax.data.federated import ClientIndex, FederatedData, sample_batch
from pfedhn_jax.hypernet import HyperNetwork, initial_layers, param_shapes
from pfedhn_jax.targets import Params, Target


def round_robin(num_clients: int, num_archs: int) -> tuple[int, ...]:
    """Client i gets architecture i mod A."""
    return tuple(i % num_archs for i in range(num_clients))


@dataclasses.dataclass(frozen=True)
class HeteroHyperNetwork:
    """One embedding table + one MLP trunk + one flat head covering all `targets`.

    targets: the A architectures (hashable `Target`s). assignment: architecture of each client,
    (N,) ints in [0, A); () means round-robin. embed_dim -1: int(1 + N/4), as HyperNetwork.
    """

    targets: tuple[Target, ...]
    num_clients: int
    assignment: tuple[int, ...] = ()
    embed_dim: int = -1
    hidden_dim: int = 100
    n_hidden: int = 3

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        a = tuple(int(x) for x in self.assignment) or round_robin(self.num_clients, len(self.targets))
        if not self.targets:
            raise ValueError("need at least one target")
        if len(a) != self.num_clients or not all(0 <= x < len(self.targets) for x in a):
            raise ValueError(f"assignment must be {self.num_clients} ints in [0, {len(self.targets)}), got {a}")
        object.__setattr__(self, "assignment", a)

    @property
    def num_archs(self) -> int:
        return len(self.targets)

    def arch_hnet(self, a: int) -> HyperNetwork:
        """The plain HyperNetwork of architecture a (same trunk conventions; used for shapes and features)."""
        return HyperNetwork(self.targets[a], self.num_clients, self.embed_dim, self.hidden_dim, self.n_hidden)

    @property
    def embedding_dim(self) -> int:
        return self.arch_hnet(0).embedding_dim

    def arch_shapes(self, a: int) -> Params:
        """ShapeDtypeStructs of architecture a's params (`jax.eval_shape(target.init)`)."""
        return param_shapes(self.targets[a])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Parameter count of each architecture, (A,)."""
        return tuple(sum(math.prod(s.shape) for s in jax.tree.leaves(self.arch_shapes(a)))
                     for a in range(self.num_archs))

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each architecture's slice in the flat vector, (A,)."""
        return tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))

    @property
    def total_size(self) -> int:
        return sum(self.sizes)

    def clients_of(self, a: int) -> tuple[int, ...]:
        return tuple(i for i, x in enumerate(self.assignment) if x == a)

    def init(self, key: jax.Array) -> Params:
        """PyTorch-default init; the key is used exactly as `HyperNetwork.init` uses it.

        head block of leaf j (over all architectures, in order) from `split(k_heads, total_leaves)[j]`.
        """
        leaves = [s for a in range(self.num_archs) for s in jax.tree.leaves(self.arch_shapes(a))]
        embeddings, mlp, blocks = initial_layers(key, self.num_clients, self.embedding_dim, self.hidden_dim,
                                                 self.n_hidden, [math.prod(s.shape) for s in leaves])
        return {"embeddings": embeddings, "mlp": mlp,
                "head": {"kernel": jnp.concatenate([b["kernel"] for b in blocks], 1),
                         "bias": jnp.concatenate([b["bias"] for b in blocks])}}

    def features(self, params: Params, client_ids: jax.Array) -> jax.Array:
        """client_ids (...,) -> trunk features (..., H) (HyperNetwork.features)."""
        return self.arch_hnet(0).features(params, client_ids)

    def apply(self, params: Params, client_ids: jax.Array) -> jax.Array:
        """The paper's one long vector: client_ids (...,) -> (..., S), every architecture's slice."""
        h = self.features(params, jnp.asarray(client_ids))
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    def apply_arch(self, params: Params, client_ids: jax.Array, a: int) -> Params:
        """Only architecture a's slice: client_ids (...,) -> a's params tree, leaves (..., *shape)."""
        off, n = self.offsets[a], self.sizes[a]
        h = self.features(params, jnp.asarray(client_ids))
        return self.unflatten(h @ params["head"]["kernel"][:, off:off + n] + params["head"]["bias"][off:off + n], a)

    def unflatten(self, flat: jax.Array, a: int) -> Params:
        """(..., size_a) -> architecture a's params tree, leaves (..., *shape)."""
        shapes = self.arch_shapes(a)
        leaves, treedef = jax.tree.flatten(shapes)
        ends = np.cumsum([math.prod(s.shape) for s in leaves])
        lead = flat.shape[:-1]
        parts = [flat[..., e - math.prod(s.shape):e].reshape(lead + s.shape) for s, e in zip(leaves, ends)]
        return jax.tree.unflatten(treedef, parts)

    def flatten(self, tree: Params, a: int, lead: tuple[int, ...] = ()) -> jax.Array:
        """Inverse of `unflatten`: a's params tree (leaves (*lead, *shape)) -> (*lead, size_a)."""
        jax.tree.map(lambda s, x: None, self.arch_shapes(a), tree)  # same structure, or raises
        return jnp.concatenate([x.reshape(lead + (-1,)) for x in jax.tree.leaves(tree)], -1)


@dataclasses.dataclass(frozen=True)
class HeteroPFedHN(PFedHNSettings):
    """pFedHN over heterogeneous targets: the interface (`init`, `step`, `evaluate`, ...) as
    `algorithm.PFedHN`, and `arch_params` (one architecture's clients' models).

    Same defaults and optimizers (optim.torch_sgd locally, server.hyper_optimizer for φ). The sampled
    clients of one step may have different architectures: each client runs `lax.switch` over the
    architectures' local updates (one compiled program; only its own branch runs under the
    'loop'/'map' strategies, while 'vmap' turns the switch into a select that runs every branch).
    """

    hnet: HeteroHyperNetwork   # hyperparameters, optimizers and validation: PFedHNSettings'

    def describe(self) -> dict:
        return {"name": "pfedhn", "lr": self.lr, "lr_meaning": "hypernetwork learning rate",
                "embed_dim": self.hnet.embedding_dim, "arch_params": list(self.hnet.sizes)}

    def communication(self, num_steps: int) -> dict:
        """Per architecture: bytes per client each way; per round: the expectation under uniform sampling."""
        c = communication(self.hnet, self.clients_per_step)
        per_round = c.pop("expected_bytes_down_per_round")
        c.pop("expected_bytes_up_per_round")
        return {**c, "bytes_down_per_round": per_round, "bytes_up_per_round": per_round,
                "bytes_total": 2 * per_round * num_steps, "per_round": "expected under uniform client sampling"}

    def summarize(self, metrics: evaluate.ClientMetrics) -> dict:
        """`evaluate.summarize`, plus "per_arch": pooled within each architecture's clients."""
        return {**evaluate.summarize(metrics), "per_arch": summarize_arches(self.hnet, metrics)}

    def init(self, key: jax.Array) -> TrainState:
        """As PFedHN.init (same key use), with no private part: clients = ClientState({}, state of {})."""
        k_hnet, _, k_run = jax.random.split(key, 3)
        srv = server.init_server(self.hnet, self.server_optimizer(), k_hnet)
        opt_state = jax.vmap(self.private_optimizer().init, axis_size=self.hnet.num_clients)({})
        return TrainState(jnp.zeros((), jnp.int32), srv, ClientState({}, opt_state), k_run)

    def arch_params(self, state: TrainState, arch: int, client_ids: Sequence[int] | None = None) -> Params:
        """Architecture `arch`'s params for its clients (default: all of them, ascending). Leaves (C, ...)."""
        ids = self.hnet.clients_of(arch) if client_ids is None else tuple(client_ids)
        if any(self.hnet.assignment[i] != arch for i in ids):
            raise ValueError(f"clients {ids} are not all of architecture {arch}")
        return self.hnet.apply_arch(state.server.params, jnp.asarray(ids, jnp.int32), arch)

    def evaluate(self, state: TrainState, data: FederatedData, split: ClientIndex,
                 clients_per_batch: int | None = None, sharding=None) -> evaluate.ClientMetrics:
        """Every client with its own architecture's model (`evaluate_arches`), leaves (N,) in client
        order. `sharding` is ignored: the architectures' programs differ in shape."""
        mets = evaluate_arches(self, state, data, split, clients_per_batch)
        order = np.argsort(np.concatenate([self.hnet.clients_of(a) for a in range(self.hnet.num_archs)]))
        return evaluate.ClientMetrics(*(jnp.concatenate([m[k] for m in mets])[order] for k in range(3)))

    def local_round(self, data: FederatedData, params: Params, ids: jax.Array,
                    keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Clients `ids` (C,) train on their slices. -> θ (C, S), θ̃ (C, S) (= θ outside each slice), loss (C,)."""
        hn, theta_opt, private_opt = self.hnet, self.theta_optimizer(), self.private_optimizer()
        arch_of = jnp.asarray(hn.assignment, jnp.int32)
        theta = hn.apply(params, ids)

        def branch(a: int):
            off, n = hn.offsets[a], hn.sizes[a]

            def run(cid, th_full, k):
                batch_fn = lambda kb: sample_batch(data, data.train, cid, kb, self.batch_size)
                res = client.local_update(hn.targets[a].apply, hn.unflatten(th_full[off:off + n], a), {},
                                          private_opt.init({}), batch_fn, k, self.inner_steps, theta_opt,
                                          private_opt, self.unroll)
                return th_full.at[off:off + n].set(hn.flatten(res.theta, a)), res.loss
            return run

        branches = [branch(a) for a in range(hn.num_archs)]
        one = lambda cid, th, k: jax.lax.switch(arch_of[cid], branches, cid, th, k)
        theta_tilde, loss = client.run_clients(one, (ids, theta, keys), self.strategy)
        return theta, theta_tilde, loss

    def step(self, data: FederatedData, state: TrainState,
             client_ids: jax.Array | None = None) -> tuple[TrainState, StepMetrics]:
        """One outer step (pure; jit it with `data` as an argument); PRNG use as PFedHN.step."""
        key, k_ids, k_local = jax.random.split(state.key, 3)
        ids = self.sample_clients(k_ids, client_ids)
        theta, theta_tilde, loss = self.local_round(data, state.server.params, ids,
                                                    jax.random.split(k_local, self.clients_per_step))
        srv = server.server_update(self.hnet, self.server_optimizer(), state.server, ids, theta_tilde)
        delta = jnp.linalg.norm(theta - theta_tilde, axis=-1)
        return TrainState(state.step + 1, srv, state.clients, key), StepMetrics(ids, loss, delta)


def evaluate_arches(alg: HeteroPFedHN, state: TrainState, data: FederatedData, split: ClientIndex,
                    clients_per_batch: int | None = None) -> list[evaluate.ClientMetrics]:
    """Per architecture a: `evaluate_clients` of its clients (ascending ids) on `split`; leaves (N_a,)."""
    out = []
    for a in range(alg.hnet.num_archs):
        ids = np.asarray(alg.hnet.clients_of(a), np.int32)
        sub = ClientIndex(split.index[ids], split.count[ids])
        batch = None if clients_per_batch is None else len(ids)
        out.append(evaluate.evaluate_clients(alg.hnet.targets[a].apply, alg.arch_params(state, a), data, sub,
                                             batch))
    return out


def summarize_arches(hnet: HeteroHyperNetwork, m: evaluate.ClientMetrics) -> list[dict]:
    """Pooled summary within each architecture's clients (`evaluate.summarize`, without per_client);
    m: every client's metrics, leaves (N,) in client order (`HeteroPFedHN.evaluate`)."""
    pick = lambda a: evaluate.ClientMetrics(*(np.asarray(x)[list(hnet.clients_of(a))] for x in m))
    return [{k: v for k, v in evaluate.summarize(pick(a)).items() if k != "per_client"}
            for a in range(hnet.num_archs)]


def communication(hnet: HeteroHyperNetwork, clients_per_step: int = 1) -> dict:
    """Bytes per client per round (its slice's parameters × dtype size, down θ and up θ̃ − θ) per
    architecture, and the expected bytes per round under uniform client sampling."""
    shapes = jax.eval_shape(hnet.init, jax.random.key(0))
    itemsize = shapes["head"]["kernel"].dtype.itemsize
    per_arch = [{"params": n, "clients": len(hnet.clients_of(a)), "bytes_down_per_client": n * itemsize,
                 "bytes_up_per_client": n * itemsize} for a, n in enumerate(hnet.sizes)]
    mean = sum(hnet.sizes[a] for a in hnet.assignment) * itemsize / hnet.num_clients
    return {"per_arch": per_arch, "flat_vector_params": hnet.total_size,
            "expected_bytes_down_per_round": clients_per_step * mean,
            "expected_bytes_up_per_round": clients_per_step * mean,
            "hypernet_params": tree_size(shapes), "hypernet_bytes": tree_bytes(shapes)}
