"""Credentials masked out of URIs before they are printed, logged or stored.

Why: a tracking URI may carry a password (``http://user:pw@host:5000``), a ``pyarrow.fs``
storage URI its keys (``s3://ACCESS:SECRET@bucket/x``) and other URIs credentials as query
parameters (presigned ``?X-Amz-Signature=..``, ``?secret_key=..``, ``?sas_token=..``), while
terminals, log files, MLflow params and config artifacts are read by people who should not
see them. Only what is shown is masked: connections keep using the real value. Standard library
only, so every layer (the core included) can use it.

What counts as a credential: the password of a URI's user info (and the user name too for
object stores, where it is an access key), and the value of a query parameter whose name
contains one of ``QUERY_KEY_PARTS`` (``secret_key``, ``session_token``, ``access_key``,
``password``, ``X-Amz-Signature``...) or is ``pwd`` or ``sig``. Everything else
(``endpoint_override``, ``region``, ``scheme``, paths, hosts) stays visible.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"
QUERY_KEY_PARTS = (
    "secret",
    "password",
    "passwd",
    "token",
    "signature",
    "credential",
    "access_key",
    "account_key",
    "api_key",
    "apikey",
)
QUERY_KEYS = frozenset({"pwd", "sig"})  # short names matched whole
# Schemes whose user name is itself an access key (s3://ACCESS:SECRET@bucket/...).
KEY_USER_SCHEMES = frozenset({"s3", "gs", "gcs", "abfs", "abfss", "az"})

# A URI inside any text: scheme://, then everything up to whitespace or a quote.
_URI = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# User info: the user has no '/', ':' or '@'; the password runs to the first '@' (an
# unescaped '/' in it must not leave the rest of the secret visible).
_USERINFO = re.compile(r"(?P<user>[^/?#@:]*):(?P<password>[^@]*?)@")
_TRAILING = ".,;:)]}"  # punctuation of the surrounding sentence, not of the URI


def is_secret_key(name: str) -> bool:
    """Whether a query parameter named ``name`` carries a credential."""
    key = unquote(name).strip().lower()
    return key in QUERY_KEYS or any(part in key for part in QUERY_KEY_PARTS)


def mask_uri(uri: str) -> str:
    """``uri`` with its password and credential query values replaced by ``***``; a plain
    path or a URI without credentials comes back unchanged."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    found = _USERINFO.match(rest)
    if found is not None:
        user = found["user"]
        if user and scheme.lower() in KEY_USER_SCHEMES:
            user = MASK
        rest = f"{user}:{MASK}@{rest[found.end() :]}"
    head, question, query = rest.partition("?")
    if question:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            pairs.append(f"{name}={MASK}" if equals and is_secret_key(name) else pair)
        rest = f"{head}?{'&'.join(pairs)}"
    return f"{scheme}://{rest}"


def _mask_match(found: re.Match[str]) -> str:
    token = found.group()
    core = token.rstrip(_TRAILING)
    return mask_uri(core) + token[len(core) :]


def mask_secrets(value: Any) -> Any:
    """``value`` with every URI in it masked (``mask_uri``): a string (a message, a path, a
    printed plan), or the strings inside nested mappings, lists and tuples (settings)."""
    if isinstance(value, str):
        return _URI.sub(_mask_match, value) if "://" in value else value
    if isinstance(value, Mapping):
        return {key: mask_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    if isinstance(value, tuple):
        return tuple(mask_secrets(item) for item in value)
    return value
