"""Local-step speed of the CIFAR target under each convolution implementation (`pfedhn_jax.layers`):
K clipped-SGD steps (batch 64, the reference's local optimizer) in one `lax.scan`, as in a
client's local loop, for one client and for S clients' loops under `vmap` (several runs in one
program).

    python benchmarks/conv_impls.py --repeats 3

`--freeze none,conv1` adds rows with one layer's parameters held fixed (`stop_gradient`): the
difference is what that layer's parameter gradient costs in the step.

Prints compile s and local steps/s per (impl, clients, frozen layer); writes JSON. Numbers:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = common.base_parser("conv_impls", __doc__)
    p.add_argument("--impls", default="xla,nhwc_vjp,im2col")
    p.add_argument("--clients", default="1,3", help="comma list: 1 = one loop, S > 1 = S loops under vmap")
    p.add_argument("--inner-steps", type=int, default=50)
    p.add_argument("--freeze", default="none",
                   help="comma list of layers (conv1, conv2, fc1, ...) or none: one row each, that layer's parameters fixed")
    common.add_matmul_precision(p)
    return p.parse_args(argv)


def measure(impl: str, clients: int, k: int, repeats: int, warmup: int, precision: str, frozen: str = "none") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from pfedhn_jax.xla import at_precision, compiler_options
    from pfedhn_jax.config import Config
    from pfedhn_jax.client import masked_cross_entropy
    from pfedhn_jax.optim import torch_sgd as sgd
    from pfedhn_jax.targets import cifar_cnn

    target = cifar_cnn(conv_impl=impl)
    opt = sgd(5e-3, 0.9, 5e-5, 50.0)  # the reference's inner optimizer and clipping
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(clients, k, 64, 32, 32, 3)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, (clients, k, 64)))
    mask = jnp.ones((64,), bool)
    params = jax.vmap(target.init)(jax.random.split(jax.random.key(0), clients))

    def fix(p):
        return p if frozen == "none" else {**p, frozen: jax.lax.stop_gradient(p[frozen])}

    def local_loop(p, xs, ys):
        def step(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(lambda p: masked_cross_entropy(target.apply(fix(p), batch[0]), batch[1], mask))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), (xs, ys))
        return p, losses.mean()

    fn = jax.vmap(local_loop) if clients > 1 else lambda p, x, y: local_loop(*jax.tree.map(lambda a: a[0], (p, x, y)))
    t0 = time.perf_counter()
    compiled = jax.jit(at_precision(Config(matmul_precision=precision), fn),
                       compiler_options=compiler_options()).lower(params, xs, ys).compile()
    compile_s = time.perf_counter() - t0
    t = common.median_time(lambda: compiled(params, xs, ys), repeats, warmup, jax.block_until_ready)
    return {"impl": impl, "clients": clients, "frozen": frozen, "compile_s": compile_s, "loop_s": t["median_s"],
            "local_steps_per_s": clients * k / t["median_s"], "cpu_per_wall": t["cpu_median_s"] / t["median_s"],
            "timing": t}


def main(argv=None) -> None:
    args = parse_args(argv)
    env = common.environment()
    common.print_env(env)
    import jax
    from pfedhn_jax.targets import cifar_cnn
    layers = list(jax.eval_shape(cifar_cnn().init, jax.random.key(0)))
    bad = [f for f in common.parse_strs(args.freeze) if f != "none" and f not in layers]
    if bad:
        raise SystemExit(f"--freeze: no layer {', '.join(bad)}; the layers are {', '.join(layers)} (or none)")
    rows = []
    for clients in common.parse_ints(args.clients):
        for impl in common.parse_strs(args.impls):
            for frozen in common.parse_strs(args.freeze):
                rows.append(measure(impl, clients, args.inner_steps, args.repeats, args.warmup,
                                    args.matmul_precision, frozen))
                print(common.table(rows[-1:], COLUMNS), flush=True)
    print(common.table(rows, COLUMNS,
                       title=f"K = {args.inner_steps} local steps per client, batch 64; median of {args.repeats}"))
    common.finish(args.out, {"cmdline": common.cmdline(), "environment": env, "note": args.note,
                             "settings": vars(args), "rows": rows})


COLUMNS = ("impl", "clients", "frozen", "compile_s", "loop_s", "local_steps_per_s", "cpu_per_wall")

if __name__ == "__main__":
    main()
