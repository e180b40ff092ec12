"""Checks a search makes before Ray starts: every fault found here costs one line, not a trial.

Each check raises ``ReidSearchError`` with one line naming the file, key or URI at fault, within
seconds: the libraries behind them retry for minutes (MLflow's client, the AWS SDK), so the
probes here make one short attempt of their own. Nothing is created: no experiment folder, no
MLflow run (an S3/GCS probe object is written and deleted again).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reidsearch.errors import ReidSearchError, first_line
from reidsearch.redact import mask_secrets
from reidsearch.search.cluster.cluster_file import (
    check_trial_fits_cluster_file,
    load_cluster_file,
)
from reidsearch.search.cluster.ray_session import running_ray_address
from reidsearch.search.driver.plan import SearchPlan, check_dataset
from reidsearch.search.results.store import default_tracking_uri
from reidsearch.search.space import SearchSpace
from reidsearch.storage import filesystem, is_uri, join

PROBE_TIMEOUT_S = 5.0  # one attempt each, so a dead endpoint fails in seconds, not minutes
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"  # what every client calls
REMOTE_SCHEMES = ("s3", "gs", "gcs")


def _error(message: str) -> ReidSearchError:
    """A one-line error whose URIs show no credentials (``reidsearch.redact``)."""
    return ReidSearchError(mask_secrets(message))


def check_before_ray(space: SearchSpace, plan: SearchPlan) -> None:
    """The dataset is there, the tracking server answers and a bucket storage is writable.

    A local storage folder is probed after Ray starts: whether a local folder is allowed
    depends on the cluster, and nothing is written before that is known.
    """
    check_remote_inputs(space)
    check_dataset(space)
    check_tracking_uri(plan.tracking_uri, _tracking_key(space, plan.tracking_uri))
    check_remote_storage(space.storage_root(), f"{space.source}: storage_path")


def check_cluster_file(space: SearchSpace, cluster_file: str, *, address: str | None) -> None:
    """A cluster file named on the command line must be valid (found implicitly it is only a
    hint, see ``ray_session._layout``); when the search joins a cluster, a trial that no node type
    of the file could ever run is refused now rather than after Ray has started."""
    cluster = load_cluster_file(cluster_file)
    if running_ray_address(address) is not None:  # a private local Ray ignores the file
        check_trial_fits_cluster_file(cluster, space)


# ------------------------------------------------------------------------- buckets (s3, gs)
def _remote(location: str) -> bool:
    return is_uri(location) and location.split("://", 1)[0].lower() in REMOTE_SCHEMES


def quick_filesystem(location: str, what: str) -> tuple[Any, str]:
    """``storage.filesystem`` with one short attempt per request (the same endpoint, region
    and credentials): the AWS SDK's default retries turn a dead endpoint into a long wait."""
    from pyarrow import fs

    filesys, path = filesystem(location, what)
    try:
        rebuild, (options,) = filesys.__reduce__()  # the filesystem's own constructor options
        if isinstance(filesys, fs.S3FileSystem):
            options = dict(options, connect_timeout=PROBE_TIMEOUT_S)
            options |= dict(request_timeout=PROBE_TIMEOUT_S)
            options["retry_strategy"] = fs.AwsStandardS3RetryStrategy(max_attempts=1)
        elif isinstance(filesys, fs.GcsFileSystem):
            options = dict(options, retry_time_limit=timedelta(seconds=PROBE_TIMEOUT_S))
        else:
            return filesys, path
        return rebuild(options), path
    except (TypeError, ValueError, AttributeError):  # another pyarrow: probe with the defaults
        return filesys, path


def _unreachable(location: str, where: str, exc: BaseException) -> ReidSearchError:
    """One line for a failed bucket request: a missing bucket, an endpoint that does not
    answer, refused credentials (pyarrow's own words, first line only)."""
    text = str(exc)
    if "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower():
        bucket = location.partition("?")[0].split("://", 1)[1].split("/", 1)[0]
        return _error(f"{where}: {location}: bucket {bucket!r} does not exist")
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        at = f" at {endpoint}" if endpoint else ""
        detail = text.rsplit("Details: ", 1)[-1].strip().splitlines()[0]
        return _error(f"{where}: {location}: the storage endpoint{at} does not answer ({detail})")
    return _error(f"{where}: {location}: not writable ({first_line(exc)})")


def check_remote_storage(location: str, where: str) -> None:
    """Write and delete a probe object under an ``s3://`` / ``gs://`` storage root (a local
    folder waits for ``storage.check_writable`` after Ray starts: see ``check_before_ray``)."""
    if not _remote(location):
        return
    filesys, path = quick_filesystem(location, where)
    probe = join(path, f".reidsearch-probe-{os.getpid()}")
    try:
        with filesys.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesys.delete_file(probe)
    except OSError as exc:
        raise _unreachable(location, where, exc) from None


def _check_exists(location: str, where: str, kind: str) -> None:
    from pyarrow import fs

    filesys, path = quick_filesystem(location, where)
    try:
        found = filesys.get_file_info(path).type != fs.FileType.NotFound
        bucket = path.split("/", 1)[0]
        if not found and filesys.get_file_info(bucket).type == fs.FileType.NotFound:
            raise _error(f"{where}: {location}: bucket {bucket!r} does not exist")
    except OSError as exc:
        raise _unreachable(location, where, exc) from None
    if not found:
        raise _error(f"{where}: {location}: no such {kind}")


def check_remote_inputs(space: SearchSpace) -> None:
    """A dataset root or weights file given as a bucket URI exists (the driver downloads
    them after Ray starts, with the SDK's long retries)."""
    cfg = space.fixed_config
    if cfg.data.root is not None and _remote(cfg.data.root):
        _check_exists(cfg.data.root, f"{space.source}: fixed.data.root", "folder")
    if cfg.model.weights is not None and _remote(cfg.model.weights):
        _check_exists(cfg.model.weights, f"{space.source}: fixed.model.weights", "file")


# ----------------------------------------------------------------------------- MLflow
def _tracking_key(space: SearchSpace, uri: str) -> str:
    """Where the user set the tracking URI (``plan_search``'s order: flag, file, env)."""
    if uri == space.mlflow.tracking_uri:
        return f"{space.source}: mlflow.tracking_uri"
    if uri == os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return "the default tracking store" if uri == default_tracking_uri() else "--tracking-uri"


def check_tracking_uri(uri: str, where: str) -> None:
    """An http(s) server answers MLflow's API; a sqlite or file store can be created."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        _probe_server(uri, where)
    elif scheme == "sqlite":
        _check_sqlite(uri, where)
    elif scheme in ("", "file"):
        _check_file_store(uri, where)
    # databricks, postgresql://, ...: left to MLflow


def _request(uri: str) -> urllib.request.Request:
    """The probe, with the credentials MLflow's client would send (env or the URI's userinfo)."""
    parts = urlsplit(uri)
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(bare.rstrip("/") + MLFLOW_PROBE)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or urllib.parse.unquote(parts.username or "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or urllib.parse.unquote(
        parts.password or ""
    )
    if user or password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    return request


def _tls() -> ssl.SSLContext:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - the user asked MLflow for it
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


def _probe_server(uri: str, where: str) -> None:
    """One GET of the experiments search, the call every MLflow client makes first."""
    context = _tls() if uri.lower().startswith("https") else None
    try:
        with urllib.request.urlopen(_request(uri), timeout=PROBE_TIMEOUT_S, context=context) as r:
            body = r.read(1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            given = os.environ.get("MLFLOW_TRACKING_USERNAME") or "@" in urlsplit(uri).netloc
            what = "refused the credentials given" if given else "needs credentials"
            raise _error(
                f"{where}: {uri}: the tracking server {what} (HTTP 401); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        if exc.code == 403:
            raise _error(
                f"{where}: {uri}: the tracking server refuses these credentials access to "
                "experiments (HTTP 403)"
            ) from None
        raise _not_mlflow(uri, where, f"HTTP {exc.code}") from None
    except (TimeoutError, urllib.error.URLError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            raise _error(
                f"{where}: {uri}: the tracking server does not answer within {PROBE_TIMEOUT_S:g} s"
            ) from None
        if isinstance(reason, ssl.SSLError):
            raise _error(
                f"{where}: {uri}: TLS failed ({first_line(reason)}); see "
                "MLFLOW_TRACKING_SERVER_CERT_PATH or MLFLOW_TRACKING_INSECURE_TLS"
            ) from None
        raise _error(
            f"{where}: {uri}: no tracking server answers ({_reason(reason)}); start one "
            "(mlflow server) or fix the URI"
        ) from None
    except (http.client.HTTPException, ConnectionError, ValueError) as exc:
        said = "".join(c if c.isprintable() else "?" for c in first_line(exc))[:80]
        raise _not_mlflow(uri, where, f"not an HTTP answer: {said}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "error_code" in answer:
        raise _not_mlflow(uri, where, "its answer is not MLflow's")


def _reason(reason: object) -> str:
    return first_line(reason) if isinstance(reason, BaseException) else str(reason)


def _not_mlflow(uri: str, where: str, why: str) -> ReidSearchError:
    route = MLFLOW_PROBE.split("?", 1)[0]
    return _error(
        f"{where}: {uri}: answers but is not an MLflow tracking server ({why} on {route})"
    )


def _check_sqlite(uri: str, where: str) -> None:
    """SQLAlchemy creates the database file but not its folder (``sqlite:////abs/x.db``)."""
    path = uri.split(":///", 1)[1].split("?", 1)[0] if ":///" in uri else ""
    if path in ("", ":memory:"):
        return
    database = Path(path)
    folder = database.parent
    if database.is_dir():
        raise _error(f"{where}: {uri}: {database} is a folder, not a database file")
    if not folder.is_dir():
        raise _error(f"{where}: {uri}: the folder {folder} does not exist")
    target = database if database.exists() else folder
    if not os.access(target, os.W_OK):
        raise _error(f"{where}: {uri}: {target} is not writable")


def _check_file_store(uri: str, where: str) -> None:
    """MLflow creates a file store's folders; what is in the way is a file or no write access."""
    path = Path(urlsplit(uri).path if uri.startswith("file:") else uri).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise _error(f"{where}: {uri}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise _error(f"{where}: {uri}: {existing} is not writable")
