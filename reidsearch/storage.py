"""Paths that may cross nodes: local paths or ``s3://`` / ``gs://`` URIs, through ``pyarrow.fs``.

``pyarrow.fs`` is the filesystem layer Ray Train and Tune themselves use for ``storage_path``,
so a URI that works here works for them (an S3-compatible endpoint comes from the standard
``AWS_ENDPOINT_URL`` variable, credentials from the usual AWS/GCP chain). ``Path.resolve()``
must never see a URI: it turns ``s3://b/x`` into ``<cwd>/s3:/b/x``. A URI's query
(``?endpoint_override=...``, credentials) stays at its end when paths are joined onto it, and
error messages show it masked (``reidsearch.redact``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from reidsearch.errors import ReidSearchError, first_line
from reidsearch.redact import mask_secrets


def default_cache_root() -> Path:
    """``$REIDSEARCH_CACHE`` or ``~/.cache/reidsearch``: this machine's generated data, decoded
    caches and local copies of remote files (never shared between nodes)."""
    env = os.environ.get("REIDSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reidsearch"


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` locations (``file://`` included), False for plain paths."""
    return "://" in str(path)


def absolute(path: str | os.PathLike) -> str:
    """URIs unchanged; local paths expanded and made absolute (Ray runs workers elsewhere)."""
    if is_uri(path):
        return str(path).rstrip("/")
    return str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a URI (its ``?query`` kept at the end) or a local path."""
    if is_uri(base):
        path, question, query = base.partition("?")
        return posixpath.join(path.rstrip("/"), *parts) + question + query
    return str(Path(base).joinpath(*parts))


def basename(location: str) -> str:
    """The last path component (of a URI: without its ``?query``)."""
    if is_uri(location):
        return posixpath.basename(location.partition("?")[0].rstrip("/"))
    return Path(location).name


def _error(location: str, message: str) -> ReidSearchError:
    """``location: message`` as a one-line error, credentials in either masked."""
    return ReidSearchError(mask_secrets(f"{location}: {message}"))


def filesystem(location: str, what: str = "storage"):  # noqa: ANN201 - pyarrow.fs.FileSystem
    """``(pyarrow filesystem, path inside it)`` for a URI or a local path; one-line errors."""
    from pyarrow import fs

    if not is_uri(location):
        return fs.LocalFileSystem(), absolute(location)
    try:
        return fs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - unknown scheme, bad bucket name, no credentials
        raise _error(location, f"{what}: cannot open ({first_line(exc)})") from None


def exists(location: str) -> bool:
    from pyarrow import fs

    filesys, path = filesystem(location)
    return filesys.get_file_info(path).type != fs.FileType.NotFound


def list_dirs(location: str) -> list[str]:
    """Names of the folders directly under ``location`` (none if it does not exist)."""
    from pyarrow import fs

    filesys, path = filesystem(location)
    infos = filesys.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos if info.type == fs.FileType.Directory)


def read_text(location: str) -> str:
    filesys, path = filesystem(location)
    with filesys.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str, text: str) -> None:
    """Replace a small text file whole (see ``write_bytes``)."""
    write_bytes(location, text.encode())


def write_bytes(location: str, data: bytes) -> None:
    """Replace a file whole: readers see the old or the new content, never a part.

    Object stores replace objects atomically; a local file is written aside and renamed.
    """
    if not is_uri(location):
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
        return
    filesys, path = filesystem(location)
    with filesys.open_output_stream(path) as stream:
        stream.write(data)


def check_writable(location: str, what: str) -> None:
    """Write and delete a probe file now, so that an unreachable bucket or a read-only folder
    fails in one line before any trial starts (Ray Train would only notice at the first
    checkpoint of a remote worker, minutes later)."""
    probe = join(location, f".reidsearch-probe-{os.getpid()}")
    try:
        filesys, path = filesystem(location, what)
        filesys.create_dir(path, recursive=True)
        write_text(probe, "ok")
        filesys.delete_file(filesystem(probe)[1])
    except ReidSearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError from S3/GCS/local in many shapes
        raise _error(location, f"{what}: not writable ({first_line(exc)})") from None


def local_copy(location: str, what: str) -> Path:
    """A local path for ``location``: itself when local, else a copy downloaded once into
    this machine's cache (``downloads/<hash of the URI>-<name>``, the suffix kept)."""
    if not is_uri(location):
        return Path(absolute(location))
    key = hashlib.sha256(location.encode()).hexdigest()[:16]
    target = default_cache_root() / "downloads" / f"{key}-{basename(location)}"
    return download(location, target, what)


def download(location: str, target: Path, what: str) -> Path:
    """Copy a remote file or folder to ``target`` (a local path), published atomically.

    Used for dataset roots and weights files given as URIs: the search driver fetches them
    once, so trials never need the bucket themselves.
    """
    from pyarrow import fs

    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        filesys, path = filesystem(location, what)
        info = filesys.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise _error(location, f"{what}: no such file or folder")
        copy = staging / "copy"  # copy_files takes a file or a whole folder alike
        if info.type == fs.FileType.Directory:
            copy.mkdir()  # (copy_files does not create it for a folder without subfolders)
        fs.copy_files(
            path, str(copy), source_filesystem=filesys, destination_filesystem=fs.LocalFileSystem()
        )
        try:
            os.replace(copy, target)
        except OSError:
            if not target.exists():
                raise  # else another process published the same copy first
    except ReidSearchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _error(location, f"{what}: cannot download ({first_line(exc)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def data_folder(path: str) -> str:
    """The absolute path of a ``--data`` folder of run, train or eval (Ray workers run
    elsewhere), checked early; an ``s3://`` / ``gs://`` URI as it is (the search checks it
    before Ray starts)."""
    if is_uri(path):
        return path
    folder = Path(path).expanduser().resolve()
    if folder.is_file():
        raise ReidSearchError(f"{path}: --data: a file, not a dataset folder")
    if not folder.is_dir():
        raise ReidSearchError(f"{path}: --data: no such folder")
    return str(folder)
