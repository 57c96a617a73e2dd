"""ArcFace model inversion: face images of a class center or of any embedding, from the trained model
alone (its gradients and its BatchNorm statistics). Imports without any distributed or logging setup.

>>> from arcface.invert import InversionConfig, invert_embeddings
>>> images, history = invert_embeddings(backbone, targets, InversionConfig(steps=2000), starts=4)
"""

from .bn_prior import BNStatistics, batchnorm_layers
from .config import InversionConfig
from .inversion import invert, invert_classes, invert_embeddings
from .job import load_for_inversion, run_inversion, save_grid

__all__ = [
    "BNStatistics",
    "InversionConfig",
    "batchnorm_layers",
    "invert",
    "invert_classes",
    "invert_embeddings",
    "load_for_inversion",
    "run_inversion",
    "save_grid",
]
