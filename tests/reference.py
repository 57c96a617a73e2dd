"""Slow references that write the paper's formulas literally, one sample and one class at a time.

Nothing here is shared with the implementation: plain Python floats and ``math``, float64 throughout.
"""

from __future__ import annotations

import math

import torch


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(p * q for p, q in zip(a, b))
    return dot / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))


def target_cosine(theta: float, m1: float, m2: float, m3: float, pi_region: str) -> float:
    """cos(m1*theta + m2) - m3 with the pi-region behaviour, for one target angle."""
    margined = math.cos(m1 * theta + m2) - m3
    if pi_region == "none":
        return margined
    if pi_region == "easy_margin":
        return margined if math.cos(theta) > 0 else math.cos(theta)
    theta_b = (math.pi - m2) / m1
    if theta <= theta_b:
        return margined
    return math.cos(theta) - (1.0 + math.cos(theta_b)) - m3


def pooled_cosine(cosines: list[float], pooling: str, scale: float) -> float:
    if pooling == "max":
        return max(cosines)
    weights = [math.exp(scale * c) for c in cosines]
    total = sum(weights)
    return sum(w / total * c for w, c in zip(weights, cosines))


def margin_logits(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    m1: float,
    m2: float,
    m3: float,
    sub_centers: int = 1,
    pooling: str = "max",
    pi_region: str = "fallback",
) -> list[list[float]]:
    """(B, C) logits as nested lists, from x (B, D) and weight (C*K, D), class-major."""
    xs, ws = x.double().tolist(), weight.double().tolist()
    num_classes = len(ws) // sub_centers
    rows = []
    for i, label in enumerate(labels.tolist()):
        row = []
        for c in range(num_classes):
            cosines = [cosine(xs[i], ws[c * sub_centers + k]) for k in range(sub_centers)]
            cos_c = pooled_cosine(cosines, pooling, scale)
            if c == label:
                theta = math.acos(max(-1.0, min(1.0, cos_c)))
                row.append(scale * target_cosine(theta, m1, m2, m3, pi_region))
            else:
                row.append(scale * cos_c)
        rows.append(row)
    return rows


def cross_entropy(logits: list[list[float]], labels: list[int]) -> float:
    total = 0.0
    for row, label in zip(logits, labels):
        top = max(row)
        log_sum = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_sum - row[label]
    return total / len(labels)


def intra(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> float:
    """Paper's L5 extra term, (1 / (pi N)) sum_i theta_{y_i} (one center per class)."""
    xs, ws = x.double().tolist(), weight.double().tolist()
    angles = [math.acos(cosine(xs[i], ws[y])) for i, y in enumerate(labels.tolist())]
    return sum(angles) / (math.pi * len(angles))


def inter(weight: torch.Tensor, labels: torch.Tensor) -> float:
    """Paper's L6 term, (1 / (pi N (n-1))) sum_i sum_{j != y_i} arccos(W_{y_i} . W_j) (one center)."""
    ws = weight.double().tolist()
    n = len(ws)
    total = 0.0
    for y in labels.tolist():
        total += sum(math.acos(max(-1.0, min(1.0, cosine(ws[y], ws[j])))) for j in range(n) if j != y)
    return total / (math.pi * len(labels) * (n - 1))


def batch_hard_triplet(x: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Mean over anchors with a positive and a negative of max(0, max theta_ap + m - min theta_an)."""
    xs, ys = x.double().tolist(), labels.tolist()
    hinges = []
    for a in range(len(xs)):
        pos = [math.acos(max(-1.0, min(1.0, cosine(xs[a], xs[p])))) for p in range(len(xs)) if p != a and ys[p] == ys[a]]
        neg = [math.acos(max(-1.0, min(1.0, cosine(xs[a], xs[n])))) for n in range(len(xs)) if ys[n] != ys[a]]
        if pos and neg:
            hinges.append(max(0.0, max(pos) + margin - min(neg)))
    return sum(hinges) / len(hinges) if hinges else 0.0
