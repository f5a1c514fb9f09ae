"""moto's S3 server on 127.0.0.1 for the benchmarks (the same server the tests use), with a bucket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BUCKET = "models"


class LoopbackS3:
    """`with LoopbackS3() as s3:` a fresh moto server with bucket `models`; fake credentials in os.environ."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.options = {"endpoint_url": self.endpoint}

    def __enter__(self) -> LoopbackS3:
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1"
        )
        self._server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self._server.kill()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        self.client.create_bucket(Bucket=BUCKET)
        return self

    @property
    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def put_folder(self, folder: Path, prefix: str) -> str:
        """Upload a local folder under s3://models/<prefix> with boto3 (not the code being measured)."""
        bucket, _, key = prefix.partition("/")
        client = self.client
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{key}/{path.relative_to(folder).as_posix()}")
        return f"s3://{prefix}"

    def __exit__(self, *exc: object) -> None:
        self._server.terminate()
        self._server.wait(timeout=10)
