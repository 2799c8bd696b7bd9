"""Data: raw sources, federated splits, and the device-resident federated dataset."""

from pfedhn_jax.data.federated import ClientIndex, FederatedData, SplitSummary, make_split, sample_batch, to_device
from pfedhn_jax.data.partition import Assignment, dirichlet_assignment, reference_assignment, split_indices
from pfedhn_jax.data.sources import DATASETS, DatasetInfo, RawDataset, load_raw

__all__ = ["ClientIndex", "FederatedData", "SplitSummary", "make_split", "sample_batch", "to_device",
           "Assignment", "dirichlet_assignment", "reference_assignment", "split_indices",
           "DATASETS", "DatasetInfo", "RawDataset", "load_raw"]
