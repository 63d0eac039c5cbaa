"""Receiver processes: more than one core accepting associations on the main port.

One Python process receives on one core (pynetdicom decodes PDUs under the
GIL). With ``network.receivers = N`` the node starts N − 1 child processes
that serve the main AE (Verification, Storage, C-FIND, C-MOVE, C-GET) on the
node's own listening socket, inherited: a new connection wakes the waiting
processes and one of them accepts it. Each child has its own catalog
connection and :class:`~dicom_node.intake.ingest.Ingest` with its group
commit, so an instance is acknowledged by a child under the same rule as by
the node: on disk and in the catalog first. Series completion, processing,
the outbox and the similarity AE stay in the node.

A child reads its settings from its stdin, then waits on it: the node closes
it to stop the child, and a node that dies (SIGKILL) closes it too, so no
child outlives its node. Its log records come back through its stdout (the
stdlib's pickled-record protocol of :class:`logging.handlers.SocketHandler`)
and are handled by the node's loggers: one log, one set of filters. A child
that exits while the node runs is started again, after its partial files are
removed; files it renamed into place but never catalogued (never
acknowledged) are kept, and a resend, or the orphan scan at the node's next
start, completes them.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import IO

from dicom_node.settings import Settings
from storage.instances import InstanceStore

__all__ = ["ReceiverProcesses", "share_of"]

logger = logging.getLogger(__name__)

#: A child that ran less than this before exiting is started again only after
#: a pause that doubles up to :data:`_MAX_RESTART_PAUSE` (a crash loop logs
#: once per pause, not continuously).
_STABLE_SECONDS = 10.0
_MAX_RESTART_PAUSE = 60.0
#: Seconds a child gets to close its associations when the node stops.
_STOP_SECONDS = 10.0
#: Seconds the node waits at start for its children to serve.
_START_SECONDS = 60.0
#: The attribute of the log record by which a child says it serves.
_SERVING = "dicom_node_receiver_serving"


#: A child's command (not ``-m``: as ``__main__`` its loggers would not be ours).
_CHILD = "import sys; from dicom_node.net.receivers import main; sys.exit(main())"


def share_of(max_associations: int, receivers: int) -> int:
    """Each receiving process's limit of established associations (the share, rounded up)."""
    return -(-max_associations // receivers)


@dataclass(frozen=True)
class _Start:
    """What the node hands a child on its stdin."""

    settings: Settings
    fd: int
    level: int
    number: int


@dataclass
class _Child:
    number: int
    process: subprocess.Popen[bytes]
    started: float
    log_thread: threading.Thread
    serving: threading.Event


class ReceiverProcesses:
    """Start, watch and stop the node's receiver processes.

    Parameters
    ----------
    settings : Settings
        ``network.receivers`` − 1 children are started.
    listen_socket : socket.socket
        The main AE's socket, listening and shared
        (:meth:`dicom_node.net.servers.DicomServers.share_main_socket`).
    store : InstanceStore
        The node's instance store: a child's partial files are removed when it exits.
    on_restart : callable, optional
        Called after a child was started again (the node rewrites ``node.json``).
    """

    def __init__(
        self,
        settings: Settings,
        listen_socket: socket.socket,
        store: InstanceStore,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._socket = listen_socket
        self._store = store
        self._on_restart = on_restart
        self._children: dict[int, _Child] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    @property
    def count(self) -> int:
        """Children wanted (``network.receivers`` − 1)."""
        return self._settings.network.receivers - 1

    @property
    def pids(self) -> list[int]:
        """Process IDs of the running children."""
        with self._lock:
            return [c.process.pid for c in self._children.values() if c.process.poll() is None]

    def start(self) -> None:
        """Start the children, wait until they serve, then watch them (restart any that exits)."""
        for number in range(1, self.count + 1):
            self._spawn(number)
        deadline = time.monotonic() + _START_SECONDS
        with self._lock:
            children = list(self._children.values())
        for child in children:
            # Until it serves, exits (the watcher starts it again) or the time is up.
            while not child.serving.wait(0.2) and child.process.poll() is None:
                if time.monotonic() > deadline:
                    logger.warning(
                        "receiver %d not serving after %.0f s (the node serves without it)",
                        child.number,
                        _START_SECONDS,
                    )
                    break
        self._watcher = threading.Thread(target=self._watch, name="receivers", daemon=True)
        self._watcher.start()
        logger.info(
            "%d receiver process(es) beside the node on the main port (pids %s)",
            self.count,
            ", ".join(map(str, self.pids)) or "none running",
        )

    def stop(self) -> None:
        """Close the children's stdin (they stop), then wait; kill one that does not."""
        with self._lock:
            self._stopping.set()
            children = list(self._children.values())
        for child in children:
            _close(child.process.stdin)
        deadline = time.monotonic() + _STOP_SECONDS
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("receiver %d did not stop; killed", child.number)
                child.process.kill()
                child.process.wait()
            self._reap(child)
        if self._watcher is not None:
            self._watcher.join(5)

    def _spawn(self, number: int) -> None:
        fd = self._socket.fileno()
        level = logging.getLogger("dicom_node").getEffectiveLevel()
        with self._lock:  # never a child started after stop() took the list
            if self._stopping.is_set():
                return
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(fd,),
            )
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(pickle.dumps(_Start(self._settings, fd, level, number)))
                process.stdin.flush()  # kept open: its end is the child's signal to stop
            except OSError:
                pass  # it exited at once: the watcher sees it and says why
            serving = threading.Event()
            log_thread = threading.Thread(
                target=_relay_records,
                args=(process.stdout, number, serving),
                name=f"receiver-{number}-log",
                daemon=True,
            )
            log_thread.start()
            self._children[number] = _Child(number, process, time.monotonic(), log_thread, serving)

    def _reap(self, child: _Child) -> None:
        """After a child exited: pipes closed, last records relayed, partial files gone."""
        _close(child.process.stdin)
        child.log_thread.join(5)
        _close(child.process.stdout)
        self._store.recover(pid=child.process.pid)

    def _watch(self) -> None:
        pause = {number: 1.0 for number in range(1, self.count + 1)}
        while not self._stopping.wait(0.5):
            with self._lock:
                exited = [c for c in self._children.values() if c.process.poll() is not None]
            for child in exited:
                if self._stopping.is_set():
                    return
                ran = time.monotonic() - child.started
                logger.warning(
                    "receiver %d (pid %d) exited with status %s after %.0f s; starting it again",
                    child.number,
                    child.process.pid,
                    child.process.returncode,
                    ran,
                )
                self._reap(child)
                pause[child.number] = (
                    1.0
                    if ran >= _STABLE_SECONDS
                    else min(2 * pause[child.number], _MAX_RESTART_PAUSE)
                )
                if self._stopping.wait(pause[child.number] if ran < _STABLE_SECONDS else 0):
                    return
                self._spawn(child.number)
                self.restarts += 1
                if self._on_restart is not None:
                    self._on_restart()


def _close(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except OSError:
        pass


def _relay_records(stream: IO[bytes], number: int, serving: threading.Event) -> None:
    """Handle a child's pickled log records with the node's loggers, until it closes.

    Each message is prefixed ``receiver N:``, to tell the processes apart. The
    record saying the child serves (sent whatever the level) sets ``serving``.
    """
    header = struct.Struct(">L")
    while True:
        head = stream.read(header.size)
        if len(head) < header.size:
            return
        body = stream.read(header.unpack(head)[0])
        if not body:
            return
        record = logging.makeLogRecord(pickle.loads(body))
        if getattr(record, _SERVING, False):
            serving.set()
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            record.msg, record.args = f"receiver {number}: {record.getMessage()}", None
            target.handle(record)


class _PipeHandler(logging.handlers.SocketHandler):
    """The stdlib's pickled-record protocol, over the child's stdout instead of a socket."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__("", 0)
        self._stream = stream
        self._stream_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.makePickle(record)
            with self._stream_lock:
                self._stream.write(data)
                self._stream.flush()
        except Exception:  # noqa: BLE001 - logging must not take the receiver down
            self.handleError(record)

    def close(self) -> None:
        logging.Handler.close(self)


def _serve(start: _Start, stdin: IO[bytes], pipe: _PipeHandler) -> int:
    from dicom_node.intake.ingest import Ingest
    from dicom_node.net.servers import DicomServers
    from storage.catalog import Catalog
    from storage.instances import InstanceStore

    settings = start.settings
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node's Ctrl-C stops the node, then us

    def _wait_for_eof() -> None:
        while stdin.read(65536):
            pass
        stop.set()

    threading.Thread(target=_wait_for_eof, name="node-watch", daemon=True).start()
    listen_socket = socket.socket(fileno=start.fd)
    store = InstanceStore(
        settings.instances_dir,
        min_free_bytes=settings.storage.min_free_mb * 2**20,
        fsync=settings.storage.fsync,
    )
    catalog = Catalog(settings.catalog_url, create=False)
    servers = DicomServers(
        replace(settings, similarity=replace(settings.similarity, port=-1)),
        Ingest(store, catalog),
        catalog,
        None,
        listen_socket=listen_socket,
        max_associations=share_of(settings.network.max_associations, settings.network.receivers),
    )
    try:
        servers.bind()
        servers.share_main_socket()
        servers.serve()
        serving = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            0,
            "serving the main AE (pid %d)",
            (os.getpid(),),
            None,
        )
        setattr(serving, _SERVING, True)
        pipe.handle(serving)  # whatever the level: the node waits for it
        stop.wait()
    finally:
        servers.stop()
        catalog.close()
    logger.info("stopped (pid %d)", os.getpid())
    return 0


def main() -> int:
    """A receiver process (started by :class:`ReceiverProcesses`, never by hand)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    start: _Start = pickle.load(stdin)
    # Only pickled records go to stdout; anything else printed goes to stderr.
    sys.stdout = sys.stderr
    root = logging.getLogger()
    pipe = _PipeHandler(stdout)
    root.addHandler(pipe)
    root.setLevel(logging.WARNING)
    from dicom_node.cli._logging import configure_logging

    configure_logging(start.level)
    try:
        return _serve(start, stdin, pipe)
    except Exception:
        logger.exception("failed (pid %d)", os.getpid())
        return 1
