"""pFedHN-PC on real CIFAR-10 (JPEG copy; the small slice), tiny configs: the private head persists on its client
with its own optimizer state, never enters the hypernetwork, and is the one evaluated
(docs/reference.md §3 "pFedHN-PC", §5)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax import builders
from pfedhn_jax.programs import GroupPrograms
from pfedhn_jax.config import Config
from pfedhn_jax.server import hypernet_grads

N = 4
TINY = dict(dataset="cifar10", num_clients=N, num_steps=8, inner_steps=2, batch_size=8, n_kernels=4,
            hyper_hid=16, n_hidden=1, eval_every=4, val_size=600, seed=5)
STEPS = 8


def _leaves_equal(a, b) -> bool:
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _row(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


@pytest.fixture(scope="module")
def cfg(small_cifar_dir):
    return Config(data_dir=str(small_cifar_dir), algo="pfedhn-pc", **TINY)


@pytest.fixture(scope="module")
def loaded(cfg):
    return builders.load_data(cfg)  # (FederatedData, SplitSummary, desc)


@pytest.fixture(scope="module")
def pc_run(cfg, loaded):
    """STEPS outer steps of pFedHN-PC: the algorithm, every intermediate state, the sampled ids."""
    data = loaded[0]
    alg = builders.build_algorithm(cfg)
    step = jax.jit(alg.step)
    states, ids = [jax.jit(alg.init)(jax.random.key(cfg.seed))], []
    for _ in range(STEPS):
        s, m = step(data, states[-1])
        states.append(s)
        ids.append(np.asarray(m.client_ids).tolist())
    return alg, step, states, ids


def test_head_changes_only_when_its_client_is_sampled(pc_run):
    alg, _, states, ids = pc_run
    head = alg.target.head
    assert all(len(i) == 1 for i in ids)  # the reference: one client per outer step
    for t, sampled in enumerate(ids):
        before, after = states[t].clients, states[t + 1].clients
        for c in range(N):
            head_moved = not _leaves_equal(_row(before.private[head], c), _row(after.private[head], c))
            opt_moved = not _leaves_equal(_row(before.opt_state, c), _row(after.opt_state, c))
            assert head_moved == (c in sampled), (t, c, sampled)
            assert opt_moved == (c in sampled), (t, c, sampled)


def test_head_momentum_persists_across_rounds(cfg, loaded, pc_run):
    alg, step, states, ids = pc_run
    flat = [i[0] for i in ids]
    traces = lambda s, c: jax.tree.leaves(_row(s.clients.opt_state, c))
    assert all(float(jnp.abs(x).max()) == 0 for c in range(N) for x in traces(states[0], c))  # fresh at start
    # a client sampled twice: its momentum after round 1 is non-zero and is still there when round 2 starts
    t2 = next(t for t, c in enumerate(flat) if c in flat[:t])
    c = flat[t2]
    t1 = max(t for t in range(t2) if flat[t] == c)
    after_first = traces(states[t1 + 1], c)
    assert all(float(jnp.abs(x).max()) > 0 for x in after_first)
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(after_first, traces(states[t2], c)))
    # counterfactual: the same step (same key, same client, same batches) from a reset optimizer state
    # gives a different head, so round 2 really continues round 1's momentum instead of starting over
    s = states[t2]
    fresh = alg.private_optimizer().init(_row(s.clients.private, c))
    reset_opt = jax.tree.map(lambda all_, new: all_.at[c].set(new), s.clients.opt_state, fresh)
    reset = s._replace(clients=s.clients._replace(opt_state=reset_opt))
    got, m = step(loaded[0], reset)
    assert np.asarray(m.client_ids).tolist() == [c]
    head = alg.target.head
    assert not _leaves_equal(_row(got.clients.private[head], c), _row(states[t2 + 1].clients.private[head], c))


def test_hypernetwork_has_no_head_output(cfg, pc_run):
    alg, _, states, _ = pc_run
    head = alg.target.head
    assert alg.hnet.private == (head,)
    params = states[-1].server.params
    layers = set(alg.target.param_shapes())
    assert set(params["heads"]) == layers - {head} and head in layers
    theta = alg.hnet.apply(params, jnp.arange(N))
    assert set(theta) == layers - {head}
    # the VJP's gradient lives on the hypernetwork's parameters only: no head anywhere in it
    one = jnp.array([1])
    grads = jax.eval_shape(lambda p: hypernet_grads(alg.hnet, p, one, alg.hnet.apply(p, one)), params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # and the parameter count is pFedHN's minus exactly the head's generator (H -> 84*10 and H -> 10)
    full_hnet = builders.build_algorithm(dataclasses.replace(cfg, algo="pfedhn")).hnet
    full = jax.eval_shape(full_hnet.init, jax.random.key(0))
    count = lambda p: sum(x.size for x in jax.tree.leaves(p))
    h, (fan, out) = cfg.hyper_hid, alg.target.param_shapes()[head]["kernel"].shape
    assert count(full) - count(params) == (h + 1) * (fan * out) + (h + 1) * out
    # the private heads: one per client, the target's head shape, on the client side of the state
    assert set(states[-1].clients.private) == {head}
    for name, shape in alg.target.param_shapes()[head].items():
        assert states[-1].clients.private[head][name].shape == (N,) + shape.shape


def test_pc_and_pfedhn_same_seed_differ_only_where_they_should(cfg, loaded, pc_run):
    alg_pc, _, states_pc, ids_pc = pc_run
    cfg_hn = dataclasses.replace(cfg, algo="pfedhn")
    data_hn, split_hn, desc_hn = builders.load_data(cfg_hn)
    _, split_pc, desc_pc = loaded
    for a, b in zip(split_pc[1:], split_hn[1:]):  # same data split, client by client
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
    np.testing.assert_array_equal(split_pc.assignment.classes, split_hn.assignment.classes)
    assert desc_pc == desc_hn

    alg_hn = builders.build_algorithm(cfg_hn)
    assert (alg_hn.lr, alg_pc.lr) == (1e-2, 5e-2)  # the reference's two trainers
    assert alg_hn.hnet.private == () and alg_hn.inner_steps == alg_pc.inner_steps
    s_hn = jax.jit(alg_hn.init)(jax.random.key(cfg.seed))
    s_pc = states_pc[0]
    assert s_hn.clients.private == {}
    # the shared trunk of the hypernetwork starts from the same numbers; heads of common layers: same shapes
    assert _leaves_equal(s_hn.server.params["embeddings"], s_pc.server.params["embeddings"])
    assert _leaves_equal(s_hn.server.params["mlp"], s_pc.server.params["mlp"])
    head = alg_pc.target.head
    shapes = lambda t: jax.tree.map(lambda x: x.shape, t)
    assert shapes({k: v for k, v in s_hn.server.params["heads"].items() if k != head}) == \
        shapes(s_pc.server.params["heads"])
    # same sequence of sampled clients (the client choice does not depend on the algorithm)
    step_hn = jax.jit(alg_hn.step)
    ids_hn = []
    for _ in range(STEPS):
        s_hn, m = step_hn(data_hn, s_hn)
        ids_hn.append(np.asarray(m.client_ids).tolist())
    assert ids_hn == ids_pc
    # generated weights: same layers and shapes except the head, which only pFedHN generates
    th_hn = alg_hn.hnet.apply(s_hn.server.params, jnp.arange(N))
    th_pc = alg_pc.hnet.apply(states_pc[-1].server.params, jnp.arange(N))
    assert set(th_hn) - set(th_pc) == {head} and shapes({k: th_hn[k] for k in th_pc}) == shapes(th_pc)
    # personal models: identical structure and shapes for both (the -PC head comes from the client)
    p_hn = alg_hn.personal_params(s_hn, jnp.arange(N))
    p_pc = alg_pc.personal_params(states_pc[-1], jnp.arange(N))
    assert shapes(p_hn) == shapes(p_pc)


def test_evaluation_uses_each_clients_own_head(cfg, loaded, pc_run):
    alg, _, states, _ = pc_run
    data = loaded[0]
    head = alg.target.head
    state = states[-1]
    ids = jnp.array([2, 0, 3])
    pp = alg.personal_params(state, ids)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(pp[head][name], state.clients.private[head][name][ids])
    theta = alg.hnet.apply(state.server.params, ids)
    assert set(pp) == set(theta) | {head}
    assert _leaves_equal({k: pp[k] for k in theta}, theta)

    # the evaluation of the training loop: rig client j's head to always answer class k; only client
    # j's accuracy changes, and it becomes exactly the share of class k in j's own validation set
    stack = lambda t: jax.tree.map(lambda a: a[None], t)  # a group of one run
    group_data = data._replace(**{k: stack(getattr(data, k)) for k in ("train", "val", "test")})
    trainer = GroupPrograms(cfg, group_data, num_runs=1)
    (val0, test0), = trainer.evaluate_runs(stack(state))
    j = 1
    k = int(loaded[1].assignment.classes[j][0])
    priv = state.clients.private
    rigged_head = {"kernel": priv[head]["kernel"].at[j].set(0.0),
                   "bias": priv[head]["bias"].at[j].set(jax.nn.one_hot(k, alg.target.n_classes) * 10.0)}
    rigged = state._replace(clients=state.clients._replace(private={**priv, head: rigged_head}))
    (val1, test1), = trainer.evaluate_runs(stack(rigged))
    for before, after, split in ((val0, val1, data.val), (test0, test1, data.test)):
        idx = np.asarray(split.index[j, :int(split.count[j])])
        want = float(np.mean(np.asarray(data.y)[idx] == k))
        assert after["per_client"][j] == pytest.approx(want, abs=1e-12)
        assert [a for i, a in enumerate(after["per_client"]) if i != j] == \
            [b for i, b in enumerate(before["per_client"]) if i != j]
        assert 0.0 < want < 1.0  # the client holds another class too: a constant answer is not enough
