"""How long a user waits for the one-line error of a dead endpoint: the search's own probes
(``search/preflight.py``, one short attempt) against what the libraries do by themselves
(MLflow's client and the AWS SDK retry with back-off), measured side by side on closed ports.

    .venv/bin/python benchmarks/bench_faults.py [--cap 180]

No Ray, no server: every endpoint is a closed port on 127.0.0.1, so each timing is the cost of
the retries alone. A library still retrying after ``--cap`` seconds is reported as ``> cap``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def timed(call: Callable[[], object], cap: float) -> tuple[float | None, str]:
    """Seconds until ``call`` raised (or returned), None when it ran past ``cap``."""
    outcome: dict[str, object] = {}

    def run() -> None:
        started = time.perf_counter()
        try:
            call()
            outcome["text"] = "returned"
        except Exception as exc:  # noqa: BLE001 - the failure is what we time
            outcome["text"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
        outcome["seconds"] = time.perf_counter() - started

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(cap)
    if worker.is_alive():
        return None, "still retrying"
    return float(outcome["seconds"]), str(outcome["text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=180.0, help="seconds to wait at most")
    args = parser.parse_args()

    from reidsearch.search.driver.preflight import check_remote_storage, check_tracking_uri
    from reidsearch.storage import check_writable

    tracking = f"http://127.0.0.1:{closed_port()}"
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    bucket = "s3://bench-bucket/runs"

    def mlflow_client() -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=tracking).search_experiments(max_results=1)

    cases = [
        (
            "tracking server, closed port",
            "preflight probe",
            lambda: check_tracking_uri(tracking, "--tracking-uri"),
        ),
        ("tracking server, closed port", "MLflow client", mlflow_client),
        (
            "S3 endpoint, closed port",
            "preflight probe",
            lambda: check_remote_storage(bucket, "storage_path"),
        ),
        (
            "S3 endpoint, closed port",
            "pyarrow S3 defaults",
            lambda: check_writable(bucket, "storage_path"),
        ),
    ]
    print(f"{'endpoint':<30} {'who':<20} {'seconds':>9}  error")
    for endpoint, who, call in cases:
        seconds, text = timed(call, args.cap)
        shown = f"> {args.cap:g}" if seconds is None else f"{seconds:.2f}"
        print(f"{endpoint:<30} {who:<20} {shown:>9}  {text}", flush=True)


if __name__ == "__main__":
    main()
