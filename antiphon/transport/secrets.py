"""The transport's password: where it comes from, and that it is never shown.

A password reaches the client from the URL itself, from the environment variable
``transport.password_env`` names, or from ``transport.password_file`` -- never from a command line or
a config file in the repository. Anything that prints a URL prints ``redact_url(url)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from antiphon.transport.base import TransportConfigError

MASK = "***"


def redact_url(url: str) -> str:
    """The URL with any password (userinfo or ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode([(k, MASK if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_password(url: str) -> Optional[str]:
    """The password the URL carries (userinfo or ``?password=``), if any."""
    parts = urlsplit(url)
    return parts.password or dict(parse_qsl(parts.query)).get("password")


def resolve_password(url: str, password_env: Optional[str], password_file: Optional[str]) -> Tuple[Optional[str], str]:
    """(password, where it came from): the URL's, else ``$password_env`` if set and non-empty, else the
    contents of ``password_file`` (trailing newline stripped), else None. The URL's own password is
    returned as None: the client reads it from the URL."""
    if url_password(url):
        return None, "the password in transport.url"
    if password_env and os.environ.get(password_env):
        return os.environ[password_env], f"environment variable {password_env} (transport.password_env)"
    if password_file:
        path = Path(password_file).expanduser()
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise TransportConfigError(f"transport.password_file: {password_file!r} does not exist") from None
        except OSError as e:
            raise TransportConfigError(
                f"transport.password_file: cannot read {password_file!r} ({e.strerror})") from None
        if not secret:
            raise TransportConfigError(f"transport.password_file: {password_file!r} is empty")
        return secret, f"file {password_file!r} (transport.password_file)"
    return None, (f"none: transport.url has no password, {password_env or 'transport.password_env'} is unset, "
                  "transport.password_file is unset")
