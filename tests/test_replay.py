"""Replaying a reference run (`pfedhn_jax.data.replay`): each loader honours its file, and each bad
file raises one UserError line that names the flag.

The dump is synthetic but has the exact key layout of the tool that runs the reference trainer:
split/{train,val,test}/<c>, hnet/<state_dict name>, local/<c>/layer.0.{weight,bias}, client_order.
The reference generation is recomputed here in float64 NumPy from the dumped torch-layout state.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pfedhn_jax import targets
from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.data.federated import to_device
from pfedhn_jax.data.replay import load_client_order, load_split_file
from pfedhn_jax.replay import load_initial_state
from pfedhn_jax.data.sources import DATASETS, RawDataset
from pfedhn_jax.errors import UserError
from pfedhn_jax.hypernet import HyperNetwork
from pfedhn_jax.interop import generate_torch_layout, to_torch_hypernet

N, N_TRAIN, N_TEST, STEPS = 4, 60, 30, 7
TARGET = targets.cifar_cnn(n_kernels=4)
# positional: the private-layer field is being renamed (exclude -> private), its position stays
ALG = PFedHN(HyperNetwork(TARGET, N, -1, 16, 3, ()))
ALG_PC = PFedHN(HyperNetwork(TARGET, N, -1, 16, 3, ("fc3",)), lr=5e-2)
HEADS = {"c1_weights": "conv1.weight", "c1_bias": "conv1.bias", "c2_weights": "conv2.weight",
         "c2_bias": "conv2.bias", "l1_weights": "fc1.weight", "l1_bias": "fc1.bias",
         "l2_weights": "fc2.weight", "l2_bias": "fc2.bias", "l3_weights": "fc3.weight", "l3_bias": "fc3.bias"}


def make_dump(alg: PFedHN, seed: int = 0) -> dict[str, np.ndarray]:
    """A dump with the reference tool's keys: a disjoint split (some samples unassigned), a random
    hypernetwork state_dict in torch layout, the -PC private heads, and a client order."""
    rng = np.random.default_rng(seed)
    d: dict[str, np.ndarray] = {}
    perm, tperm = rng.permutation(N_TRAIN), rng.permutation(N_TEST)
    for c in range(N):
        d[f"split/train/{c}"] = perm[10 * c:10 * c + 10]
        d[f"split/val/{c}"] = perm[40 + 3 * c:43 + 3 * c]
        d[f"split/test/{c}"] = tperm[6 * c:6 * c + 6]
    shapes = jax.eval_shape(alg.hnet.init, jax.random.key(0))
    params = jax.tree.map(lambda s: rng.uniform(-0.3, 0.3, s.shape).astype(np.float32), shapes)
    d.update({f"hnet/{k}": v for k, v in to_torch_hypernet(params, alg.hnet).items()})
    if alg is ALG_PC:
        for c in range(N):
            d[f"local/{c}/layer.0.weight"] = rng.uniform(-0.1, 0.1, (10, 84)).astype(np.float32)
            d[f"local/{c}/layer.0.bias"] = rng.uniform(-0.1, 0.1, 10).astype(np.float32)
    d["client_order"] = rng.integers(0, N, STEPS)
    return d


def save(tmp_path, d: dict, name: str = "dump.npz"):
    path = tmp_path / name
    np.savez(path, **d)
    return path


def ref_generate(d: dict, i: int) -> dict[str, np.ndarray]:
    """The reference CNNHyper forward for client i in float64, from the dumped state (flat heads)."""
    s = {k[5:]: np.asarray(v, np.float64) for k, v in d.items() if k.startswith("hnet/")}
    x = s["embeddings.weight"][i]
    n_mlp = sum(k.startswith("mlp.") and k.endswith(".weight") for k in s)
    for j in range(n_mlp):
        x = (np.maximum(x, 0) if j else x) @ s[f"mlp.{2 * j}.weight"].T + s[f"mlp.{2 * j}.bias"]
    return {name: x @ s[f"{head}.weight"].T + s[f"{head}.bias"]
            for head, name in HEADS.items() if f"{head}.weight" in s}


def template_state(alg: PFedHN):
    """A TrainState of the right structure, shapes and dtypes, from `jax.eval_shape` (no compile)."""
    shapes = jax.eval_shape(alg.init, jax.random.key(1))._replace(key=None)
    return jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)._replace(key=jax.random.key(1))


@pytest.fixture(scope="module")
def states():
    return {alg: template_state(alg) for alg in (ALG, ALG_PC)}


def raises_one_line(fn, *patterns: str) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in patterns:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


# ----------------------------------------------------------------------------- the loaders honour their input


def test_split_positions_are_the_dumped_ones(tmp_path):
    d = make_dump(ALG)
    split = load_split_file(save(tmp_path, d), N_TRAIN, N_TEST, N)
    assert split.assignment is None
    for c in range(N):
        np.testing.assert_array_equal(split.train[c], d[f"split/train/{c}"])
        np.testing.assert_array_equal(split.val[c], d[f"split/val/{c}"])
        np.testing.assert_array_equal(split.test[c], d[f"split/test/{c}"] + N_TRAIN)  # [x_train; x_test]
    rng = np.random.default_rng(0)
    raw = RawDataset(rng.integers(0, 255, (N_TRAIN, 32, 32, 3), np.uint8), rng.integers(0, 10, N_TRAIN),
                     rng.integers(0, 255, (N_TEST, 32, 32, 3), np.uint8), rng.integers(0, 10, N_TEST), "test", None)
    data = to_device(raw, DATASETS["cifar10"], split, batch_size=8)
    np.testing.assert_array_equal(np.asarray(data.test.count), [6] * N)
    labels = np.asarray(data.y)[np.asarray(data.test.index[2, :6])]
    np.testing.assert_array_equal(labels, raw.y_test[d["split/test/2"]])


def test_client_order_is_the_dumped_one(tmp_path):
    d = make_dump(ALG)
    path = save(tmp_path, d)
    order = load_client_order(path, N, STEPS)
    assert order.dtype == np.int32 and order.shape == (STEPS,)
    np.testing.assert_array_equal(order, d["client_order"])
    np.testing.assert_array_equal(load_client_order(path, N, 3), d["client_order"][:3])


@pytest.mark.parametrize("pc", [False, True], ids=["pfedhn", "pfedhn-pc"])
def test_initial_state_generates_the_reference_weights(tmp_path, states, pc):
    alg = ALG_PC if pc else ALG
    d = make_dump(alg, seed=3)
    before = states[alg]
    state = load_initial_state(save(tmp_path, d), alg, before)
    generated = jax.jit(generate_torch_layout, static_argnums=1)(state.server.params, alg.hnet, np.arange(N))
    for i in range(N):
        ref = ref_generate(d, i)
        assert set(generated) == set(ref)
        for k, v in generated.items():
            np.testing.assert_allclose(np.asarray(v[i]).reshape(-1), ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the optimizer state is fresh for the new params (zero traces, the algorithm's lr); step and key are kept
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.server.opt_state.inner_state))
    assert float(state.server.opt_state.hyperparams["lr"]) == pytest.approx(alg.lr)
    assert jax.tree.structure(state.server.opt_state) == jax.tree.structure(before.server.opt_state)
    np.testing.assert_array_equal(state.step, before.step)
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(before.key))
    if pc:
        kernel, bias = state.clients.private["fc3"]["kernel"], state.clients.private["fc3"]["bias"]
        assert kernel.shape == (N, 84, 10) and bias.shape == (N, 10)
        for c in range(N):
            np.testing.assert_array_equal(np.asarray(kernel[c]), d[f"local/{c}/layer.0.weight"].T)
            np.testing.assert_array_equal(np.asarray(bias[c]), d[f"local/{c}/layer.0.bias"])
        assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.clients.opt_state))
        assert jax.tree.structure(state.clients.opt_state) == jax.tree.structure(before.clients.opt_state)
    else:
        assert state.clients.private == {}


# ----------------------------------------------------------------------------- bad files


def _edit(d: dict, drop=(), put=None) -> dict:
    """d without the keys `drop`, with the arrays `put` added or replaced."""
    return {**{k: v for k, v in d.items() if k not in drop}, **(put or {})}


def _overlap_clients(d):
    t = d["split/train/1"].copy()
    t[0] = d["split/train/0"][0]
    return _edit(d, put={"split/train/1": t})


def _overlap_train_val(d):
    v = d["split/val/3"].copy()
    v[0] = d["split/train/0"][0]
    return _edit(d, put={"split/val/3": v})


SPLIT_CASES = {
    "missing key": (lambda d: _edit(d, drop=["split/val/2"]), ["split/val/", "missing clients [2]"]),
    "extra client": (lambda d: _edit(d, put={"split/test/4": np.array([0])}), ["unexpected clients [4]"]),
    "float indices": (lambda d: _edit(d, put={"split/train/0": np.zeros(3)}), ["split/train/0", "integer"]),
    "2-D indices": (lambda d: _edit(d, put={"split/train/0": np.zeros((2, 2), int)}), ["1-D integer"]),
    "train out of range": (lambda d: _edit(d, put={"split/train/2": np.array([1, N_TRAIN])}),
                           ["split/train/2", f"outside 0..{N_TRAIN - 1}", f"first {N_TRAIN}"]),
    "test out of range": (lambda d: _edit(d, put={"split/test/0": np.array([N_TEST + 5])}),
                          ["split/test/0", f"outside 0..{N_TEST - 1}"]),
    "negative": (lambda d: _edit(d, put={"split/val/0": np.array([-1])}), ["split/val/0", "outside"]),
    "two clients": (_overlap_clients, ["train split are assigned twice", "clients 0 and 1"]),
    "train and val": (_overlap_train_val, ["both the train and the val split"]),
    "empty client": (lambda d: _edit(d, put={"split/train/3": np.array([], np.int64)}),
                     ["clients [3] have no training samples"]),
}


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_bad_split_file(tmp_path, case):
    edit, patterns = SPLIT_CASES[case]
    path = save(tmp_path, edit(make_dump(ALG)))
    raises_one_line(lambda: load_split_file(path, N_TRAIN, N_TEST, N), "--split-file", str(path), *patterns)


def test_split_file_for_other_client_count(tmp_path):
    path = save(tmp_path, make_dump(ALG))
    raises_one_line(lambda: load_split_file(path, N_TRAIN, N_TEST, N + 2), "--split-file", "missing clients [4, 5]",
                    "--num-clients")
    raises_one_line(lambda: load_split_file(path, N_TRAIN, N_TEST, N - 1), "unexpected clients [3]")


@pytest.mark.parametrize("loader", ["split", "order", "init"])
@pytest.mark.parametrize("kind", ["missing", "text", "npy", "truncated"])
def test_not_an_npz(tmp_path, states, loader, kind):
    path = tmp_path / "dump.npz"
    if kind == "text":
        path.write_text("not an npz\n")
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.arange(3))
        path = path.with_suffix(".npy")
    elif kind == "truncated":
        path.write_bytes(save(tmp_path, make_dump(ALG), "full.npz").read_bytes()[:200])
    flag, fn = {"split": ("--split-file", lambda: load_split_file(path, N_TRAIN, N_TEST, N)),
                "order": ("--client-order", lambda: load_client_order(path, N, STEPS)),
                "init": ("--init-from", lambda: load_initial_state(path, ALG, states[ALG]))}[loader]
    raises_one_line(fn, flag, str(path), "does not exist" if kind == "missing" else "not a readable npz")


ORDER_CASES = {
    "missing key": (lambda d: _edit(d, drop=["client_order"]), ["no 'client_order'"]),
    "too short": (lambda d: _edit(d, put={"client_order": np.arange(3) % N}),
                  ["holds 3 client draws", f"--num-steps {STEPS}"]),
    "out of range": (lambda d: _edit(d, put={"client_order": np.full(STEPS, N)}), [f"client {N}", f"0..{N - 1}"]),
    "float": (lambda d: _edit(d, put={"client_order": np.zeros(STEPS)}), ["1-D integer"]),
}


@pytest.mark.parametrize("case", ORDER_CASES)
def test_bad_client_order(tmp_path, case):
    edit, patterns = ORDER_CASES[case]
    path = save(tmp_path, edit(make_dump(ALG)))
    raises_one_line(lambda: load_client_order(path, N, STEPS), "--client-order", str(path), *patterns)


def _bigger_hnet(d):
    """The hypernetwork of a run with more clients: the embeddings table has another shape."""
    return _edit(d, put={"hnet/embeddings.weight": np.zeros((N + 1, 2), np.float32)})


INIT_CASES = {
    "no hnet": (False, lambda d: {k: v for k, v in d.items() if not k.startswith("hnet/")}, ["no hnet/*"]),
    "missing head": (False, lambda d: _edit(d, drop=["hnet/c1_bias.weight"]), ["c1_bias.weight", "missing"]),
    "wrong shape": (False, _bigger_hnet, ["embeddings.weight (5, 2) (expected (4, 2))", "--num-clients"]),
    "int weights": (False, lambda d: _edit(d, put={"hnet/mlp.0.bias": np.zeros(16, int)}), ["not floating point"]),
    "pc dump, pfedhn run": (True, lambda d: d, ["dump of pFedHN-PC", "--algo pfedhn-pc"]),
    "head missing client": (True, lambda d: _edit(d, drop=["local/2/layer.0.weight", "local/2/layer.0.bias"]),
                            ["missing clients [2]"]),
    "head wrong shape": (True, lambda d: _edit(d, put={"local/1/layer.0.weight": np.zeros((10, 80), np.float32)}),
                         ["client 1's private head", "(10, 84)"]),
    "head lacks bias": (True, lambda d: _edit(d, drop=["local/0/layer.0.bias"]), ["local/0/", "one Linear"]),
}


@pytest.mark.parametrize("case", INIT_CASES)
def test_bad_initial_state(tmp_path, states, case):
    pc, edit, patterns = INIT_CASES[case]
    run = ALG if case == "pc dump, pfedhn run" else (ALG_PC if pc else ALG)
    path = save(tmp_path, edit(make_dump(ALG_PC if pc else ALG)))
    raises_one_line(lambda: load_initial_state(path, run, states[run]), "--init-from", str(path), *patterns)


def test_pfedhn_dump_into_pc_run(tmp_path, states):
    path = save(tmp_path, make_dump(ALG))
    raises_one_line(lambda: load_initial_state(path, ALG_PC, states[ALG_PC]), "--init-from", "dump of pFedHN",
                    "--algo pfedhn")


def test_training_replays_split_weights_and_order(data_dir, tmp_path):
    """scripts' path (loop.train with --split-file, --init-from, --client-order): the run trains on the
    dumped indices, starts from the dumped weights and trains the dumped client first."""
    from pfedhn_jax.config import Config
    from pfedhn_jax.loop import train
    d = make_dump(ALG_PC)
    path = str(save(tmp_path, d))
    cfg = Config(data_dir=str(data_dir), algo="pfedhn-pc", num_clients=N, n_kernels=4, hyper_hid=16, n_hidden=3,
                 num_steps=1, inner_steps=2, batch_size=8, eval_every=1, split_file=path, init_from=path,
                 client_order=path)
    res = train(cfg, progress=False)
    assert res["data"]["client_counts"] == {"train": [10] * N, "val": [3] * N, "test": [6] * N}
    first = int(d["client_order"][0])
    heads = np.asarray(res["state"].clients.private["fc3"]["kernel"])
    for c in range(N):  # only the replayed client's private head moved from its dumped value
        unchanged = np.allclose(heads[c], d[f"local/{c}/layer.0.weight"].T, atol=1e-7)
        assert unchanged == (c != first), c
