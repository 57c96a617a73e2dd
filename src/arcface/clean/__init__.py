"""Sub-center ArcFace data cleaning: the dominant sub-center rule, label-noise injection with a ground
truth, and the ``arcface clean`` job. Imports without any distributed or logging setup.

>>> from arcface.clean import clean_dataset
>>> report = clean_dataset("runs/noisy_k3", "noisy/train.txt", "clean", threshold_deg=75)
>>> report["ground_truth"]["noise_rate_after"]
"""

from .job import clean_dataset
from .noise import corrupt_labels, read_labelled_images, read_truth, write_noisy_dataset
from .subcenter import CATEGORIES, SubcenterDecision, decide, dominant_subcenters, dominant_weight

__all__ = [
    "CATEGORIES",
    "SubcenterDecision",
    "clean_dataset",
    "corrupt_labels",
    "decide",
    "dominant_subcenters",
    "dominant_weight",
    "read_labelled_images",
    "read_truth",
    "write_noisy_dataset",
]
