"""Your own Flax linen model as pFedHN's target network.

The hypernetwork reads the shapes of the module's params and generates all of them for each client
(pFedHN), or all but the `head` layer, which then stays private to each client (`--pc`, pFedHN-PC).

    python examples/flax_target.py                          # random images, 10 clients
    python examples/flax_target.py --data-dir ../shared/data --pc
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _common import arrays, parser

from pfedhn_jax import HyperNetwork, PFedHN, evaluate_clients, from_linen, layers, summarize
from pfedhn_jax.data.arrays import from_arrays, label_split


class SmallCNN(nn.Module):
    """Two conv + max-pool blocks, a hidden dense layer and a classifier named `head`."""

    n_classes: int

    @nn.compact
    def __call__(self, x):  # (B, H, W, C) -> (B, n_classes)
        for channels in (8, 16):  # the hook keeps the conv gradients fast in the local loop on CPU
            conv = nn.Conv(channels, (3, 3), conv_general_dilated=layers.conv_general_dilated)
            x = nn.max_pool(nn.relu(conv(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.n_classes, name="head")(x)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pc", action="store_true", help="pFedHN-PC: keep the `head` layer private")
    args = p.parse_args()

    # Data: arrays + each client's positions (the paper's split: 2 classes per client).
    x_tr, y_tr, x_te, y_te = arrays(args.data_dir, args.seed)
    split = label_split(y_tr, y_te, args.clients, classes_per_client=2, seed=args.seed)
    data = from_arrays(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]),
                       split.train, None, split.test, batch_size=args.batch_size)

    # Target: any linen module whose only variables are 'params'; one sample input fixes the shapes.
    target = from_linen(SmallCNN(n_classes=10), jnp.zeros((1, *data.x.shape[1:])))
    hnet = HyperNetwork(target, num_clients=args.clients, private=("head",) if args.pc else ())
    alg = PFedHN(hnet, inner_steps=args.inner_steps, batch_size=args.batch_size)
    print("generated params per client:", sum(s.size for s in jax.tree.leaves(hnet.target_shapes())))

    state = jax.jit(alg.init)(jax.random.key(args.seed))
    step = jax.jit(alg.step)
    for t in range(1, args.steps + 1):
        state, metrics = step(data, state)
        if t % max(1, args.steps // 5) == 0:
            print(f"step {t}: client {int(metrics.client_ids[0])} loss {float(metrics.loss[0]):.3f}")

    params = alg.personal_params(state, jnp.arange(args.clients))  # leaves (N, ...)
    test = summarize(evaluate_clients(target.apply, params, data, data.test))
    print(f"test accuracy {test['acc']:.4f} (clients: min {test['min']:.3f}, max {test['max']:.3f})")


if __name__ == "__main__":
    main()
