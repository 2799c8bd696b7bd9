"""Data: raw sources, federated splits, the dataset registry, and the device-resident federated dataset.

Submodules are imported where used (`from pfedhn_jax.data.federated import ...`); this package
imports nothing itself, so the light ones (registry, sources) load without JAX.
"""
