"""Finding the cluster: in-cluster service account, else KUBECONFIG or ~/.kube/config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Cluster:
    """A configured API client, or None with the reason there is no cluster."""

    api: Any  # kubernetes.client.CoreV1Api; typed loosely so the client loads only when used
    detail: str
    resource_api: Any = None
    """kubernetes.client.ResourceV1Api (resource.k8s.io/v1, DRA), on the same connection."""


def connect(kubeconfig: Path | None = None) -> Cluster:
    """Load the in-cluster config, else a kubeconfig; `api` is None without either."""
    path = kubeconfig or Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
    if not os.environ.get("KUBERNETES_SERVICE_HOST") and not path.is_file():
        # Decided before importing the client: it costs ~18 MB of RSS that a host outside
        # any cluster should not pay.
        return Cluster(None, "no cluster: no in-cluster service account (KUBERNETES_SERVICE_"
                             f"HOST unset) and no kubeconfig at {path}; the exporter runs "
                             "without pods, all energy stays unattributed")
    import kubernetes.client
    import kubernetes.config

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
        detail = "in-cluster service account"
    except kubernetes.config.ConfigException as exc:
        if not path.is_file():
            return Cluster(None, f"in-cluster config unusable ({exc}) and no kubeconfig at "
                                 f"{path}; the exporter runs without pods")
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path), client_configuration=configuration)
        except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
            return Cluster(None, f"kubeconfig {path} unusable: {exc}; fix it or unset KUBECONFIG")
        detail = f"kubeconfig {path} ({configuration.host})"
    client = kubernetes.client.ApiClient(configuration)
    return Cluster(kubernetes.client.CoreV1Api(client), detail,
                   kubernetes.client.ResourceV1Api(client))
