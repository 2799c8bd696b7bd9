"""Generalisation to novel clients (paper Sec. 5.3; never released by the authors).

Train pFedHN on N clients, then meet M clients it has never seen. For each novel client the
hypernetwork φ is frozen and only a new embedding vector is learned from the client's own training
data; its generated network is evaluated on its test data. The quantity of interest is the
generalisation gap (novel accuracy minus the training clients' pooled test accuracy) as a function
of the label shift (total-variation distance to the training clients' pooled label distribution).
The baseline is FedAvg over the training clients, then fine-tuned on each client with the same
budget. docs/novel_clients.md states every definition and choice made here.

Pieces (pure functions over pytrees; host NumPy for the split):
  novel_alphas, make_novel_split      Dirichlet label split with α_train for training clients and
                                      one α per novel client (a sweep), deterministic from a seed
  label_distribution, pooled_distribution, tv_distance        the shift measure
                                      (both in data/shift.py, plain NumPy; re-exported here)
  with_clients                        device data for another set of clients (images shared)
  fit_novel_embeddings                φ frozen, K embeddings fitted in ONE vmapped, jitted program
  novel_params, evaluate_models, generalization_gap                  evaluation
  finetune                            the baseline's fine-tuning of a FedAvg model (`algorithms.fedavg.FedAvg`,
                                      trained by `programs.train_plain`) on each client
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pfedhn_jax import client, xla
from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.algorithms.fedavg import FedAvg
from pfedhn_jax.data.federated import ClientIndex, FederatedData, SplitSummary, pad_clients, sample_batch
from pfedhn_jax.data.shift import (NovelSplit, dirichlet_shift_assignment, label_distribution,  # noqa: F401
                                   make_novel_split, novel_alphas, pooled_distribution, tv_distance)
from pfedhn_jax.evaluate import ClientMetrics, evaluate_clients
from pfedhn_jax.targets import Params

FIT_OPTIMIZERS = ("adam", "sgd")
FIT_INITS = ("mean", "normal")



# ----------------------------------------------------------------------------- device data


def with_clients(data: FederatedData, split: SplitSummary, batch_size: int) -> FederatedData:
    """The same images (not copied) with the per-client index arrays of another set of clients.

    split: positions into data.x (e.g. `NovelSplit.novel`); its train index is padded to at least
    batch_size (as `to_device`); an empty validation split is replaced by the test split.
    """
    val = split.val if any(len(v) for v in split.val) else split.test
    return data._replace(train=pad_clients(split.train, batch_size), val=pad_clients(val),
                         test=pad_clients(split.test))


# ----------------------------------------------------------------------------- fitting embeddings


def _fit_optimizer(optimizer: str, lr: float, momentum: float) -> optax.GradientTransformation:
    """Elementwise optimizers only (no global-norm clipping), so rows (clients) never interact."""
    if optimizer == "adam":
        return optax.adam(lr)
    return optax.sgd(lr, momentum=momentum)


def _fit(alg: PFedHN, hnet_params: Params, data: FederatedData, split: ClientIndex, emb0: jax.Array,
         keys: jax.Array, steps: int, batch_size: int, optimizer: str, lr: float, momentum: float):
    hnet, k = alg.hnet, emb0.shape[0]
    ids = jnp.arange(k)
    frozen = {name: jax.lax.stop_gradient(v) for name, v in hnet_params.items() if name != "embeddings"}
    opt = _fit_optimizer(optimizer, lr, momentum)

    def client_loss(theta, batch):
        x, y, mask = batch
        return client.masked_cross_entropy(alg.target.apply(theta, x), y, mask)

    def total_loss(table, batches):
        theta = hnet.apply({**frozen, "embeddings": table}, ids)        # leaves (K, ...)
        losses = jax.vmap(client_loss)(theta, batches)                    # (K,)
        return losses.sum(), losses   # row k of the gradient = ∂ loss_k / ∂ e_k

    def step(carry, step_keys):
        table, opt_state = carry
        batches = jax.vmap(lambda c, kk: sample_batch(data, split, c, kk, batch_size))(ids, step_keys)
        (_, losses), g = jax.value_and_grad(total_loss, has_aux=True)(table, batches)
        updates, opt_state = opt.update(g, opt_state, table)
        return (optax.apply_updates(table, updates), opt_state), losses

    step_keys = jnp.swapaxes(jax.vmap(lambda kk: jax.random.split(kk, steps))(keys), 0, 1)  # (steps, K)
    (table, _), losses = jax.lax.scan(step, (emb0, opt.init(emb0)), step_keys)
    return table, losses


class NovelFit(NamedTuple):
    embeddings: jax.Array   # (K, e) the fitted embedding of each novel client
    init: jax.Array         # (K, e) where the fit started
    loss: jax.Array         # (steps, K) training loss of each step's batch, before its update


def init_embeddings(hnet_params: Params, num: int, how: str = "mean", key: jax.Array | None = None) -> jax.Array:
    """Starting embeddings for `num` novel clients, (num, e).

    'mean': every client starts at the mean of the trained embeddings (the "average client"; the
    default, see `fit_novel_embeddings`). 'normal': N(0, 1) draws from `key`, the distribution the
    training embeddings were initialised from (`HyperNetwork.init`).
    """
    table = hnet_params["embeddings"]
    if how == "mean":
        return jnp.broadcast_to(table.mean(0), (num, table.shape[1]))
    if how == "normal":
        if key is None:
            raise ValueError("init='normal' needs a PRNG key")
        return jax.random.normal(key, (num, table.shape[1]), table.dtype)
    raise ValueError(f"init must be one of {FIT_INITS}, got {how!r}")


def fit_novel_embeddings(alg: PFedHN, hnet_params: Params, data: FederatedData, split: ClientIndex,
                         key: jax.Array, steps: int = 100, lr: float = 0.05, optimizer: str = "adam",
                         init: str | jax.Array = "mean", batch_size: int | None = None,
                         momentum: float = 0.9) -> NovelFit:
    """Learn one new embedding per novel client with the hypernetwork φ frozen.

    For client k (k < K, the clients of `split`, e.g. `with_clients(...).train`) minimise the mean
    cross-entropy of the generated network h(e_k; φ) on its own training batches with respect to
    e_k only: the gradient flows through the frozen hypernetwork into the embedding. Each step draws
    a fresh batch per client with `sample_batch` (batch_size: default alg.batch_size), exactly as a
    local step of training does. φ (every entry of hnet_params but 'embeddings') is never updated,
    and the training clients' embedding table is only read (for init='mean').

    All K clients are fitted in ONE jitted program: one `lax.scan` over steps; in each step the
    hypernetwork is applied to the (K, e) table of novel embeddings with ids arange(K) and the
    target's loss is `vmap`ped over the K clients. The optimizer is elementwise (Adam, or SGD with
    momentum), so client k's embedding depends only on its own data and keys: fitting a subset
    gives the same embeddings as fitting all of them (tests check it).

    key: one PRNG key (split into K, one per client), or K keys (K,) (client k uses keys[k] only).
    init: 'mean' | 'normal' or an explicit (K, e) array. 'mean': every client starts at the mean of
      the trained embeddings; 'normal': client k draws N(0, 1) from fold_in(its key, 1).
    Defaults: Adam with lr 0.05 for 100 steps of batch 64 (alg.batch_size). Adam because the
    embedding is a handful of coordinates whose gradient scale through the hypernetwork is unknown;
    Adam moves each coordinate by about lr per step whatever that scale, so 100 steps can travel
    ~5 units, the spread of the trained embeddings (N(0,1)-initialised). The starting point 'mean'
    is deterministic and lies in the region of embedding space the hypernetwork was trained on; an
    N(0,1) draw need not. docs/novel_clients.md compares the two on real data.
    Returns NovelFit(embeddings (K, e), init (K, e), loss (steps, K)).
    """
    if alg.hnet.private:
        raise ValueError("fit_novel_embeddings: pFedHN-PC keeps a private head per client, which a novel "
                         "client does not have; use a pFedHN hypernetwork (hnet.private = ())")
    if "embeddings" not in hnet_params:
        raise ValueError("hnet_params must be a HyperNetwork's params (with an 'embeddings' table)")
    if optimizer not in FIT_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {FIT_OPTIMIZERS}, got {optimizer!r}")
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    k = int(split.count.shape[0])
    e = int(hnet_params["embeddings"].shape[1])
    batch_size = alg.batch_size if batch_size is None else int(batch_size)
    if not 1 <= batch_size <= split.index.shape[1]:
        raise ValueError(f"batch_size must be in [1, {split.index.shape[1]}] (the padded length of the split), "
                         f"got {batch_size}")
    if jnp.ndim(key) == 0 or (not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and jnp.shape(key) == (2,)):
        keys = jax.random.split(key, k)
    else:
        keys = key
        if keys.shape[0] != k:
            raise ValueError(f"key must be one PRNG key or {k} keys (one per client), got shape {keys.shape}")
    if isinstance(init, str):
        if init == "normal":   # client k's start from its own key, so subsets still fit alike
            emb0 = jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, 1), (e,)))(keys)
        else:
            emb0 = init_embeddings(hnet_params, k, init)
    else:
        emb0 = jnp.asarray(init, hnet_params["embeddings"].dtype)
        if emb0.shape != (k, e):
            raise ValueError(f"init must be 'mean', 'normal' or an array of shape ({k}, {e}), got {emb0.shape}")
    fit = xla.jit(_fit, ("alg", "steps", "batch_size", "optimizer", "lr", "momentum"))
    table, losses = fit(alg, hnet_params, data, split, emb0, keys, int(steps), batch_size, optimizer, float(lr),
                        float(momentum))
    return NovelFit(table, emb0, losses)


# ----------------------------------------------------------------------------- evaluation


def novel_params(alg: PFedHN, hnet_params: Params, embeddings: jax.Array) -> Params:
    """The networks generated for explicit embeddings (K, e): θ leaves (K, ...), φ frozen."""
    emb = jnp.asarray(embeddings)
    return alg.hnet.apply({**hnet_params, "embeddings": emb}, jnp.arange(emb.shape[0]))


def evaluate_models(apply_fn: Callable[[Params, jax.Array], jax.Array], params: Params, data: FederatedData,
             split: ClientIndex) -> ClientMetrics:
    """`evaluate.evaluate_clients` under jit: client i's params (leaves (N, ...)) on its samples of split."""
    return xla.jit(evaluate_clients, ("apply_fn", "clients_per_batch"))(apply_fn, params, data, split)


def generalization_gap(novel: ClientMetrics, train: ClientMetrics) -> np.ndarray:
    """Per novel client: its test accuracy minus the POOLED test accuracy of the training clients.

    Pooled = total correct / total test samples over all training clients (the reference's
    headline accuracy, `evaluate.summarize`). Returns (K,) float64; negative = worse than training.
    """
    nc, nt = (np.asarray(a, np.float64) for a in (novel.correct, novel.total))
    tc, tt = (np.asarray(a, np.float64) for a in (train.correct, train.total))
    return nc / np.maximum(nt, 1) - tc.sum() / max(tt.sum(), 1)


# ----------------------------------------------------------------------------- pFedHN training


def finetune(alg: FedAvg, params: Params, data: FederatedData, split: ClientIndex, key: jax.Array, steps: int,
             lr: float | None = None) -> Params:
    """Fine-tune one model (leaves without a client axis) on each client of `split`, all K at once.

    Client k runs `steps` steps of the FedAvg record's local SGD (its lr, or `lr`; fresh momentum)
    on batches of `split`'s client k, from `params`; key: one PRNG key (split into K). Returns the
    per-client params, leaves (K, ...).
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return xla.jit(_finetune, ("alg", "steps"))(alg, params, data, split, key, steps, alg.lr if lr is None else lr)


def _finetune(alg, params, data, split, key, steps, lr):
    k = split.count.shape[0]

    def one(c, kk):
        batch_fn = lambda kb: sample_batch(data, split, c, kb, alg.batch_size)
        return client.local_update(alg.target.apply, params, {}, optax.EmptyState(), batch_fn, kk, steps,
                                   alg.local_optimizer(lr), optax.identity()).theta
    return client.run_clients(one, (jnp.arange(k), jax.random.split(key, k)), alg.strategy)
