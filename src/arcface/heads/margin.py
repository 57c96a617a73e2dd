"""The combined angular margin on the target cosine: ``cos(m1 * theta + m2) - m3``.

This is the only place where the margin family differs: SphereFace is m1, ArcFace m2, CosFace m3
(ArcFace paper, Eq. 4). All three are applied together, whatever their values.

The margined angle ``phi = m1 * theta + m2`` leaves [0, pi] once theta passes
``theta_b = (pi - m2) / m1``; beyond it ``cos(phi)`` increases with theta again, so a sample
farther from its center would get a *larger* target logit. Three known behaviours, chosen with
``pi_region``:

- ``"fallback"`` (default): beyond ``theta_b``, ``cos(theta) - (1 + cos(theta_b)) - m3``, the linear
  extension in cos(theta) of insightface's ``cos(theta) - m * sin(m)``, with its offset chosen so
  that the target logit is continuous at ``theta_b`` and strictly decreasing on all of [0, pi] for
  every (m1, m2, m3). (insightface's legacy offset ``m*sin(pi - m)`` jumps down at the boundary.)
- ``"easy_margin"``: the margin only where ``cos(theta) > 0``; the plain cosine elsewhere
  (insightface's option). Monotonic only when ``theta_b >= pi/2``, which holds for ArcFace and
  CosFace but not for large m1.
- ``"none"``: ``cos(m1*theta + m2) - m3`` everywhere, as insightface's current ArcFace code does.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "PI_REGIONS", "COSINE_CLAMP_EPS", "DEFAULT_MARGINS", "DEFAULT_PI_REGION", "check_margins", "margined_target",
    "boundary_angle",
]

PI_REGIONS = ("fallback", "easy_margin", "none")
DEFAULT_PI_REGION = "fallback"
# (m1, m2, m3) of a head built without margins: none (NormFace). The presets give each loss its own.
DEFAULT_MARGINS = (1.0, 0.0, 0.0)

# Cosines are clamped into [-1 + eps, 1 - eps] before arccos: arccos' derivative is infinite at +-1.
# 1e-7 is representable just inside 1 in float32 and keeps the gradient below ~2e3 / (1 - eps).
COSINE_CLAMP_EPS = 1e-7


def check_margins(m1: float, m2: float, m3: float, pi_region: str) -> None:
    """Raise ValueError for margins outside the range where the family is defined."""
    if not m1 > 0:
        raise ValueError(f"m1 (multiplicative angular margin) must be > 0, got {m1}")
    if not 0 <= m2 < math.pi:
        raise ValueError(f"m2 (additive angular margin, radians) must be in [0, pi), got {m2}")
    if not math.isfinite(m3):
        raise ValueError(f"m3 (additive cosine margin) must be finite, got {m3}")
    if pi_region not in PI_REGIONS:
        raise ValueError(f"pi_region must be one of {PI_REGIONS}, got {pi_region!r}")


def boundary_angle(m1: float, m2: float) -> float:
    """The angle ``theta_b = (pi - m2) / m1`` where ``m1 * theta + m2`` reaches pi."""
    return (math.pi - m2) / m1


def margined_target(
    cos_target: torch.Tensor,
    m1: float = DEFAULT_MARGINS[0],
    m2: float = DEFAULT_MARGINS[1],
    m3: float = DEFAULT_MARGINS[2],
    pi_region: str = DEFAULT_PI_REGION,
    straight_through: bool = False,
) -> torch.Tensor:
    """The margined target cosine for each sample.

    Args:
        cos_target: (B,) cosine between each embedding and its class center, any float dtype;
            computed in at least float32 and clamped strictly inside [-1, 1].
        m1, m2, m3: multiplicative angular, additive angular (radians), additive cosine margins.
        pi_region: behaviour past ``theta_b``, see the module docstring.
        straight_through: the margin as a constant: same value, the gradient of the plain cosine
            (insightface's ``arcface_torch``); False gives the exact gradient.

    Returns:
        (B,) margined cosines (not scaled), in the promoted dtype of the input and float32.
    """
    if straight_through:
        margined = margined_target(cos_target, m1, m2, m3, pi_region)
        plain = cos_target.to(margined.dtype)
        return plain + (margined - plain).detach()
    dtype = torch.promote_types(cos_target.dtype, torch.float32)
    cos_t = cos_target.to(dtype).clamp(-1.0 + COSINE_CLAMP_EPS, 1.0 - COSINE_CLAMP_EPS)
    if m1 == 1.0 and m2 == 0.0:
        # Pure cosine margin (CosFace, NormFace): no angle needed, and theta_b = pi.
        margined = cos_t - m3
    else:
        margined = torch.cos(m1 * torch.arccos(cos_t) + m2) - m3
    if pi_region == "none":
        return margined
    if pi_region == "easy_margin":
        return torch.where(cos_t > 0, margined, cos_t)
    theta_b = boundary_angle(m1, m2)
    if theta_b >= math.pi:
        return margined
    # theta > theta_b  <=>  cos(theta) < cos(theta_b), as arccos is decreasing.
    cos_b = math.cos(theta_b)
    return torch.where(cos_t >= cos_b, margined, cos_t - (1.0 + cos_b) - m3)
