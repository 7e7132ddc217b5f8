"""The contract the operator shares with the trainer: free of TensorFlow, and consistent."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kubetrain.trainer.api.metrics import better
from kubetrain.trainer.api.status import Condition, Reason


@pytest.mark.parametrize("module", ["kubetrain.operator.handlers", "kubetrain.trainer.api.records"])
def test_the_operator_and_the_contract_need_no_tensorflow(module: str):
    code = f"import sys, {module}; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_is_one_the_status_schema_accepts(reason: Reason):
    Condition(
        type="Valid", status="True", reason=reason, last_transition_time="2025-01-01T00:00:00Z"
    )


def test_a_metric_improves_in_its_own_direction():
    assert better("val_loss", 0.1, 0.2) and not better("val_loss", 0.2, 0.1)
    assert better("val_accuracy", 0.9, 0.8) and not better("val_accuracy", 0.8, 0.9)
    assert not better("val_accuracy", 0.905, 0.9, margin=0.01)
    assert better("val_accuracy", 0.5, None)
