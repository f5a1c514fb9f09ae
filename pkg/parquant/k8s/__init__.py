"""Running pipelines on Kubernetes: stage Jobs from the deploy/ templates, GPU -> CPU fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnavailableError

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def connect(kubeconfig: str | None = None) -> Any:
    """An API client: the pod's ServiceAccount when in a cluster, else a kubeconfig file."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise UnavailableError(
            "the Kubernetes executor needs the kubernetes client: pip install 'parquant[k8s]'"
        ) from None
    try:
        if kubeconfig is None and IN_CLUSTER_NAMESPACE.exists():
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config(config_file=kubeconfig)
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(
            f"no Kubernetes credentials ({exc}): run in a pod with a ServiceAccount, or pass --kubeconfig"
        ) from None


def default_namespace(kubeconfig: str | None = None) -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else "default"."""
    if kubeconfig is None and IN_CLUSTER_NAMESPACE.exists():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts(config_file=kubeconfig)
        return str((current or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # no usable kubeconfig: connect() reports it properly
        return "default"
