"""pfedhn-jax: Personalized Federated Learning using Hypernetworks (pFedHN), in JAX.

A small functional core over pytrees, in layers that import one way
(config -> builders -> data / algorithm -> loop -> results):
  config      Config, its validation, the one definition of "the same run"   (no JAX)
  draws       many `jax.random.uniform` draws from one threefry call (fast init compiles)
  layers      matmul, convolutions (one whose gradient stays fast in XLA:CPU loops), max-pool
  targets     target networks: `init(key) -> params`, `apply(params, x) -> logits`; Flax adapters
  hypernet    HyperNetwork: `init(key)`, `apply(params, client_ids) -> theta`
  client      `local_update` (K clipped-SGD steps) and client execution strategies
  server      the hypernetwork optimizer and `server_update` (VJP of θ − θ̃)
  algorithms  the interface (`base.FederatedAlgorithm`), the registry (--algo), the six baselines
  algorithm   PFedHN (and -PC): `init`, `step`, `personal_params`
  data        sources, splits, the dataset registry, the device-resident federated dataset
  evaluate    all-client evaluation and best-validation bookkeeping
  builders    Config -> target, algorithm, data
  loop        the outer loop: Config in, results out (signals, cadence, checkpoints)
  results     output folders, results JSON, plots                            (no JAX)
  checkpoint  orbax checkpoints
  paper, grid, report   the paper's numbers, the Table 1 grid, its tables     (no JAX)
  interop     the reference PyTorch checkpoint layout, numpy in and out

Attributes are imported lazily (PEP 562): `import pfedhn_jax.config` does not import JAX.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # the algorithms: the interface, pFedHN and the baselines
    "FederatedAlgorithm": "algorithms.base", "StepMetrics": "algorithms.base",
    "PFedHN": "algorithm", "TrainState": "algorithm", "ClientState": "algorithm",
    "FedAvg": "algorithms.fedavg", "FedPer": "algorithms.fedper", "LGFedAvg": "algorithms.lg_fedavg",
    "Local": "algorithms.local", "PFedMe": "algorithms.pfedme", "PerFedAvg": "algorithms.per_fedavg",
    "HyperNetwork": "hypernet", "default_embed_dim": "hypernet", "split_params": "hypernet",
    "merge_params": "hypernet",
    "local_update": "client", "masked_cross_entropy": "client",
    "ServerState": "server", "hyper_optimizer": "server", "server_update": "server",
    # targets
    "Target": "targets", "ConvNet": "targets", "cifar_cnn": "targets", "omniglot_cnn": "targets",
    "from_linen": "targets", "from_nnx": "targets",
    # data
    "FederatedData": "data.federated", "ClientIndex": "data.federated",
    "from_arrays": "data.arrays", "label_split": "data.arrays", "from_tfds": "data.arrays",
    # evaluation
    "ClientMetrics": "evaluate", "evaluate_clients": "evaluate", "summarize": "evaluate", "BestTracker": "evaluate",
    # whole runs
    "Config": "config", "train": "loop", "train_seeds": "loop",
    # errors
    "UserError": "errors", "DataError": "errors", "DivergenceError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"pfedhn_jax.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pfedhn_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
