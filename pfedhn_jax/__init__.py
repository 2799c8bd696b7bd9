"""pfedhn-jax: Personalized Federated Learning using Hypernetworks (pFedHN), in JAX.

A small functional core over pytrees:
  targets     target networks: `init(key) -> params`, `apply(params, x) -> logits`
  hypernet    HyperNetwork: `init(key)`, `apply(params, client_ids) -> theta`
  client      `local_update` (K clipped-SGD steps) and client execution strategies
  server      the hypernetwork optimizer and `server_update` (VJP of θ − θ̃)
  algorithm   PFedHN (and -PC): `init`, `step`, `personal_params`
  data        sources, the reference split, the device-resident federated dataset
  evaluate    all-client evaluation and best-validation bookkeeping
  experiment  the outer loop: Config in, results out
  interop     the reference PyTorch checkpoint layout, numpy in and out
"""

from pfedhn_jax.algorithm import ClientState, PFedHN, StepMetrics, TrainState
from pfedhn_jax.client import local_update, masked_cross_entropy, run_clients, sgd
from pfedhn_jax.config import Config
from pfedhn_jax.errors import DataError, DivergenceError, UserError
from pfedhn_jax.evaluate import BestTracker, ClientMetrics, evaluate_clients, summarize
from pfedhn_jax.hypernet import HyperNetwork, default_embed_dim
from pfedhn_jax.server import ServerState, hyper_optimizer, hypernet_grads, init_server, server_update
from pfedhn_jax.targets import ConvNet, cifar_cnn, omniglot_cnn

__version__ = "0.1.0"

__all__ = [
    "ClientState", "PFedHN", "StepMetrics", "TrainState", "local_update", "masked_cross_entropy", "run_clients",
    "sgd", "Config", "DataError", "DivergenceError", "UserError", "BestTracker", "ClientMetrics",
    "evaluate_clients", "summarize", "HyperNetwork", "default_embed_dim", "ServerState", "hyper_optimizer",
    "hypernet_grads", "init_server", "server_update", "ConvNet", "cifar_cnn", "omniglot_cnn",
]
