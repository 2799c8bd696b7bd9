"""One config dataclass for a training run, the validation of every user-set value, and the one
definition of "the same run".

Plain data: this module imports nothing heavy (no JAX, no numpy), so scripts parse and validate
flags before any slow import. Option lists are literals here; the modules that implement the
options check that they agree (tests/test_config.py). Dataset-dependent limits (classes per
client, Omniglot's 50 alphabets) are checked by `data.registry.validate`, which calls `validate`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pfedhn_jax.errors import UserError

# the algorithm registry's names, in its order (pfedhn_jax/algorithms/__init__.py checks they agree)
ALGOS = ("pfedhn", "pfedhn-pc", "local", "fedavg", "fedper", "lg-fedavg", "pfedme", "per-fedavg", "per-fedavg-hf")
PFEDHN_ALGOS = ("pfedhn", "pfedhn-pc")
DATASETS = ("cifar10", "cifar100", "omniglot")
OPTIMIZERS = ("sgd", "adam")
SPLITS = ("reference", "dirichlet")
DATA_SOURCES = ("auto", "npz", "tfds")
STRATEGIES = ("auto", "vmap", "map", "loop")
CONV_IMPLS = ("auto", "xla", "nhwc_vjp", "im2col")  # = layers.CONV_IMPLS
COMPUTE_DTYPES = ("float32", "bfloat16")
# jax_default_matmul_precision values for matmuls and convolutions (docs/reference.md §9)
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "default")
# --lr by algorithm: the hypernetwork's as in the reference's two trainers (docs/reference.md §3); the
# baselines' own rate (the registry says which; sources in docs/algorithms.md).
DEFAULT_LR = {"pfedhn": 1e-2, "pfedhn-pc": 5e-2, "local": 5e-3, "fedavg": 5e-3, "fedper": 5e-3, "lg-fedavg": 5e-3,
              "pfedme": 5e-3, "per-fedavg": 1e-3, "per-fedavg-hf": 1e-3}

# Fields that change neither the numbers nor the schedule (paths, speed, checkpoint cadence, how
# the run was started): two configs that differ only here describe the same run.
NOT_THE_RUN = ("data_dir", "out", "overwrite", "resume", "strategy", "conv_impl", "unroll",
               "checkpoint_every", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of a run. Defaults reproduce the reference (docs/reference.md §3); deviations are opt-in."""

    # data
    dataset: str = "cifar10"
    data_dir: str | None = None
    data_source: str = "auto"
    download: bool = False
    num_clients: int = 50
    classes_per_client: int = -1       # -1: the dataset's paper value (2 for CIFAR-10, 10 for CIFAR-100)
    split: str = "reference"
    alpha: float = 0.5                 # Dirichlet concentration (split='dirichlet')
    val_size: int = 10_000             # CIFAR: validation images carved out of the training set
    image_size: int = 28               # Omniglot: side of the downsampled images
    n_train: int = 14                  # Omniglot: drawings per character for training
    n_val: int = 3                     # Omniglot: ... for validation (the rest, 3, for test)
    split_file: str | None = None      # replay: per-client index lists dumped from a reference run
    # algorithm
    algo: str = "pfedhn"
    num_steps: int = 5000
    inner_steps: int = 50
    batch_size: int = 64
    lr: float | None = None            # None: the algorithm's (DEFAULT_LR); what it is depends on the algorithm
    inner_lr: float = 5e-3
    embed_lr: float | None = None      # None: = lr
    wd: float = 1e-3
    inner_wd: float = 5e-5
    optim: str = "sgd"
    embed_dim: int = -1                # -1: int(1 + N/4)
    hyper_hid: int = 100
    n_hidden: int = 3
    n_kernels: int = 16
    client_widths: str | None = None   # heterogeneous targets: "8,16,32" = one CNN per n_kernels (CIFAR)
    client_assign: str = "round-robin" # architecture of each client: round-robin, or N indices into the widths
    clients_per_step: int = 1          # > 1 is a deviation: the reference uses 1
    # baselines' own hyperparameters (docs/algorithms.md; help text in the algorithm registry)
    pfedme_lambda: float = 15.0
    pfedme_k: int = 5
    pfedme_personal_lr: float = 0.01
    pfedme_beta: float = 1.0
    perfedavg_alpha: float = 0.01
    init_from: str | None = None       # replay: initial hypernetwork (and private heads) of a reference run
    client_order: str | None = None    # replay: the client of every outer step of a reference run
    # evaluation and output
    eval_every: int = 30
    seed: int = 42
    out: str | None = None
    overwrite: bool = False
    resume: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2         # the newest two: resume needs one, the other guards against a bad disk
    # speed only (same numbers up to float rounding, except compute_dtype, and matmul_precision off CPU)
    strategy: str = "auto"
    conv_impl: str = "auto"
    compute_dtype: str = "float32"     # bfloat16: a deviation, matmul inputs in bf16
    matmul_precision: str = "float32"  # the reference's float32; 'default': JAX's (TF32 on NVIDIA GPUs, bf16 on TPUs)
    unroll: int = 1

    @property
    def effective_lr(self) -> float:
        """--lr, or the algorithm's default when unset."""
        return DEFAULT_LR[self.algo] if self.lr is None else self.lr

    @property
    def widths(self) -> tuple[int, ...]:
        """The n_kernels of each architecture of a heterogeneous run (--client-widths); () otherwise."""
        return _ints("client-widths", self.client_widths) if self.client_widths else ()

    @property
    def assignment(self) -> tuple[int, ...]:
        """Each client's index into `widths` (--client-assign); () = round-robin (client i gets i mod A)."""
        return () if self.client_assign == "round-robin" else _ints("client-assign", self.client_assign)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Raise UserError on the first bad value; returns self so calls chain."""
        def choice(flag, value, options):
            if value not in options:
                raise UserError(f"--{flag}: unknown value '{value}'; choose one of {', '.join(options)}")
        choice("dataset", self.dataset, DATASETS)
        choice("algo", self.algo, ALGOS)
        choice("optim", self.optim, OPTIMIZERS)
        choice("split", self.split, SPLITS)
        choice("data-source", self.data_source, DATA_SOURCES)
        choice("strategy", self.strategy, STRATEGIES)
        choice("conv-impl", self.conv_impl, CONV_IMPLS)
        choice("compute-dtype", self.compute_dtype, COMPUTE_DTYPES)
        choice("matmul-precision", self.matmul_precision, MATMUL_PRECISIONS)
        for flag, v in (("num-clients", self.num_clients), ("num-steps", self.num_steps),
                        ("inner-steps", self.inner_steps), ("batch-size", self.batch_size),
                        ("eval-every", self.eval_every), ("hyper-hid", self.hyper_hid),
                        ("image-size", self.image_size), ("n-train", self.n_train),
                        ("n-kernels", self.n_kernels), ("clients-per-step", self.clients_per_step),
                        ("unroll", self.unroll), ("keep-checkpoints", self.keep_checkpoints),
                        ("pfedme-k", self.pfedme_k)):
            if v < 1:
                raise UserError(f"--{flag}: must be a positive integer, got {v}")
        for flag, v in (("lr", self.effective_lr), ("inner-lr", self.inner_lr), ("embed-lr", self.embed_lr),
                        ("alpha", self.alpha), ("pfedme-lambda", self.pfedme_lambda),
                        ("pfedme-personal-lr", self.pfedme_personal_lr), ("pfedme-beta", self.pfedme_beta),
                        ("perfedavg-alpha", self.perfedavg_alpha)):
            if v is not None and not v > 0:
                raise UserError(f"--{flag}: must be positive, got {v}")
        for flag, v in (("wd", self.wd), ("inner-wd", self.inner_wd), ("n-hidden", self.n_hidden),
                        ("val-size", self.val_size), ("checkpoint-every", self.checkpoint_every),
                        ("n-val", self.n_val)):
            if v < 0:
                raise UserError(f"--{flag}: must be >= 0, got {v}")
        if self.embed_dim != -1 and self.embed_dim < 1:
            raise UserError(f"--embed-dim: must be a positive integer or -1 (auto: int(1 + N/4)), got {self.embed_dim}")
        if self.init_from is not None and self.algo not in PFEDHN_ALGOS:
            raise UserError(f"--init-from: loads a reference hypernetwork, for pfedhn / pfedhn-pc only; drop it "
                            f"for --algo {self.algo}")
        if self.client_order is not None and self.clients_per_step != 1:
            raise UserError(f"--client-order: replays one client per step (the reference's); drop "
                            f"--clients-per-step {self.clients_per_step}")
        if self.clients_per_step > self.num_clients:
            raise UserError(f"--clients-per-step: {self.clients_per_step} exceeds --num-clients {self.num_clients}")
        self._validate_widths()
        return self

    def _validate_widths(self) -> None:
        if not self.client_widths:
            if self.client_assign != "round-robin":
                raise UserError("--client-assign: only with --client-widths (heterogeneous targets)")
            return
        if any(w < 1 for w in self.widths):
            raise UserError(f"--client-widths: must be positive integers, got {self.client_widths}")
        if self.algo != "pfedhn":
            raise UserError("--client-widths: heterogeneous targets are pFedHN only (no private head); "
                            "use --algo pfedhn")
        if self.init_from is not None:
            raise UserError("--init-from: loads a reference hypernetwork of one architecture; drop --client-widths")
        a = self.assignment
        if a and (len(a) != self.num_clients or not all(0 <= x < len(self.widths) for x in a)):
            raise UserError(f"--client-assign: needs {self.num_clients} indices (one per client) in "
                            f"[0, {len(self.widths)}), or round-robin; got {self.client_assign}")


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--{flag}: expected comma-separated integers, got '{text}'") from None


def _canonical(v: Any) -> Any:
    """A value as it reads back from JSON (tuples -> lists), so saved and live configs compare equal."""
    return json.loads(json.dumps(v))


def run_differences(saved: dict[str, Any], cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, now)} over the fields that define the run (all but NOT_THE_RUN).

    The one rule for "the same run", used by resume and by the grid: a field missing from an older
    saved config counts as its default; a saved field that Config no longer has is a difference.
    """
    now = _effective(cfg.to_dict())
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    full = _effective({**defaults, **saved})  # automatic values (lr None, embed_dim -1) as the run used them
    out = {}
    for k in sorted(set(saved) | set(now)):
        if k in NOT_THE_RUN:
            continue
        a, b = full.get(k), now.get(k)
        if _canonical(a) != _canonical(b):
            out[k] = (a, b)
    return out


def _effective(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict with its automatic values filled in: lr (per algorithm), embed_lr (= lr), embed_dim."""
    d = dict(d)
    if d.get("lr") is None and d.get("algo") in DEFAULT_LR:
        d["lr"] = DEFAULT_LR[d["algo"]]
    if d.get("embed_lr") is None:
        d["embed_lr"] = d.get("lr")
    if d.get("embed_dim") == -1 and isinstance(d.get("num_clients"), int):
        d["embed_dim"] = int(1 + d["num_clients"] / 4)
    return d


def describe_differences(diff: dict[str, tuple[Any, Any]]) -> str:
    """'--lr (saved: 0.01, now: 0.05), ...' for a message."""
    return ", ".join(f"--{k.replace('_', '-')} (saved: {a}, now: {b})" for k, (a, b) in diff.items())
