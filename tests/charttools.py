"""pytest plugin: pinned helm and kubeconform (hack/tools/install.sh) and strict local schemas.

Loaded from tests/conftest.py, so the chart tests and the end-to-end tests share one `tools`
fixture, installed once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "kubetrain"
INSTALL = REPO / "hack" / "tools" / "install.sh"
CONVERTER = REPO / "hack" / "tools" / "openapi2jsonschema.py"
# A fresh machine builds kubeconform and fetches helm and the Kubernetes module: minutes.
INSTALL_TIMEOUT = 1200


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubeconform: Path
    schema_locations: tuple[str, ...]
    env: dict[str, str]

    def run(
        self, *args: str | Path, stdin: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def helm_run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """helm; give it more time than any --timeout passed to it, so helm reports first."""
        return self.run(self.helm, *args, timeout=timeout)

    def conform(self, manifests: str) -> subprocess.CompletedProcess[str]:
        locations = [arg for loc in self.schema_locations for arg in ("-schema-location", loc)]
        return self.run(self.kubeconform, "-strict", "-summary", *locations, "-", stdin=manifests)


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """helm, kubeconform and strict schemas for the built-in kinds and the chart's CRD."""
    done = subprocess.run(
        [str(INSTALL)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"hack/tools/install.sh failed:\n{done.stderr}"
    found = dict(
        line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("KUBETRAIN_")
    )
    bin_dir = Path(found["KUBETRAIN_TOOLS_BIN"])

    # The CRD's schema is made from the file the chart ships, every session: it changes
    # with the code, the built-in kinds' schemas do not.
    crd_schemas = tmp_path_factory.mktemp("crd-schemas")
    subprocess.run(
        [
            sys.executable,
            str(CONVERTER),
            "--out",
            str(crd_schemas),
            "--openapi",
            str(Path(found["KUBETRAIN_KUBE_OPENAPI"]) / "api__v1_openapi.json"),
            "--crd",
            *map(str, sorted((CHART / "crds").glob("*.yaml"))),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # helm keeps no state between tests, and none in the user's own config.
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    env.pop("KUBECONFIG", None)  # nothing here may reach a cluster
    template = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
    return Tools(
        helm=bin_dir / "helm",
        kubeconform=bin_dir / "kubeconform",
        schema_locations=(
            f"{found['KUBETRAIN_KUBE_SCHEMAS']}/{template}",
            f"{crd_schemas}/{template}",
        ),
        env=env,
    )
