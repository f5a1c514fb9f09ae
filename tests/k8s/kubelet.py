"""A stand-in kubelet for the control-plane tests (no container runtime runs here).

It registers a CPU-only Node, and for every pod the real scheduler binds to it: marks it Running,
runs the pod's container args with this checkout's `parquant` (instead of pulling the image),
then writes the container's real exit code into the pod status, as a kubelet would. The Job
controller, the scheduler and the API server are the real ones. It also serves the kubelet's
containerLogs endpoint over TLS, so `kubectl logs` / the executor's log streaming go through the
API server's real proxy path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client

NODE = "fake-cpu-node"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    def __init__(self, api: client.ApiClient, namespace: str, workdir: Path, pki: Path, env: dict[str, str]):
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.workdir = workdir
        self.env = env
        self.logs: dict[str, Path] = {}
        self.finished: set[str] = set()
        self.runs: list[tuple[str, list[str], int]] = []  # (pod, args, exit code)
        self.running: dict[str, tuple[float, float]] = {}  # pod -> (start, end) of its process, monotonic
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._server = _log_server(self, pki)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._loop, daemon=True),
        ]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> FakeKubelet:
        self.register_node()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()

    def register_node(self) -> None:
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "500Gi"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
        }
        with contextlib.suppress(client.ApiException):
            self.core.delete_node(NODE)
        self.core.create_node(node)
        # The API server's admission taints a new node not-ready until its kubelet reports in: this is
        # that report.
        self.core.patch_node(NODE, {"spec": {"taints": []}})
        self.core.patch_node_status(
            NODE,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "fake kubelet",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                }
            },
        )

    def _loop(self) -> None:
        started: set[str] = set()
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace, field_selector=f"spec.nodeName={NODE}").items
            except client.ApiException:
                time.sleep(0.2)
                continue
            for pod in pods:
                uid = pod.metadata.uid
                if pod.metadata.deletion_timestamp:
                    self._remove(pod)
                    continue
                if uid not in started and pod.status.phase == "Pending" and not pod.metadata.deletion_timestamp:
                    started.add(uid)
                    threading.Thread(target=self._run_pod, args=(pod,), daemon=True).start()
            time.sleep(0.2)

    def _remove(self, pod: Any) -> None:
        """A kubelet's part in graceful deletion: stop the container, then confirm with grace 0."""
        process = self.processes.get(pod.metadata.uid)
        if process is not None and process.poll() is None:
            process.terminate()
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)

    def _run_pod(self, pod: Any) -> None:
        name = pod.metadata.name
        container = pod.spec.containers[0]
        log_path = self.workdir / f"{name}.log"
        self.logs[name] = log_path
        env = {**os.environ, **self.env}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
        args = list(container.args or [])
        if "does-not-exist" in (container.image or ""):
            # What a kubelet reports for an image it cannot pull: the container never starts.
            waiting = {"waiting": {"reason": "ErrImagePull", "message": "not found"}}
            self._status(name, "Pending", waiting, ready=False)
            return
        self._status(name, "Running", {"running": {"startedAt": _now()}}, ready=True)
        began = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "parquant_cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
            self.processes[pod.metadata.uid] = process
            code = process.wait()
        self.running[name] = (began, time.monotonic())
        self.runs.append((name, args, code))
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": _now(),
            "finishedAt": _now(),
        }
        self.finished.add(name)
        with contextlib.suppress(client.ApiException):  # the Job (and pod) may be deleted meanwhile
            self._status(name, "Succeeded" if code == 0 else "Failed", {"terminated": terminated}, ready=False)

    def _status(self, name: str, phase: str, state: dict[str, Any], ready: bool) -> None:
        condition = {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _now()}
        body = {
            "status": {
                "phase": phase,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": _now(),
                "conditions": [condition],
                "containerStatuses": [
                    {
                        "name": "parquant",
                        "ready": ready,
                        "restartCount": 0,
                        "image": "parquant",
                        "imageID": "",
                        "state": state,
                    }
                ],
            }
        }
        self.core.patch_namespaced_pod_status(name, self.namespace, body)


def _log_server(kubelet: FakeKubelet, pki: Path) -> http.server.ThreadingHTTPServer:
    """GET /containerLogs/<ns>/<pod>/<container>?follow=true, as the API server's proxy asks it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlparse(self.path).path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404)
                return
            pod = parts[2]
            deadline = time.monotonic() + 5
            while pod not in kubelet.logs and time.monotonic() < deadline:
                time.sleep(0.05)
            if pod not in kubelet.logs:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            with kubelet.logs[pod].open("rb") as log:
                while True:
                    chunk = log.read(65536)
                    if chunk:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif pod in kubelet.finished:
                        break
                    else:
                        time.sleep(0.1)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
