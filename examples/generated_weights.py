"""Read the weights the hypernetwork generates for one client: shapes, norms, how they differ
between clients, and an export in the reference's PyTorch layout (for `CNNTarget.load_state_dict`).

    python examples/generated_weights.py --steps 100 --client 3 --export client3.npz
"""

import jax
import jax.numpy as jnp
import numpy as np
from _common import arrays, parser

from pfedhn_jax import ConvNet, HyperNetwork, PFedHN
from pfedhn_jax.data.arrays import from_arrays, label_split
from pfedhn_jax.interop import target_to_torch


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--client", type=int, default=0)
    p.add_argument("--pc", action="store_true", help="pFedHN-PC: the head fc3 is private, not generated")
    p.add_argument("--export", help="write the client's full weights, PyTorch names and layouts, to this .npz")
    args = p.parse_args()

    x_tr, y_tr, x_te, y_te = arrays(args.data_dir, args.seed)
    split = label_split(y_tr, y_te, args.clients, seed=args.seed)
    data = from_arrays(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]),
                       split.train, None, split.test, batch_size=args.batch_size)
    # On 32x32x3 inputs this is the reference's CIFAR target (cifar_cnn), so the export loads there.
    target = ConvNet(data.x.shape[1:], (16, 32), 5, "VALID", (120, 84), n_classes=10)
    hnet = HyperNetwork(target, num_clients=args.clients, private=("fc3",) if args.pc else ())
    alg = PFedHN(hnet, inner_steps=args.inner_steps, batch_size=args.batch_size)
    state = jax.jit(alg.init)(jax.random.key(args.seed))
    step = jax.jit(alg.step)
    for _ in range(args.steps):
        state, _ = step(data, state)

    i = jnp.array([args.client])
    theta = alg.hnet.apply(state.server.params, i)  # generated part only, leaves (1, *shape)
    print(f"client {args.client}, embedding norm {float(jnp.linalg.norm(state.server.params['embeddings'][i])):.3f}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
        print(f"  {jax.tree_util.keystr(path):28s} {str(leaf.shape[1:]):18s} norm {float(jnp.linalg.norm(leaf)):.4f}")

    # How personal are they? Cosine similarity of every client's flattened generated weights to this one's.
    everyone = alg.hnet.apply(state.server.params, jnp.arange(args.clients))
    flat = jnp.concatenate([a.reshape(args.clients, -1) for a in jax.tree.leaves(everyone)], axis=1)
    cos = flat @ flat[args.client] / (jnp.linalg.norm(flat, axis=1) * jnp.linalg.norm(flat[args.client]))
    print("cosine similarity to the other clients:", np.round(np.asarray(cos), 4).tolist())

    if args.export:  # full personal weights (generated + private head), OIHW convs, (out, in) dense
        full = jax.tree.map(lambda a: np.asarray(a[0]), alg.personal_params(state, i))
        torch_state = target_to_torch(full, target)
        np.savez(args.export, **torch_state)
        print(f"wrote {args.export}:", {k: v.shape for k, v in torch_state.items()})


if __name__ == "__main__":
    main()
