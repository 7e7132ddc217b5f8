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


def _requirement_names(requirements: list[str]) -> list[str]:
    import re

    return [re.split(r"[\s<>=!~\[;(]", r, maxsplit=1)[0].lower() for r in requirements]


def test_the_operator_runs_trials_with_only_what_its_image_installs():
    """The operator, drawing a trials job's candidates too, needs nothing but what its image
    installs (the dependencies and the `operator` extra of pyproject.toml, and theirs): every
    other distribution here is made unimportable, as in the image, and it still works."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    wanted = _requirement_names(
        project["dependencies"] + project["optional-dependencies"]["operator"]
    )
    installed: set[str] = {"kubetrain"}
    while wanted:
        name = wanted.pop().replace("_", "-")
        if name in installed:
            continue
        installed.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        wanted += _requirement_names([r for r in requires if "extra ==" not in r])
    absent = sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if not {d.lower().replace("_", "-") for d in dists} & installed
    )
    script = f"""
import sys
sys.modules.update(dict.fromkeys({absent!r}))  # None: "No module named ..."
import kubetrain.operator.handlers
from kubetrain.trainer.api.spec import parse_job
from kubetrain.trainer.trials import candidates
job = parse_job({{"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
    "metadata": {{"name": "j"}}, "spec": {{"dataset": {{"name": "mnist", "source": "d"}},
    "model": {{"architecture": "mnist-dense", "name": "m"}},
    "trials": {{"count": 2,
        "parameters": {{"training.learningRate": {{"logUniform": [1e-4, 1e-2]}}}}}}}}}})
print(len(candidates(job)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["2"], done.stderr[-2000:]
