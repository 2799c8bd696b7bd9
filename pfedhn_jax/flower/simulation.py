"""Flower's simulation engine on one machine: the ServerApp and one virtual SuperNode per client.

Uses `flwr.simulation.run_simulation` (Ray backend). Flower 1.42 marks that Python entry point
deprecated in favour of `flwr run` with a local simulation connection, which runs the same engine
in a separate SuperLink; docs/flower.md shows both. The ClientApps find their shards through the
run config `federation` and their partition id.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pfedhn_jax.flower.shards import read_federation


def run(federation: str, out: str, round_timeout: float = 300.0, cpus_per_client: float = 1.0,
        progress: bool = True, num_cpus: int | None = None, node_wait: float = 120.0) -> dict:
    """Run the federation under the simulation engine; returns the server's results dict."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from pfedhn_jax.flower import client_app
    from pfedhn_jax.flower.server_app import serve

    cfg, _ = read_federation(federation)
    federation = str(Path(federation).resolve())
    holder: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        holder["results"] = serve(grid, federation, out, round_timeout=round_timeout, node_wait=node_wait,
                                  progress=progress)

    init_args = {"num_cpus": num_cpus} if num_cpus else {}
    backend = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}, "init_args": init_args}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server, client_app.make_app(federation), num_supernodes=cfg.num_clients, backend_config=backend)
    if "results" not in holder:
        raise RuntimeError("the Flower simulation ended without the ServerApp's results (see the log above)")
    return holder["results"]
