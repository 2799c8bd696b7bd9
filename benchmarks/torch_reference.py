"""PyTorch version of the reference's outer step, timed back to back with the library's JAX step.

The torch side is written here after the official code's defaults (docs/reference.md §2-3):
CNNHyper (embeddings N x int(1 + N/4), MLP e->100 then 3 x [ReLU, 100->100], one Linear head per
target tensor) generating CNNTarget (LeNet-like, 121,182 parameters); one outer step =
  weights = hnet(i); net.load_state_dict(weights); fresh SGD(lr 5e-3, momentum .9, wd 5e-5);
  50 x [random batch of 64, CE loss, backward, clip_grad_norm_(50), step];
  grads = torch.autograd.grad(weights, hnet.parameters(), grad_outputs=theta - theta~);
  clip_grad_norm_(hnet, 50); SGD(lr 1e-2, momentum .9, wd 1e-3, embeddings in their own group).
Data: each client's training images are held in memory as uint8 (a random subset of the CIFAR-10
npz of the same size as a reference-split client, ~727 images, or random tensors with --random-data);
a batch is drawn without replacement and normalised per step, as the JAX step does.
(The official loop also evaluates one test batch before the local steps and builds a DataLoader
iterator per step; both are left out here, which makes the torch side faster, not slower.)

The JAX side is the library's real step (`benchmarks/client_throughput.py --strategies loop --cps 1`,
C=1 like the reference), run in a subprocess by --jax-python (default: the repo's .venv) between two
torch blocks: torch, JAX, torch. Each torch block times every --threads value (default: the core
count, then 1). Ratios are against the fastest torch thread setting (median of all its runs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
# docs/reference.md §8 (official PyTorch code, 2-core AVX-512/AMX x86 CPU, not this machine)
REF_PAPER_LOCAL_STEPS_PER_S = {"full_run_excl_eval": 100.0, "outer_step_alone": 113.0}


def parse_args(argv=None):
    p = common.base_parser("torch_reference", __doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--random-data", action="store_true", help="random uint8 tensors of CIFAR shape instead of the npz")
    p.add_argument("--num-clients", type=int, default=50)
    p.add_argument("--client-size", type=int, default=727, help="training images per client (reference split: ~727)")
    p.add_argument("--inner-steps", type=int, default=50)
    p.add_argument("--threads", default=f"{os.cpu_count()},1",
                   help="comma list of torch.set_num_threads values timed in each block (default: core count, then 1; "
                        "on a machine shared with other jobs, 2 OpenMP threads can be many times slower than 1)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--jax-python", default=None,
                   help="python that runs the JAX side (default: <repo>/.venv/bin/python if present, else this one)")
    p.add_argument("--jax-conv-impl", default="auto", help="comma list of conv impls for the JAX side: auto,im2col,xla")
    p.add_argument("--jax-strategy", default="loop")
    p.add_argument("--skip-jax", action="store_true")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the reference's models

def build_models(torch, nn, n_nodes: int, in_channels=3, out_dim=10, n_kernels=16, hidden_dim=100, n_hidden=3):
    import torch.nn.functional as F

    class CNNHyper(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_channels, self.out_dim, self.n_kernels = in_channels, out_dim, n_kernels
            self.embeddings = nn.Embedding(n_nodes, int(1 + n_nodes / 4))
            layers = [nn.Linear(int(1 + n_nodes / 4), hidden_dim)]
            for _ in range(n_hidden):
                layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, hidden_dim)]
            self.mlp = nn.Sequential(*layers)
            k, c = n_kernels, in_channels
            self.c1_weights = nn.Linear(hidden_dim, k * c * 25)
            self.c1_bias = nn.Linear(hidden_dim, k)
            self.c2_weights = nn.Linear(hidden_dim, 2 * k * k * 25)
            self.c2_bias = nn.Linear(hidden_dim, 2 * k)
            self.l1_weights = nn.Linear(hidden_dim, 120 * 2 * k * 25)
            self.l1_bias = nn.Linear(hidden_dim, 120)
            self.l2_weights = nn.Linear(hidden_dim, 84 * 120)
            self.l2_bias = nn.Linear(hidden_dim, 84)
            self.l3_weights = nn.Linear(hidden_dim, out_dim * 84)
            self.l3_bias = nn.Linear(hidden_dim, out_dim)

        def forward(self, idx):
            f = self.mlp(self.embeddings(idx))
            k, c = self.n_kernels, self.in_channels
            return OrderedDict({
                "conv1.weight": self.c1_weights(f).view(k, c, 5, 5),
                "conv1.bias": self.c1_bias(f).view(-1),
                "conv2.weight": self.c2_weights(f).view(2 * k, k, 5, 5),
                "conv2.bias": self.c2_bias(f).view(-1),
                "fc1.weight": self.l1_weights(f).view(120, 2 * k * 25),
                "fc1.bias": self.l1_bias(f).view(-1),
                "fc2.weight": self.l2_weights(f).view(84, 120),
                "fc2.bias": self.l2_bias(f).view(-1),
                "fc3.weight": self.l3_weights(f).view(self.out_dim, 84),
                "fc3.bias": self.l3_bias(f).view(-1),
            })

    class CNNTarget(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, n_kernels, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(n_kernels, 2 * n_kernels, 5)
            self.fc1 = nn.Linear(2 * n_kernels * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, out_dim)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = x.view(x.shape[0], -1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    return CNNHyper(), CNNTarget()


class TorchOuterStep:
    """The official trainer's loop body (pFedHN, sgd), with data already in memory."""

    def __init__(self, torch, clients_x, clients_y, n_nodes, inner_steps, device,
                 lr=1e-2, wd=1e-3, inner_lr=5e-3, inner_wd=5e-5, batch=64):
        import torch.nn as nn
        self.torch, self.device = torch, device
        self.hnet, self.net = (m.to(device) for m in build_models(torch, nn, n_nodes))
        self.x, self.y = clients_x, clients_y
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.n_nodes, self.inner_steps, self.batch = n_nodes, inner_steps, batch
        self.inner_lr, self.inner_wd = inner_lr, inner_wd
        embed = [p for n, p in self.hnet.named_parameters() if "embed" in n]
        rest = [p for n, p in self.hnet.named_parameters() if "embed" not in n]
        self.optimizer = torch.optim.SGD([{"params": rest}, {"params": embed, "lr": lr}],
                                         lr=lr, momentum=0.9, weight_decay=wd)
        self.criteria = nn.CrossEntropyLoss()
        self.inner_s = 0.0

    def sample(self, node_id):
        torch = self.torch
        x, y = self.x[node_id], self.y[node_id]
        idx = torch.randperm(x.shape[0], device=self.device)[:self.batch]
        return (x[idx].float() / 255.0 - self.mean) / self.std, y[idx]

    def __call__(self):
        torch = self.torch
        hnet, net, optimizer = self.hnet, self.net, self.optimizer
        hnet.train()
        node_id = int(torch.randint(self.n_nodes, ()).item())
        weights = hnet(torch.tensor([node_id], dtype=torch.long, device=self.device))
        net.load_state_dict(weights)
        inner_optim = torch.optim.SGD(net.parameters(), lr=self.inner_lr, momentum=0.9, weight_decay=self.inner_wd)
        inner_state = OrderedDict({k: t.data for k, t in weights.items()})
        t0 = time.perf_counter()
        for _ in range(self.inner_steps):
            net.train()
            inner_optim.zero_grad()
            optimizer.zero_grad()
            img, label = self.sample(node_id)
            loss = self.criteria(net(img), label)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 50)
            inner_optim.step()
        self.inner_s += time.perf_counter() - t0
        optimizer.zero_grad()
        final_state = net.state_dict()
        delta_theta = OrderedDict({k: inner_state[k] - final_state[k] for k in weights.keys()})
        hnet_grads = torch.autograd.grad(list(weights.values()), hnet.parameters(),
                                         grad_outputs=list(delta_theta.values()))
        for p, g in zip(hnet.parameters(), hnet_grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(hnet.parameters(), 50)
        optimizer.step()
        return loss


def client_data(torch, args, device):
    """Per-client uint8 NCHW images and int64 labels, in memory on `device`."""
    import numpy as np
    rng = np.random.default_rng(args.seed)
    if args.random_data:
        x = rng.integers(0, 256, (args.num_clients * args.client_size, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, len(x))
        source = "random uint8 tensors of CIFAR shape"
    else:
        with np.load(Path(args.data_dir) / "cifar10.npz") as d:
            x, y = d["x_train"], d["y_train"].astype(np.int64)
        source = "CIFAR-10 (JPEG copy) npz, random per-client subsets"
    xs, ys = [], []
    for _ in range(args.num_clients):
        ix = rng.choice(len(x), args.client_size, replace=False)
        xs.append(torch.from_numpy(np.ascontiguousarray(x[ix].transpose(0, 3, 1, 2))).to(device))
        ys.append(torch.from_numpy(np.asarray(y[ix], np.int64)).to(device))
    return xs, ys, source


def time_torch(step, torch, device, repeats, warmup, k) -> dict:
    sync = (lambda r: torch.cuda.synchronize()) if device.type == "cuda" else (lambda r: r)
    step.inner_s = 0.0
    stats = common.median_time(step, repeats, warmup, sync=sync)
    inner_per_outer = step.inner_s / (repeats + warmup)  # mean over all calls, warm-up included
    return {"outer_step_s": stats["median_s"], "outer_steps_per_s": 1 / stats["median_s"],
            "local_steps_per_s": k / stats["median_s"], "inner_loop_mean_s": inner_per_outer,
            "local_steps_per_s_inner_loop_only": k / inner_per_outer,
            "local_steps_per_cpu_s": k / stats["cpu_median_s"], "timing": stats}


def block(record, step, torch, device, args, threads, index) -> None:
    """Time the torch step once per thread count; append to record['torch'] and save."""
    for t in threads:
        torch.set_num_threads(t)
        res = time_torch(step, torch, device, args.repeats, args.warmup, args.inner_steps)
        record["torch"].append({"block": index, "threads": t, **res})
        print(f"torch block {index}, {t} thread(s): {res['local_steps_per_s']:.4g} local steps/s", flush=True)
        common.write_json(args.out, record)
    torch.set_num_threads(threads[0])


def run_jax(args, conv_impl: str) -> dict:
    py = args.jax_python
    if py is None:
        venv = common.REPO / ".venv" / "bin" / "python"
        py = str(venv) if venv.exists() else sys.executable
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "jax.json"
        data_dir = args.data_dir
        if args.random_data:  # the JAX side reads an npz: give it random pixels of CIFAR's layout
            import numpy as np
            rng = np.random.default_rng(0)
            np.savez(Path(d) / "cifar10.npz", x_train=rng.integers(0, 256, (20000, 32, 32, 3), np.uint8),
                     y_train=np.arange(20000) % 10, x_test=rng.integers(0, 256, (2000, 32, 32, 3), np.uint8),
                     y_test=np.arange(2000) % 10)
            data_dir = d
        cmd = [py, str(common.BENCH_DIR / "client_throughput.py"), "--strategies", args.jax_strategy, "--cps", "1",
               "--inner-steps", str(args.inner_steps), "--num-clients", str(args.num_clients),
               "--conv-impl", conv_impl, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--data-dir", data_dir, "--no-plot", "--out", str(out), "--note", args.note]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True, capture_output=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"JAX subprocess failed with exit code {proc.returncode}")
        rec = json.loads(out.read_text())
    row = rec["rows"][0]
    return {"python": py, "command": " ".join(cmd), "subprocess_wall_s": wall, "environment": rec["environment"],
            "conv_impl": row.get("conv_impl", conv_impl), "compile_s": row.get("compile_s"),
            "outer_step_s": row.get("outer_step_s"), "outer_steps_per_s": row.get("outer_steps_per_s"),
            "local_steps_per_s": row.get("local_steps_per_s"), "local_steps_per_cpu_s": row.get("local_steps_per_cpu_s"),
            "timing": row.get("timing"), "error": row.get("error")}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    threads = common.parse_ints(args.threads)
    torch.set_num_threads(threads[0])
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    env = common.environment(jax_info=False, torch_info=True)
    env["torch_device"] = str(device)
    common.print_env(env)
    xs, ys, source = client_data(torch, args, device)
    step = TorchOuterStep(torch, xs, ys, args.num_clients, args.inner_steps, device)
    n_target = sum(p.numel() for p in step.net.parameters())
    n_hnet = sum(p.numel() for p in step.hnet.parameters())
    print(f"torch: target {n_target:,} params, hypernetwork {n_hnet:,} params, threads {threads}, "
          f"device {device}, data: {source}", flush=True)
    record = {"benchmark": "torch_reference", "command": common.cmdline(), "environment": env, "note": args.note,
              "settings": {"num_clients": args.num_clients, "client_size": args.client_size,
                           "inner_steps": args.inner_steps, "batch_size": 64, "repeats": args.repeats,
                           "warmup": args.warmup, "data": source, "torch_threads": threads,
                           "target_params": n_target, "hypernet_params": n_hnet},
              "reference_section8_local_steps_per_s": REF_PAPER_LOCAL_STEPS_PER_S,
              "order": "torch, jax (subprocess), torch", "torch": [], "jax": []}
    k = args.inner_steps
    block(record, step, torch, device, args, threads, 1)
    if not args.skip_jax:
        for ci in common.parse_strs(args.jax_conv_impl):
            record["jax"].append(run_jax(args, ci))
            common.write_json(args.out, record)
        block(record, step, torch, device, args, threads, 2)
    med = statistics.median
    per_threads = {}
    for t in threads:
        blks = [b for b in record["torch"] if b["threads"] == t]
        t_med = med([x for b in blks for x in b["timing"]["times_s"]])
        c_med = med([x for b in blks for x in b["timing"]["cpu_times_s"]])
        per_threads[t] = {"outer_step_s": t_med, "local_steps_per_s": k / t_med, "local_steps_per_cpu_s": k / c_med}
    best_t = max(per_threads, key=lambda t: per_threads[t]["local_steps_per_s"])
    best = per_threads[best_t]
    rows = [{"impl": f"torch {torch.__version__} {b['threads']} thr, block {b['block']}", "device": str(device),
             "compile_s": "", "outer_step_s": b["outer_step_s"], "local_steps_per_s": b["local_steps_per_s"],
             "inner_loop_only": b["local_steps_per_s_inner_loop_only"],
             "local_steps_per_cpu_s": b["local_steps_per_cpu_s"], "ratio": "", "ratio_cpu": ""}
            for b in record["torch"]]
    rows += [{"impl": f"torch {t} thr (median of all runs)" + (" = BEST" if t == best_t else ""), "device": str(device),
              "compile_s": "", "outer_step_s": v["outer_step_s"], "local_steps_per_s": v["local_steps_per_s"],
              "inner_loop_only": "", "local_steps_per_cpu_s": v["local_steps_per_cpu_s"],
              "ratio": v["local_steps_per_s"] / best["local_steps_per_s"],
              "ratio_cpu": v["local_steps_per_cpu_s"] / best["local_steps_per_cpu_s"]} for t, v in per_threads.items()]
    for j in record["jax"]:
        j["ratio_vs_best_torch_local_steps"] = (j["local_steps_per_s"] or float("nan")) / best["local_steps_per_s"]
        j["ratio_vs_best_torch_per_cpu_s"] = (j.get("local_steps_per_cpu_s") or float("nan")) / best["local_steps_per_cpu_s"]
        j["ratio_vs_torch_by_threads"] = {t: (j["local_steps_per_s"] or float("nan")) / v["local_steps_per_s"]
                                          for t, v in per_threads.items()}
        rows.append({"impl": f"jax {j['environment']['jax']} {args.jax_strategy} conv={j['conv_impl']}",
                     "device": j["environment"]["device_kind"], "compile_s": j["compile_s"],
                     "outer_step_s": j["outer_step_s"], "local_steps_per_s": j["local_steps_per_s"],
                     "inner_loop_only": "", "local_steps_per_cpu_s": j.get("local_steps_per_cpu_s"),
                     "ratio": j["ratio_vs_best_torch_local_steps"], "ratio_cpu": j["ratio_vs_best_torch_per_cpu_s"]})
    record["summary"] = {"torch_by_threads": per_threads, "torch_best_threads": best_t,
                         "torch_best_local_steps_per_s": best["local_steps_per_s"],
                         "jax": {j["conv_impl"]: {"local_steps_per_s": j["local_steps_per_s"],
                                                  "ratio_vs_best_torch": j["ratio_vs_best_torch_local_steps"],
                                                  "ratio_vs_best_torch_per_cpu_s": j["ratio_vs_best_torch_per_cpu_s"],
                                                  "ratio_vs_torch_by_threads": j["ratio_vs_torch_by_threads"],
                                                  "compile_s": j["compile_s"]} for j in record["jax"]}}
    print()
    print(common.table(rows, title=f"one outer step (C=1, K={k}, batch 64), back to back in one run; "
                                   f"median of {args.repeats} per block; ratio = local steps/s / best torch's "
                                   f"(ratio_cpu: per CPU-second of the process)"))
    common.finish(args.out, record)
    return record


if __name__ == "__main__":
    main()
