"""The library's public constructors and functions refuse bad input with one clear ValueError that
names the argument, before anything is traced or compiled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.data.federated import FederatedData, pad_clients, sample_batch
from pfedhn_jax.hypernet import HyperNetwork


@pytest.mark.parametrize("kw,name", [
    (dict(num_clients=0), "num_clients"), (dict(hidden_dim=0), "hidden_dim"), (dict(n_hidden=-1), "n_hidden"),
    (dict(embed_dim=0), "embed_dim"),
])
def test_hypernetwork_arguments(tiny_target, kw, name):
    with pytest.raises(ValueError, match=f"^HyperNetwork: {name}"):
        HyperNetwork(tiny_target, **{"num_clients": 4, **kw})


def test_hypernetwork_needs_a_target():
    with pytest.raises(ValueError, match="target must have init"):
        HyperNetwork(object(), 4)


@pytest.mark.parametrize("kw,name", [
    (dict(inner_steps=0), "inner_steps"), (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"),
    (dict(inner_lr=-1.0), "inner_lr"), (dict(wd=-1e-3), "wd"), (dict(clients_per_step=5), "clients_per_step"),
    (dict(strategy="threads"), "strategy"), (dict(optim="rmsprop"), "optim"),
])
def test_algorithm_arguments(tiny_target, kw, name):
    with pytest.raises(ValueError, match=f"^PFedHN: {name}"):
        PFedHN(HyperNetwork(tiny_target, 4), **kw)


def test_batch_larger_than_the_padded_split():
    x = np.zeros((20, 4, 4, 1), np.uint8)
    split = pad_clients([np.arange(5), np.arange(5, 12)])  # padded length 7
    data = FederatedData(jnp.asarray(x), jnp.zeros(20, jnp.int32), jnp.zeros(1), jnp.ones(1), split, split, split)
    with pytest.raises(ValueError, match="batch_size 8 exceeds the padded length 7"):
        sample_batch(data, split, jnp.int32(0), jax.random.key(0), 8)
    xb, yb, mask = sample_batch(data, split, jnp.int32(0), jax.random.key(0), 7)  # masked past the count
    assert xb.shape == (7, 4, 4, 1) and int(mask.sum()) == 5
