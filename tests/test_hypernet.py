import jax
import jax.numpy as jnp
import numpy as np

from pfedhn_jax.hypernet import HyperNetwork, default_embed_dim
from pfedhn_jax.targets import cifar_cnn, num_params


def test_embed_dim_formula():
    assert [default_embed_dim(n) for n in (10, 50, 100)] == [3, 13, 26]
    assert HyperNetwork(cifar_cnn(), 50).embedding_dim == 13
    assert HyperNetwork(cifar_cnn(), 50, embed_dim=7).embedding_dim == 7


def test_reference_size_and_structure():
    h = HyperNetwork(cifar_cnn(), 50)
    shapes = jax.eval_shape(h.init, jax.random.key(0))
    # embeddings 50x13, mlp 13->100 + 3x 100->100, heads 100 -> every target tensor (+ bias)
    expected = 50 * 13 + (13 * 100 + 100) + 3 * (100 * 100 + 100) + 101 * 121_182
    assert num_params(shapes) == expected
    assert 12.2e6 < expected < 12.4e6
    assert shapes["heads"]["fc1"]["kernel"]["kernel"].shape == (100, 800 * 120)
    assert len(shapes["mlp"]) == 4


def test_apply_batched_equals_single_and_private(tiny_target):
    h = HyperNetwork(tiny_target, 6, private=(tiny_target.head,))
    p = h.init(jax.random.key(0))
    ids = jnp.array([4, 1, 4])
    batched = h.apply(p, ids)
    assert tiny_target.head not in batched
    for j, i in enumerate(ids):
        single = h.apply(p, i)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[j], b, rtol=1e-5, atol=1e-6), batched, single)
        assert single["conv1"]["kernel"].shape == (3, 3, 3, 3)


def test_apply_is_the_mlp_then_linear_heads(tiny_target):
    h = HyperNetwork(tiny_target, 5, hidden_dim=7, n_hidden=2)
    p = h.init(jax.random.key(3))
    x = np.asarray(p["embeddings"][2], np.float64)
    for i, layer in enumerate(p["mlp"]):
        x = (np.maximum(x, 0) if i else x) @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
    head = p["heads"]["fc2"]["kernel"]
    want = (x @ np.asarray(head["kernel"]) + np.asarray(head["bias"])).reshape(6, 5)
    np.testing.assert_allclose(h.apply(p, 2)["fc2"]["kernel"], want, rtol=1e-5, atol=1e-6)


def test_init_is_torch_default_and_deterministic():
    h = HyperNetwork(cifar_cnn(), 50)
    p = h.init(jax.random.key(0))
    emb = np.asarray(p["embeddings"])
    assert abs(emb.mean()) < 0.1 and abs(emb.std() - 1) < 0.1  # N(0, 1)
    head = np.asarray(p["heads"]["fc1"]["kernel"]["kernel"])
    assert np.abs(head).max() <= 0.1 and np.abs(head).max() > 0.099  # U(±1/sqrt(100))
    assert np.abs(np.asarray(p["mlp"][0]["kernel"])).max() <= 1 / np.sqrt(13)
    q = h.init(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, p, q)


def test_a_misspelled_private_name_fails_when_the_hypernetwork_is_built(tiny_target):
    import pytest
    with pytest.raises(ValueError, match=r"private names \['fc_3'\] match no parameter"):
        HyperNetwork(tiny_target, 4, private=("fc_3",))
