"""Which way a metric improves: the one rule for choosing checkpoints and gating promotion."""

from __future__ import annotations


def lower_is_better(metric: str) -> bool:
    """Losses improve downwards; accuracies (everything else Keras reports here) upwards."""
    return metric.endswith("loss")


def better(metric: str, new: float, old: float | None, margin: float = 0.0) -> bool:
    """Whether `new` beats `old` by more than `margin` (anything beats no value)."""
    if old is None:
        return True
    if lower_is_better(metric):
        return new < old - margin
    return new > old + margin
