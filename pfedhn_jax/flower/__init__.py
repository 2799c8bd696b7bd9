"""pFedHN on Flower (https://flower.ai): the hypernetwork never leaves the server.

Needs the optional extra: `pip install -e ".[flower]"` (the core library never imports flwr).

  shards      `prepare`: the simulation's federated split as one shard per client (no flwr)
  rounds      one round's numbers split at the network, with the simulation's functions (no flwr)
  codec       pytrees <-> Flower ArrayRecords, reply checks, bytes on the wire
  server_app  the ServerApp (`pfedhn_jax.flower.server_app:app`): φ and its optimizer state
  client_app  the ClientApp (`pfedhn_jax.flower.client_app:app`): one client's data and private state
  app/        the Flower app folder (pyproject.toml) that `flwr run` submits

How to run it (simulation engine, real processes with TLS and node authentication): docs/flower.md.
"""
