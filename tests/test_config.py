"""Config: plain data (no JAX on import), option lists that agree with their implementations, and
the one rule for "the same run" shared by resume and the grid."""

import subprocess
import sys

import pytest

from conftest import ROOT
from pfedhn_jax import config
from pfedhn_jax.checkpoint import to_json
from pfedhn_jax.config import Config, describe_differences, run_differences
from pfedhn_jax.data.registry import SPECS, validate
from pfedhn_jax.errors import UserError


def test_light_modules_import_without_jax():
    code = ("import sys, pfedhn_jax, pfedhn_jax.config, pfedhn_jax.errors, pfedhn_jax.grid, pfedhn_jax.report, "
            "pfedhn_jax.results, pfedhn_jax.paper, pfedhn_jax.data.registry, pfedhn_jax.data.sources; "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_option_lists_agree_with_their_implementations():
    from pfedhn_jax import client, layers, server
    assert config.STRATEGIES == client.STRATEGIES
    assert config.OPTIMIZERS == server.OPTIMIZERS
    assert config.CONV_IMPLS == layers.CONV_IMPLS
    assert config.COMPUTE_DTYPES == layers.COMPUTE_DTYPES
    assert config.DATASETS == tuple(SPECS)
    import jax
    for precision in config.MATMUL_PRECISIONS:  # each a value JAX accepts ('default' leaves JAX's own)
        with jax.default_matmul_precision(None if precision == "default" else precision):
            assert jax.default_matmul_precision.value in (precision, None)


def test_a_bad_matmul_precision_is_one_line():
    with pytest.raises(UserError, match=r"^--matmul-precision: unknown value 'tf32'; choose one of float32, "):
        Config(matmul_precision="tf32").validate()


def test_run_differences_lists_exactly_the_changed_fields():
    saved = to_json(Config(seed=1, out="/a", lr=0.01).to_dict())  # as read back from the host JSON
    now = Config(seed=2, out="/b", lr=0.01, num_steps=10, strategy="loop")
    assert run_differences(saved, now) == {"seed": (1, 2), "num_steps": (5000, 10)}  # out, strategy: not the run
    assert run_differences(saved, Config(seed=1, lr=0.01)) == {}
    older = {k: v for k, v in saved.items() if k != "unroll" and k != "n_val"}  # an older file lacks new fields
    assert run_differences(older, Config(seed=1, lr=0.01)) == {}
    assert run_differences(older, Config(seed=1, lr=0.01, n_val=4)) == {"n_val": (3, 4)}
    assert run_differences({**saved, "gone": 0}, Config(seed=1, lr=0.01)) == {"gone": (0, None)}
    assert describe_differences({"num_steps": (5000, 10)}) == "--num-steps (saved: 5000, now: 10)"
    # automatic values compare as the run used them: lr None is the algorithm's, embed_dim -1 int(1 + N/4)
    auto = Config(seed=1).to_dict()
    assert run_differences(auto, Config(seed=1, lr=0.01, embed_lr=0.01, embed_dim=13)) == {}
    assert run_differences(auto, Config(seed=1, lr=0.02)) == {"lr": (0.01, 0.02), "embed_lr": (0.01, 0.02)}
    assert run_differences({**auto, "algo": "pfedhn-pc"}, Config(seed=1, algo="pfedhn-pc", lr=0.02))["lr"] == (0.05, 0.02)


@pytest.mark.parametrize("fields,flag", [
    (dict(dataset="cifar10", classes_per_client=11), "--classes-per-client"),
    (dict(dataset="omniglot", num_clients=51), "--num-clients"),
    (dict(dataset="omniglot", image_size=12), "--image-size"),
    (dict(dataset="mnist"), "--dataset"),
    (dict(n_val=-1), "--n-val"),
])
def test_dataset_limits_are_one_line_errors(fields, flag):
    with pytest.raises(UserError) as e:
        validate(Config(**fields))
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)
