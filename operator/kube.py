"""A small JSON client for the Kubernetes API, built on the official client's configuration.

The official client loads kubeconfig or in-cluster credentials; its generated typed API is
skipped because the operator works on plain dicts (as kopf hands them over), which also keeps
patches exact: strategic merge for Deployments, JSON merge for the jobs' status.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode

from kubernetes import client, config
from kubetrain.trainer.api.spec import API_GROUP, API_VERSION, PLURAL

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def in_cluster() -> bool:
    """Running in a pod: its service account comes before any kubeconfig."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _load_configuration() -> client.Configuration:
    """In a pod its service account; elsewhere (or without one) the kubeconfig."""
    configuration = client.Configuration()
    if in_cluster():
        try:
            config.load_incluster_config(client_configuration=configuration)
            return configuration
        except config.ConfigException:
            pass  # no service account token mounted: try a kubeconfig
    # The client reads KUBECONFIG once, when it is imported; read it now instead.
    config.load_kube_config(
        config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
    )
    return configuration


class Kube:
    def __init__(self, configuration: client.Configuration | None = None) -> None:
        if configuration is None:
            configuration = _load_configuration()
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, 32)
        self.configuration = configuration
        self.rest = client.rest.RESTClientObject(configuration)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "kubetrain-operator"}
        if content_type:
            headers["Content-Type"] = content_type
        for auth in self.configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        raw: bool = False,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Any:
        url = self.configuration.host + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        resp = self.rest.request(
            method,
            url,
            headers=self._headers(content_type if body is not None else None),
            body=body,
            _request_timeout=timeout,
        )
        data = resp.read()
        # A byte-limited log can end inside a character.
        text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
        if resp.status >= 400:
            try:
                detail = json.loads(text)
                raise ApiError(resp.status, detail.get("reason", ""), detail.get("message", text))
            except ValueError:
                raise ApiError(resp.status, resp.reason or "", text) from None
        if raw:
            return text
        return json.loads(text) if text else None

    # -- helpers ------------------------------------------------------------------------------

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create; None if it exists already (names are deterministic, so that is success)."""
        try:
            return self.request("POST", path, body)
        except ApiError as err:
            if err.status == 409 and err.reason == "AlreadyExists":
                return None
            raise

    def get(
        self, path: str, timeout: tuple[float, float] = REQUEST_TIMEOUT
    ) -> dict[str, Any] | None:
        try:
            return self.request("GET", path, timeout=timeout)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def delete(self, path: str, grace_seconds: int | None = None) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self.request("DELETE", path, body)
        except ApiError as err:
            if err.status != 404:
                raise

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def strategic_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH", path, patch, content_type="application/strategic-merge-patch+json"
        )


def pods_path(namespace: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def services_path(namespace: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def deployments_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments" + (f"/{name}" if name else "")


def network_policies_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies" + (
        f"/{name}" if name else ""
    )


def disruption_budgets_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets" + (
        f"/{name}" if name else ""
    )


def autoscalers_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers" + (
        f"/{name}" if name else ""
    )


COLLECTIONS = {
    "Service": services_path,
    "Deployment": deployments_path,
    "NetworkPolicy": network_policies_path,
    "PodDisruptionBudget": disruption_budgets_path,
    "HorizontalPodAutoscaler": autoscalers_path,
}
"""Where objects of each kind the operator creates live, by `kind`."""


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def node_path(name: str) -> str:
    return f"/api/v1/nodes/{name}"


def pvc_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"


def trainingjob_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}" + (
        f"/{name}" if name else ""
    )


def lease_path(namespace: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
