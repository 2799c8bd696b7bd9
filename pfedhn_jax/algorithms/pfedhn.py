"""The registry's builder of pFedHN and pFedHN-PC (`algorithm.PFedHN`) and of pFedHN over
targets of several widths (`hetero.HeteroPFedHN`, --client-widths)."""

from __future__ import annotations

import dataclasses

from pfedhn_jax.algorithm import PFedHN
from pfedhn_jax.hypernet import HyperNetwork


def build(cfg, make_target):
    """pFedHN-PC keeps the target's classifier head private (docs/reference.md §3). With
    --client-widths, one hypernetwork serves CNNs of several widths (docs/heterogeneous.md)."""
    settings = dict(inner_steps=cfg.inner_steps, batch_size=cfg.batch_size, inner_lr=cfg.inner_lr,
                    inner_wd=cfg.inner_wd, optim=cfg.optim, lr=cfg.effective_lr, embed_lr=cfg.embed_lr, wd=cfg.wd,
                    clients_per_step=cfg.clients_per_step, strategy=cfg.strategy, unroll=cfg.unroll)
    if cfg.widths:
        from pfedhn_jax.hetero import HeteroHyperNetwork, HeteroPFedHN
        targets = tuple(make_target(dataclasses.replace(cfg, n_kernels=w)) for w in cfg.widths)
        hnet = HeteroHyperNetwork(targets, cfg.num_clients, cfg.assignment, cfg.embed_dim, cfg.hyper_hid,
                                  cfg.n_hidden)
        return HeteroPFedHN(hnet, **settings)
    target = make_target(cfg)
    private = (target.head,) if cfg.algo == "pfedhn-pc" else ()
    hnet = HyperNetwork(target, cfg.num_clients, cfg.embed_dim, cfg.hyper_hid, cfg.n_hidden, private)
    return PFedHN(hnet, **settings)
