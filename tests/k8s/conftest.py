"""The real-control-plane tier (`make test-k8s`): etcd + kube-apiserver + controller-manager +
scheduler v1.20 on 127.0.0.1, built from Debian's source by control-plane.sh, and a stand-in
kubelet (kubelet.py). Without the control plane these tests skip, unless PARQUANT_K8S_REQUIRED=1
(as `make test-k8s` sets), in which case they fail.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .kubelet import FakeKubelet

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
RUN = Path(os.environ.get("PARQUANT_K8S_RUN", "/tmp/parquant-k8s"))


@pytest.fixture(scope="session")
def admin_kubeconfig() -> Path:
    result = subprocess.run([str(HERE / "control-plane.sh"), "start"], capture_output=True, text=True)
    if result.returncode != 0:
        message = f"control plane did not start: {result.stdout[-2000:]} {result.stderr[-2000:]}"
        if os.environ.get("PARQUANT_K8S_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return RUN / "admin.kubeconfig"


@pytest.fixture(scope="session")
def admin_api(admin_kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(admin_kubeconfig))


@pytest.fixture
def namespace(admin_api: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"pq-test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def render_overlay(overlay: str, deploy: Path = ROOT / "deploy") -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/overlays/<overlay>`: the objects `kubectl apply -k` would send."""
    kubectl = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "kubectl"
    out = subprocess.run(
        [str(kubectl), "kustomize", str(deploy / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def apply_driver_rbac(admin_api: Any, namespace: str) -> None:
    """The overlay's ServiceAccount, Role and RoleBinding, moved into `namespace`."""
    from kubernetes import utils

    for doc in render_overlay("gpu"):
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects", []):
                subject["namespace"] = namespace
            utils.create_from_dict(admin_api, doc, namespace=namespace)


def driver_kubeconfig(admin_api: Any, namespace: str, path: Path) -> Path:
    """A kubeconfig holding the driver ServiceAccount's token, as its pod would mount it."""
    from kubernetes import client

    core = client.CoreV1Api(admin_api)
    deadline = time.monotonic() + 60
    token = None
    while token is None and time.monotonic() < deadline:
        for secret in core.list_namespaced_secret(namespace).items:
            if (
                secret.type == "kubernetes.io/service-account-token"
                and (secret.metadata.annotations or {}).get("kubernetes.io/service-account.name") == "parquant-driver"
            ):
                token = base64.b64decode(secret.data["token"]).decode()
        time.sleep(0.2)
    assert token, "the token controller made no token for the driver ServiceAccount"
    admin = yaml.safe_load((RUN / "admin.kubeconfig").read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": "driver", "user": {"token": token}}],
                "contexts": [
                    {"name": "driver", "context": {"cluster": "local", "user": "driver", "namespace": namespace}}
                ],
                "current-context": "driver",
            }
        )
    )
    return path


@pytest.fixture
def kubelet(admin_api: Any, namespace: str, tmp_path: Path) -> Iterator[FakeKubelet]:
    workdir = tmp_path / "node"
    workdir.mkdir()
    fake = FakeKubelet(admin_api, namespace, workdir, RUN / "pki", {"PYTHONHASHSEED": "0"}).start()
    yield fake
    fake.stop()


def make_sharded_checkpoint(folder: Path) -> Path:
    from ..conftest import make_checkpoint

    return make_checkpoint(folder, "llama", shard_size="60KB")
