"""A throwaway PostgreSQL server for tests, from the distribution's binaries (Debian: postgresql).

:func:`start_server` initialises a cluster in a fresh temporary directory (trust auth, superuser
``cordiale``), starts it on 127.0.0.1 on a free port with its Unix socket inside that directory (so
it never meets a system server) and ``fsync=off``, and waits until it accepts connections. Every
reason it cannot (a binary missing, the server refusing to start) is raised as
:class:`PostgresUnavailable` with a message that says exactly why; the fixtures in ``conftest.py``
turn it into a skip.

PostgreSQL refuses to run as root: under root the binaries run as the ``postgres`` system user
(``runuser -u postgres --``), which owns the temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = [
    "PostgresServer",
    "PostgresUnavailable",
    "create_database",
    "drop_database",
    "find_binaries",
    "start_server",
]

SUPERUSER = "cordiale"
RUN_AS = "postgres"  # the system user that runs the server when we are root
STARTUP_TIMEOUT_S = 30
_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


@dataclass
class PostgresServer:
    """A running throwaway server; :meth:`stop` ends it and deletes its directory."""

    bindir: Path
    root: Path  # the temporary directory: data/, server.log, the Unix socket
    port: int
    host: str = "127.0.0.1"
    startup_s: float = 0.0
    run_as: list[str] = field(default_factory=list)  # e.g. ["runuser", "-u", "postgres", "--"]

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def stop(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run(
                self.run_as,
                [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate"],
                cwd=self.root,
                timeout=30,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH first, then the newest
    ``/usr/lib/postgresql/*/bin``."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").is_file()),
        key=_version_key,
        reverse=True,
    )
    if not candidates:
        raise PostgresUnavailable(
            "no pg_ctl on PATH or in /usr/lib/postgresql/*/bin "
            "(install the PostgreSQL server, e.g. Debian's `postgresql` package)"
        )
    problems = []
    for bindir in candidates:
        missing = [b for b in _BINARIES if not os.access(bindir / b, os.X_OK)]
        if not missing:
            return bindir
        problems.append(f"{bindir} has pg_ctl but no {', '.join(missing)}")
    raise PostgresUnavailable("; ".join(problems))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGHOST, ...) of the caller must not steer the throwaway server
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    prefix: list[str], cmd: list[str], *, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *cmd],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_as_prefix() -> tuple[list[str], pwd.struct_passwd | None]:
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable(
            "running as root (PostgreSQL refuses to) and there is no `runuser` to drop to "
            f"the {RUN_AS!r} user"
        )
    try:
        user = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root (PostgreSQL refuses to) and there is no {RUN_AS!r} system user "
            "to run the server as"
        ) from None
    return [runuser, "-u", RUN_AS, "--"], user


def _make_root(user: pwd.struct_passwd | None) -> Path:
    base = tempfile.gettempdir()
    if len(base) > 60:  # the socket path must stay under the ~107-byte Unix limit
        base = "/tmp"
    root = Path(tempfile.mkdtemp(prefix="cordiale-pg-", dir=base))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


def start_server(timeout_s: float = STARTUP_TIMEOUT_S) -> PostgresServer:
    """Initialise and start a throwaway server; raises :class:`PostgresUnavailable` with the
    reason (and the server log's tail) when it cannot."""
    t0 = time.monotonic()
    bindir = find_binaries()
    prefix, user = _run_as_prefix()
    for _attempt in range(3):  # a free port can be taken between probe and bind: retry
        server = PostgresServer(
            bindir=bindir, root=_make_root(user), port=_free_port(), run_as=prefix
        )
        try:
            if _init_and_start(server, deadline=t0 + timeout_s):
                _wait_accepting(server, deadline=t0 + timeout_s)
                server.startup_s = time.monotonic() - t0
                return server
        except subprocess.TimeoutExpired as exc:
            log = _read_log(server) or str(exc.output or "")
            server.stop()
            raise PostgresUnavailable(
                f"{Path(exc.cmd[len(prefix)]).name} did not finish in {exc.timeout:.0f} s:\n"
                + _tail(log)
            ) from None
        except BaseException:
            server.stop()
            raise
        server.stop()
    raise PostgresUnavailable("no free port for PostgreSQL after 3 attempts")


def _init_and_start(server: PostgresServer, deadline: float) -> bool:
    """initdb and pg_ctl start; False when the port was taken (worth another try)."""
    bindir, root, prefix = server.bindir, server.root, server.run_as
    initdb = _run(
        prefix,
        [
            str(bindir / "initdb"),
            "-D",
            str(server.datadir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        cwd=root,
        timeout=120,
    )
    if initdb.returncode != 0:
        raise PostgresUnavailable(
            f"initdb ({bindir}) failed with exit status {initdb.returncode}:\n"
            + _tail(initdb.stdout + initdb.stderr)
        )
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-p {server.port}",
            f"-c unix_socket_directories={shlex.quote(str(root))}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ]
    )
    remaining = max(1, int(deadline - time.monotonic()))
    started = _run(
        prefix,
        [
            str(bindir / "pg_ctl"),
            "start",
            "-D",
            str(server.datadir),
            "-l",
            str(server.logfile),
            "-o",
            options,
            "-w",
            "-t",
            str(remaining),
        ],
        cwd=root,
        timeout=remaining + 15,
    )
    if started.returncode == 0:
        return True
    log = _read_log(server)
    if "could not bind" in log or "already in use" in log:
        return False
    raise PostgresUnavailable(
        f"pg_ctl start ({bindir}) failed with exit status {started.returncode}:\n"
        + _tail(started.stdout + started.stderr)
        + "\nserver log (tail):\n"
        + _tail(log)
    )


def _read_log(server: PostgresServer) -> str:
    try:
        return server.logfile.read_text(errors="replace")
    except OSError:
        return ""


def _wait_accepting(server: PostgresServer, deadline: float) -> None:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(server.url("postgres"), connect_timeout=5):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    log = _read_log(server)
    raise PostgresUnavailable(
        f"PostgreSQL on port {server.port} did not accept connections: {last}\n"
        f"server log (tail):\n{_tail(log)}"
    )


def _admin_url(url: str) -> str:
    """The same server, database ``postgres`` (CREATE/DROP DATABASE cannot run inside the
    database they name)."""
    return url.rsplit("/", 1)[0] + "/postgres"


def create_database(url: str, name: str | None = None) -> str:
    """Create an empty database on the server of ``url``; returns its URL."""
    name = name or f"cordiale_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    """Drop the database of ``url``, closing any connection still open to it."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_admin_url(url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
