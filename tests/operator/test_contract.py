"""The contract the operator shares with the trainer: importable without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["kubetrain.operator.handlers", "kubetrain.trainer.api.records"])
def test_the_operator_and_the_contract_need_no_tensorflow(module: str):
    code = f"import sys, {module}; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
