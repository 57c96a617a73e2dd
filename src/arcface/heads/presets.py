"""The named heads of the paper's loss family, registered for ``create_head``.

Every combined-family preset accepts ``scale, m1, m2, m3, sub_centers`` and the other
:class:`~arcface.heads.margin_head.MarginHead` arguments as overrides. With ``world_size > 1`` or
``sample_rate < 1`` it builds the model-parallel
:class:`~arcface.heads.partial_fc.PartialFCHead` instead (``rank``, ``process_group`` and ``seed``
go with them), with the same margins::

    create_head("arcface", num_classes=C, embedding_size=512, world_size=8, rank=r, sample_rate=0.1)

SphereFace's m1: the original SphereFace uses m = 4 with a piecewise extension of cos(m*theta) and
trains only by blending its logit with the plain one, ``(lambda*cos + psi)/(1 + lambda)``, lambda
annealed from 1000 down to 5. Without that schedule m = 4 does not converge. The ArcFace paper
compares against SphereFace inside the combined framework, without annealing, at m1 = 1.35; that is
our default. ``create_head("sphereface", ..., m1=4)`` is accepted (the pi-region fallback keeps the
logit monotonic) but expect it to train only from a warm start.
"""

from __future__ import annotations

from .margin_head import MarginHead
from .partial_fc import PartialFCHead
from .registry import register_head
from .softmax import SoftmaxHead

__all__ = ["COMBINED_PRESETS"]

# name -> default margins of cos(m1*theta + m2) - m3; the scale is the heads' default (64).
COMBINED_PRESETS: dict[str, dict[str, float]] = {
    "normface": {"m1": 1.0, "m2": 0.0, "m3": 0.0},
    "sphereface": {"m1": 1.35, "m2": 0.0, "m3": 0.0},
    "cosface": {"m1": 1.0, "m2": 0.0, "m3": 0.35},
    "arcface": {"m1": 1.0, "m2": 0.5, "m3": 0.0},
    "combined": {"m1": 1.0, "m2": 0.3, "m3": 0.2},
}

# MarginHead arguments the model-parallel head does not have.
_SINGLE_DEVICE_ONLY = ("pooling", "intra_weight", "inter_weight", "triplet_weight", "triplet_margin")


def _combined_factory(name: str, defaults: dict[str, float], sub_centers: int = 1):
    def factory(
        num_classes: int,
        embedding_size: int = 512,
        world_size: int = 1,
        rank: int = 0,
        sample_rate: float = 1.0,
        **overrides,
    ) -> MarginHead | PartialFCHead:
        kwargs = {**defaults, "sub_centers": sub_centers, **overrides}
        if world_size == 1 and sample_rate == 1.0:
            if kwargs.pop("process_group", None) is not None:
                raise ValueError(f"{name}: process_group is for several processes (world_size > 1)")
            return MarginHead(num_classes, embedding_size, **kwargs)
        unsupported = sorted(key for key in _SINGLE_DEVICE_ONLY if key in kwargs)
        if kwargs["sub_centers"] != 1 or unsupported:
            what = [f"sub_centers={kwargs['sub_centers']}"] if kwargs["sub_centers"] != 1 else []
            raise ValueError(
                f"{name} with world_size={world_size}, sample_rate={sample_rate} is the model-parallel "
                f"PartialFCHead, which has no sub-centers, pooling or intra/inter/triplet terms; got "
                f"{', '.join(what + unsupported)} (use world_size=1 and sample_rate=1 for those)"
            )
        kwargs.pop("sub_centers")
        return PartialFCHead(
            num_classes, embedding_size, rank=rank, world_size=world_size, sample_rate=sample_rate, **kwargs
        )

    return factory


for _name, _margins in COMBINED_PRESETS.items():
    register_head(_name)(_combined_factory(_name, _margins))

# Sub-center ArcFace: K = 3 centers per class with max pooling (the paper's setting).
register_head("subcenter_arcface")(_combined_factory("subcenter_arcface", COMBINED_PRESETS["arcface"], sub_centers=3))


@register_head("softmax")
def _softmax(
    num_classes: int, embedding_size: int = 512, world_size: int = 1, rank: int = 0, sample_rate: float = 1.0, **kwargs
) -> SoftmaxHead:
    if world_size != 1 or sample_rate != 1.0:
        raise ValueError(
            f"the softmax head has no model-parallel version (got world_size={world_size}, sample_rate={sample_rate}); "
            f"use a margin preset such as 'normface' or 'arcface' for several processes or class sampling"
        )
    margin_args = sorted(
        set(kwargs)
        & {"scale", "m1", "m2", "m3", "sub_centers", "pi_region", "straight_through", "cosine_precision", "class_chunk"}
    )
    if margin_args:
        raise ValueError(
            f"the softmax head is unnormalized and has no margin; it does not take {margin_args} "
            f"(use 'normface' for normalized logits without margin)"
        )
    return SoftmaxHead(num_classes, embedding_size, **kwargs)
