"""A PostgreSQL cluster of a test's own: initdb in a temporary directory, a free port, stop and start.

Tests that take PostgreSQL away (tests/store/test_postgres_outage.py) cannot stop the shared server,
so they make their own. initdb and pg_ctl refuse to run as root; as root, every command runs
as the `postgres` OS user (`runuser -u postgres --`) in a directory that user owns. Trust
authentication, listening on 127.0.0.1 only, its Unix socket in that directory (never the
system's), fsync left on. `stop()` and `start()` keep the port, so clients configured with the
URL reconnect to the same address once it is back; `remove()` stops it and deletes everything.

    with PrivatePostgres() as cluster:       # initdb + start
        cluster.url                          # postgresql://postgres@127.0.0.1:<port>/postgres
        cluster.stop()                       # pg_ctl stop -m immediate (a crash, then recovery)
        cluster.start()                      # the same data, the same port

A streaming replica of a running cluster: `PrivatePostgres().replica_of(primary).start()`
(pg_basebackup -R: a standby that follows the primary), `promote()` makes it a primary.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.servers import free_port

OS_USER = "postgres"


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: $PG_BINDIR, else PATH, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # a symlink's real directory has every server tool
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries found (set PG_BINDIR)")
    return Path(candidates[-1]).parent


class PrivatePostgres:
    """One throwaway PostgreSQL cluster; see the module docstring."""

    def __init__(self, *, bindir: Path | None = None, port: int | None = None) -> None:
        self.bindir = bindir or postgres_bindir()
        self.port = port or free_port()
        self.as_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="private-postgres-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        if self.as_root:
            shutil.chown(self.directory, user=OS_USER, group=OS_USER)
        self.initialized = False
        self.running = False

    @property
    def url(self) -> str:
        """The maintenance database's URL; swap the path for another database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", OS_USER, "--"] if self.as_root else []
        # stdin/stdout/stderr never stay attached to the postmaster (-l sends its output to the
        # log file), so run() returns as soon as pg_ctl does.
        result = subprocess.run([*prefix, *command], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout, check=False, cwd=self.directory)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr}\n{log}")
        return result

    def init(self) -> PrivatePostgres:
        # The superuser is "postgres" whoever runs this (without root, it is the current user's cluster).
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.directory}'\n"
                       "max_connections = 100\nshared_buffers = 32MB\nlogging_collector = off\n")
        self.initialized = True
        return self

    def replica_of(self, primary: PrivatePostgres) -> PrivatePostgres:
        """Make this (new, not started) cluster a streaming standby of `primary`: pg_basebackup -R."""
        self._run(str(self.bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                  "-D", str(self.data), "-R", "-X", "stream", "-c", "fast")
        # The copied configuration is the primary's: later lines win, so this one has its own port and socket.
        self.configure(port=str(self.port), unix_socket_directories=f"'{self.directory}'")
        self.initialized = True
        return self

    def configure(self, **settings: str) -> None:
        """Append settings to postgresql.conf (values as written there); reloaded if it is running."""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "".join(f"{name} = {value}\n" for name, value in settings.items()))
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "reload", "-D", str(self.data))

    def promote(self, timeout: float = 60) -> None:
        """A standby becomes a primary (pg_ctl promote, waiting until it accepts writes)."""
        self._run(str(self.bindir / "pg_ctl"), "promote", "-D", str(self.data), "-w", "-t", str(int(timeout)),
                  timeout=timeout + 10)

    def start(self, timeout: float = 60) -> PrivatePostgres:
        """Start it and return once it accepts connections (pg_ctl -w), after any crash recovery."""
        if not self.initialized:
            self.init()
        self._run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(int(timeout)), timeout=timeout + 10)
        self.running = True
        return self

    def stop(self, mode: str = "immediate", timeout: float = 60) -> None:
        """pg_ctl stop: `immediate` (every backend killed, no checkpoint: a crash) or `fast`."""
        if not self.running:
            return
        self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w",
                  "-t", str(int(timeout)), timeout=timeout + 10)
        self.running = False

    def processes(self) -> list[int]:
        """The postmaster's pid and those of its children (backends and auxiliary processes)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return []  # not running
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP every process of the cluster: connections stay open, nothing answers (a hung host)."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def is_running(self) -> bool:
        if not self.initialized:
            return False
        prefix = ["runuser", "-u", OS_USER, "--"] if self.as_root else []
        return subprocess.run([*prefix, str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
                              capture_output=True, check=False, cwd=self.directory).returncode == 0

    def remove(self) -> None:
        try:
            if self.is_running():
                self.running = True
                self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self.remove()
