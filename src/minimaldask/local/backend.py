"""The local backend: scheduler and workers as processes on this machine.

They are started through the same entrypoint as the container image, so both
backends share one contract. Each process runs in its own session so that a
Ctrl-C in the client's terminal does not tear the cluster down half-way; a
client that dies anyway leaves nothing behind for long: the scheduler shuts
itself down after ``idle_timeout`` and workers exit ``death_timeout`` after
losing it.

The cluster's state (addresses, process ids) lives in a directory per cluster
name, so another process can reconnect to it or delete it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distributed.core import rpc

from minimaldask import contract
from minimaldask.backend import (
    Backend,
    ClusterInfo,
    Logger,
    WorkerCounter,
    WorkerNews,
    scheduler_answers,
    until_news,
)
from minimaldask.exceptions import ClusterNotFoundError, ClusterStartError
from minimaldask.spec import ClusterSpec

_LOG_TAIL_LINES = 20
#: Seconds between two counts of the workers while waiting for them, unless the scheduler
#: tells of one sooner.
COUNT_EVERY = 0.2


def state_root() -> Path:
    """Directory holding one sub-directory per local cluster of this user."""
    return Path(tempfile.gettempdir()) / f"minimaldask-{os.getuid()}" / "local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    return True


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LocalBackend(Backend):
    """Processes on this machine, started through the pods' entrypoint."""

    name = "local"

    def __init__(self, spec: ClusterSpec, log: Logger) -> None:
        super().__init__(spec, log)
        self.dir = state_root() / spec.name
        self.address = ""
        self.dashboard_port = 0
        self.pids: dict[str, int] = {}
        self._counter = 0
        self._created = time.time()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- state shared between processes -------------------------------------------------

    def _save(self) -> None:
        state = {
            "name": self.spec.name,
            "address": self.address,
            "dashboard_port": self.dashboard_port,
            "pids": self.pids,
            "counter": self._counter,
            "created": self._created,
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.dir / "state.json")

    @staticmethod
    def _load(directory: Path) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads((directory / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, role: str, launch: contract.Launch, env: dict[str, str] | None = None) -> int:
        """Start the entrypoint, in a session of its own, with ``launch``'s variables."""
        log = open(self.dir / f"{role}.log", "ab")  # noqa: SIM115  (owned by the child)
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", contract.ENTRYPOINT_MODULE],
                env={**os.environ, **self.spec.env, **(env or {}), **launch.to_env()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.dir,
            )
        self.pids[role] = proc.pid
        self._procs[role] = proc
        # Reaped the moment it ends, whoever ends it (close, a scale-down, the janitor when
        # the cluster ends itself): else it stays a zombie child of the user's process (a
        # notebook kernel that lives for days) once this handle stops looking.
        threading.Thread(target=proc.wait, name=f"minimaldask-reap-{role}", daemon=True).start()
        return proc.pid

    def _packages(self) -> dict[str, Any]:
        return {
            "pip_packages": self.spec.pip_packages,
            "os_packages": self.spec.os_packages,
            "prefix": str(self.dir / "packages"),
            "tls_dir": str(self.dir / "tls") if self.security else "",
        }

    def _make_credentials(self) -> None:
        """TLS, when asked: a CA of the cluster's own, its files readable by this user only."""
        from minimaldask.tls import Credentials

        credentials = Credentials.make(self.spec.name, ["localhost", "127.0.0.1"])
        directory = self.dir / "tls"
        directory.mkdir(mode=0o700)
        for name, text in credentials.files().items():
            path = directory / name
            path.touch(mode=0o600)
            path.write_text(text)
        self.security = credentials.security()

    def _read_credentials(self) -> None:
        """The TLS files of a running cluster of this user, if it has them."""
        directory = self.dir / "tls"
        if directory.exists():
            from minimaldask.tls import Credentials

            files = {p.name: p.read_text() for p in directory.iterdir()}
            self.security = Credentials.from_files(files).security()

    def _start_scheduler(self) -> None:
        spec = self.spec
        port, self.dashboard_port = _free_port(), _free_port()
        arguments = [
            "--host", "127.0.0.1",
            "--dashboard-address", f"127.0.0.1:{self.dashboard_port}",
            "--scheduler-file", str(self.dir / "scheduler.json"),
        ]  # fmt: skip
        settings = contract.JanitorSettings(
            cluster=spec.name,
            # No namespace: not in Kubernetes, the janitor ends the cluster by closing the scheduler.
            idle_timeout=spec.idle_timeout,
            no_client_timeout=spec.no_client_timeout,
            max_lifetime=spec.max_lifetime,
        )
        launch = contract.Launch(
            port=port,
            arguments=(*arguments, *contract.scheduler_arguments(spec.scheduler_options)),
            **self._packages(),
        )
        # An inherited namespace would make the janitor think it runs in a pod.
        env = {**settings.to_env(), contract.JanitorSettings.NAMESPACE_VARIABLE: ""}
        self._spawn("scheduler", launch, env)
        self.address = f"{contract.scheme(bool(self.security))}127.0.0.1:{port}"

    def _start_worker(self) -> str:
        spec = self.spec
        self._counter += 1
        name = f"{spec.name}-worker-{self._counter}"
        arguments = contract.worker_arguments(
            name,
            spec.nthreads,
            spec.death_timeout,
            spec.memory_limit,
            ["--host", "127.0.0.1", "--no-dashboard", *spec.worker_options],
        )
        launch = contract.Launch(
            worker=True,
            scheduler_address=self.address,
            arguments=tuple(arguments),
            **self._packages(),
        )
        self._spawn(name, launch)
        self.requested.add(name)
        return name

    async def _stop(self, names: list[str], grace: float) -> None:
        """SIGTERM the named processes (whole sessions), SIGKILL what is left after ``grace``."""
        pids = {n: self.pids[n] for n in names if n in self.pids}
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        while any(_alive(p) for p in pids.values()):
            await asyncio.sleep(0.05)
        for n in names:
            self.pids.pop(n, None)
            proc = self._procs.pop(n, None)
            if proc is not None:
                proc.returncode = proc.returncode or -1  # reaped by _alive already

    def _failure(self, role: str, what: str) -> ClusterStartError:
        return ClusterStartError(
            f"{what}. Last lines of its log ({self.dir / (role + '.log')}):\n"
            f"{_tail(self.dir / (role + '.log'))}"
        )

    # -- Backend API ----------------------------------------------------------------------

    async def start(self, attach_only: bool = False, update: bool = False) -> str:
        """Attach to a running local cluster of this name, or start one.

        ``update`` is not needed here: local processes take no options that change.
        """
        state = self._load(self.dir)
        if state:
            self._read_credentials()
        if state and await scheduler_answers(state["address"], self.security):
            self.address = state["address"]
            self.dashboard_port = state["dashboard_port"]
            self.pids = state["pids"]
            self._counter = state["counter"]
            self._created = state["created"]
            self.requested = {n for n in self.pids if n != "scheduler"}
            self.log(f"Attached to the running local cluster {self.spec.name!r} at {self.address}")
            return self.address
        if attach_only:
            raise ClusterNotFoundError(
                f"no local cluster named {self.spec.name!r} is running; start one with "
                f"MinimalCluster(name={self.spec.name!r}, backend='local')"
            )
        if state:  # a dead cluster's leftovers
            self.pids = state["pids"]
            await self._stop(list(self.pids), grace=1)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._created = time.time()
        self.log(f"Starting a local scheduler and {self.spec.workers} worker(s)")
        self.created = True
        self.security = None
        if self.spec.uses_tls:
            self._make_credentials()
        self._start_scheduler()
        self._save()
        deadline = time.monotonic() + self.spec.startup_timeout
        while not await scheduler_answers(self.address, self.security):
            if not _alive(self.pids["scheduler"]):
                raise self._failure("scheduler", "The scheduler exited during start-up")
            if time.monotonic() > deadline:
                raise self._failure(
                    "scheduler",
                    f"The scheduler did not answer within startup_timeout={self.spec.startup_timeout:g}s",
                )
            await asyncio.sleep(0.2)
        for _ in range(self.spec.workers):
            self._start_worker()
        self._save()
        return self.address

    async def wait_for_workers(
        self, n: int, count: WorkerCounter, timeout: float, news: WorkerNews | None = None
    ) -> None:
        """Wait for ``n`` connected workers; a worker process that exits fails the wait."""
        deadline = time.monotonic() + timeout
        while (connected := await count()) < n:
            for name in sorted(self.requested):
                if name in self.pids and not _alive(self.pids[name]):
                    raise self._failure(name, f"Worker {name} exited during start-up")
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{connected} of {n} workers connected within {timeout:g}s. "
                    f"Worker logs are in {self.dir}"
                )
            await until_news(news, COUNT_EVERY)

    async def scale(self, n: int, scheduler: Any) -> None:
        """Start or stop worker processes; those that stop are retired first (their data moves).

        Workers that never connected go first; the scheduler chooses the others,
        and keeps those whose data has nowhere to go.
        """
        excess = len(self.requested) - n
        if excess > 0:
            answer = await asyncio.wait_for(getattr(scheduler, contract.WORKERS)(), 30)
            connected = set(answer["running"]) | set(answer["retired"])
            gone = sorted(self.requested - connected)[:excess] + sorted(answer["retired"])
            if len(gone) < excess:
                retired = await asyncio.wait_for(
                    getattr(scheduler, contract.RETIRE)(n=excess - len(gone), timeout=60), 90
                )
                gone += retired["retired"]
                if len(gone) < excess:
                    self.log(f"Kept {excess - len(gone)} worker(s): their data had nowhere to go")
            await self.remove(gone[:excess] if len(gone) > excess else gone)
        while len(self.requested) < n:
            self._start_worker()
        self._save()

    async def remove(self, names: list[str]) -> None:
        """Stop these worker processes (retired already: they hold nothing)."""
        gone = [name for name in names if name in self.requested]
        await self._stop(gone, grace=10)
        self.requested.difference_update(gone)
        self._save()

    async def close(self) -> None:
        """Ask the scheduler to close everything, then make sure every process is gone."""
        if self.address:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                args = self.security.get_connection_args("client") if self.security else {}
                async with rpc(self.address, timeout=3, connection_args=args) as r:
                    await asyncio.wait_for(r.terminate(), 10)
        workers = [n for n in self.pids if n != "scheduler"]
        await self._stop(workers, grace=10)
        await self._stop(["scheduler"], grace=10)
        self.requested.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def logs(self) -> dict[str, str]:
        """The output of each process."""
        out = {}
        for path in sorted(self.dir.glob("*.log")):
            out[f"process {path.stem}"] = path.read_text(errors="replace")
        return out

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard on this machine."""
        return f"http://127.0.0.1:{self.dashboard_port}/status" if self.dashboard_port else None

    @classmethod
    async def delete(cls, name: str, namespace: str, timeout: float) -> bool:
        """Stop the named local cluster; False if none was running."""
        directory = state_root() / name
        state = cls._load(directory)
        if state is None:
            return False
        backend = cls(ClusterSpec.from_options(name=name, backend="local"), log=lambda _: None)
        backend.address = state["address"]
        backend.pids = state["pids"]
        backend.dir = directory
        backend._read_credentials()
        await asyncio.wait_for(backend.close(), timeout)
        return True

    @classmethod
    async def list_clusters(cls, namespace: str) -> list[ClusterInfo]:
        """Local clusters whose scheduler process is alive."""
        out = []
        root = state_root()
        for directory in sorted(root.iterdir()) if root.exists() else []:
            state = cls._load(directory)
            if not state or not _alive(state["pids"].get("scheduler", -1)):
                continue
            workers = [n for n in state["pids"] if n != "scheduler"]
            out.append(
                ClusterInfo(
                    name=state["name"],
                    namespace="-",
                    backend="local",
                    scheduler_address=state["address"],
                    requested_workers=len(workers),
                    workers=sum(_alive(state["pids"][n]) for n in workers),
                    created=state["created"],
                )
            )
        return out
