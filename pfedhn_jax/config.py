"""One config dataclass for a training run, and the validation of every user-set value.

`validate()` runs before any data is loaded or anything is compiled; a bad value raises
`UserError` with one line naming the flag and the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pfedhn_jax.client import STRATEGIES
from pfedhn_jax.data.omniglot import MAX_CHARACTERS
from pfedhn_jax.data.sources import DATASETS
from pfedhn_jax.errors import UserError
from pfedhn_jax.server import OPTIMIZERS
from pfedhn_jax.targets import COMPUTE_DTYPES, CONV_IMPLS

ALGOS = ("pfedhn", "pfedhn-pc")
DATASET_NAMES = tuple(DATASETS) + ("omniglot",)
# Hypernetwork learning rate by algorithm, as in the reference's two trainers.
DEFAULT_LR = {"pfedhn": 1e-2, "pfedhn-pc": 5e-2}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of a run. Defaults reproduce the reference (REFERENCE.md §3); deviations are opt-in."""

    # data
    dataset: str = "cifar10"           # cifar10 | cifar100 | omniglot
    data_dir: str | None = None
    data_source: str = "auto"          # auto | npz | tfds
    download: bool = False             # TFDS only
    num_clients: int = 50
    classes_per_client: int = -1       # -1: the dataset's paper value (2 for CIFAR-10, 10 for CIFAR-100)
    split: str = "reference"           # reference | dirichlet
    alpha: float = 0.5                 # Dirichlet concentration (split='dirichlet')
    val_size: int = 10_000             # CIFAR: validation images carved out of the training set
    image_size: int = 28               # Omniglot: side of the downsampled images
    n_train: int = 14                  # Omniglot: drawings per character for training
    n_val: int = 3                     # Omniglot: ... for validation (the rest, 3, for test)
    # algorithm
    algo: str = "pfedhn"
    num_steps: int = 5000
    inner_steps: int = 50
    batch_size: int = 64
    lr: float | None = None            # None: 1e-2 for pfedhn, 5e-2 for pfedhn-pc
    inner_lr: float = 5e-3
    embed_lr: float | None = None      # None: = lr
    wd: float = 1e-3
    inner_wd: float = 5e-5
    optim: str = "sgd"
    embed_dim: int = -1                # -1: int(1 + N/4)
    hyper_hid: int = 100
    n_hidden: int = 3
    n_kernels: int = 16
    clients_per_step: int = 1          # > 1 is a deviation: the reference uses 1
    # evaluation and output
    eval_every: int = 30
    seed: int = 42
    out: str | None = None
    overwrite: bool = False
    resume: bool = False               # insist on continuing the checkpoint in --out (automatic anyway)
    checkpoint_every: int = 500        # outer steps between checkpoints (0: only at the end / on a signal)
    keep_checkpoints: int = 3
    # speed only (same numbers up to float rounding, except compute_dtype)
    strategy: str = "auto"
    conv_impl: str = "auto"
    compute_dtype: str = "float32"     # bfloat16: a deviation, matmul inputs in bf16
    unroll: int = 1

    @property
    def hyper_lr(self) -> float:
        return DEFAULT_LR[self.algo] if self.lr is None else self.lr

    @property
    def n_classes(self) -> int:
        return MAX_CHARACTERS if self.dataset == "omniglot" else DATASETS[self.dataset].n_classes

    @property
    def client_classes(self) -> int:
        if self.classes_per_client != -1 or self.dataset == "omniglot":
            return self.classes_per_client
        return DATASETS[self.dataset].classes_per_client

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Raise UserError on the first bad value; returns self so calls chain."""
        def choice(flag, value, options):
            if value not in options:
                raise UserError(f"--{flag}: unknown value '{value}'; choose one of {', '.join(options)}")
        choice("dataset", self.dataset, DATASET_NAMES)
        choice("algo", self.algo, ALGOS)
        choice("optim", self.optim, OPTIMIZERS)
        choice("split", self.split, ("reference", "dirichlet"))
        choice("data-source", self.data_source, ("auto", "npz", "tfds"))
        choice("strategy", self.strategy, STRATEGIES)
        choice("conv-impl", self.conv_impl, ("auto",) + CONV_IMPLS)
        choice("compute-dtype", self.compute_dtype, COMPUTE_DTYPES)
        for flag, v in (("num-clients", self.num_clients), ("num-steps", self.num_steps),
                        ("inner-steps", self.inner_steps), ("batch-size", self.batch_size),
                        ("eval-every", self.eval_every), ("hyper-hid", self.hyper_hid),
                        ("image-size", self.image_size), ("n-train", self.n_train),
                        ("n-kernels", self.n_kernels), ("clients-per-step", self.clients_per_step),
                        ("unroll", self.unroll), ("keep-checkpoints", self.keep_checkpoints)):
            if v < 1:
                raise UserError(f"--{flag}: must be a positive integer, got {v}")
        for flag, v in (("lr", self.hyper_lr), ("inner-lr", self.inner_lr), ("embed-lr", self.embed_lr),
                        ("alpha", self.alpha)):
            if v is not None and not v > 0:
                raise UserError(f"--{flag}: must be positive, got {v}")
        for flag, v in (("wd", self.wd), ("inner-wd", self.inner_wd), ("n-hidden", self.n_hidden),
                        ("val-size", self.val_size), ("checkpoint-every", self.checkpoint_every)):
            if v < 0:
                raise UserError(f"--{flag}: must be >= 0, got {v}")
        if self.embed_dim != -1 and self.embed_dim < 1:
            raise UserError(f"--embed-dim: must be a positive integer or -1 (auto: int(1 + N/4)), got {self.embed_dim}")
        if self.dataset != "omniglot" and not 1 <= self.client_classes <= self.n_classes:
            raise UserError(f"--classes-per-client: {self.client_classes} is outside 1..{self.n_classes} "
                            f"(the number of classes of {self.dataset})")
        if self.clients_per_step > self.num_clients:
            raise UserError(f"--clients-per-step: {self.clients_per_step} exceeds --num-clients {self.num_clients}")
        return self
