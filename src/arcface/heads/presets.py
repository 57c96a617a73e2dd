"""The named heads of the paper's loss family, registered for ``create_head``.

Every combined-family preset accepts ``scale, m1, m2, m3, sub_centers`` and the other
:class:`~arcface.heads.margin_head.MarginHead` arguments as overrides.

SphereFace's m1: the original SphereFace uses m = 4 with a piecewise extension of cos(m*theta) and
trains only by blending its logit with the plain one, ``(lambda*cos + psi)/(1 + lambda)``, lambda
annealed from 1000 down to 5. Without that schedule m = 4 does not converge. The ArcFace paper
compares against SphereFace inside the combined framework, without annealing, at m1 = 1.35; that is
our default. ``create_head("sphereface", ..., m1=4)`` is accepted (the pi-region fallback keeps the
logit monotonic) but expect it to train only from a warm start.
"""

from __future__ import annotations

from .margin_head import MarginHead
from .registry import register_head
from .softmax import SoftmaxHead

__all__ = ["COMBINED_PRESETS"]

# name -> default margins of cos(m1*theta + m2) - m3, with the paper's scale s = 64.
COMBINED_PRESETS: dict[str, dict[str, float]] = {
    "normface": {"m1": 1.0, "m2": 0.0, "m3": 0.0},
    "sphereface": {"m1": 1.35, "m2": 0.0, "m3": 0.0},
    "cosface": {"m1": 1.0, "m2": 0.0, "m3": 0.35},
    "arcface": {"m1": 1.0, "m2": 0.5, "m3": 0.0},
    "combined": {"m1": 1.0, "m2": 0.3, "m3": 0.2},
}


def _combined_factory(defaults: dict[str, float], sub_centers: int = 1):
    def factory(num_classes: int, embedding_size: int = 512, **overrides) -> MarginHead:
        kwargs = {"scale": 64.0, **defaults, "sub_centers": sub_centers, **overrides}
        return MarginHead(num_classes, embedding_size, **kwargs)

    return factory


for _name, _margins in COMBINED_PRESETS.items():
    register_head(_name)(_combined_factory(_margins))

# Sub-center ArcFace: K = 3 centers per class with max pooling (the paper's setting).
register_head("subcenter_arcface")(_combined_factory(COMBINED_PRESETS["arcface"], sub_centers=3))


@register_head("softmax")
def _softmax(num_classes: int, embedding_size: int = 512, **kwargs) -> SoftmaxHead:
    margin_args = sorted(set(kwargs) & {"scale", "m1", "m2", "m3", "sub_centers", "pi_region", "straight_through"})
    if margin_args:
        raise ValueError(
            f"the softmax head is unnormalized and has no margin; it does not take {margin_args} "
            f"(use 'normface' for normalized logits without margin)"
        )
    return SoftmaxHead(num_classes, embedding_size, **kwargs)
