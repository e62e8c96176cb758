"""Pairs: any Pyro model and guide, called one way (calling conventions, minibatch scaling),
read from traces (structure, per-example scoring), the objectives built from them, and the
checker. Imports only ``ppvae.data`` and the foundation modules.
"""

from ppvae.pairs.calling import (
    DEFAULT_PLATE,
    SUBSAMPLED,
    DataPlateScale,
    accepts_indices,
    aside,
    batch_sized,
    batched,
    data_frame,
    self_subsampled,
    signature_target,
)
from ppvae.pairs.structure import (
    Structure,
    claim_parameters,
    observed_site,
    observes,
    param_tensors,
    place,
    plate_nesting,
    probe,
    run_pair,
    sample_sites,
    structure,
)

__all__ = [
    "DEFAULT_PLATE",
    "DataPlateScale",
    "SUBSAMPLED",
    "Structure",
    "accepts_indices",
    "aside",
    "batch_sized",
    "batched",
    "claim_parameters",
    "observes",
    "data_frame",
    "observed_site",
    "param_tensors",
    "place",
    "plate_nesting",
    "probe",
    "run_pair",
    "sample_sites",
    "self_subsampled",
    "signature_target",
    "structure",
]
