"""Writer leases: one writer at a time per dataset URI, on local disk and object storage.

A lease is a small JSON object (`URI/_lease.json`) naming its holder (host, process, a
token) and when it expires. It is taken with an exclusive create (S3: a conditional PUT,
`If-None-Match: *`; local disk: `O_EXCL`), renewed by a heartbeat thread, and taken over
when stale: expired, or held by a process of this host that no longer runs (a SIGKILLed
writer's lease is taken at once by its re-run). A takeover is itself conditional (S3:
`If-Match` on the stale lease's ETag; local: an atomic rename of the stale file), so two
writers that find the same stale lease cannot both win. A writer whose lease was taken
over learns it at its next heartbeat and must stop (`lost`).
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any

from adamllm_core.storage import filesystem, join, protocol_of, redact

LEASE_NAME = "_lease.json"


class LeaseHeldError(RuntimeError):
    """Another writer holds the lease on this output."""


class WriterLease:
    def __init__(self, uri: str, *, ttl_s: float = 120.0, wait_s: float = 0.0):
        self.uri = uri
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self._fs, root = filesystem(uri)
        self._path = join(root, LEASE_NAME)
        self._local = protocol_of(uri) == "file"
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.lost = False
        self._held = False
        self._stop = threading.Event()
        self._written_at = 0.0  # monotonic time of this writer's last successful write of it

    # -- taking it --

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._create():
                return self._start()
            current, etag = self._read()
            if current is not None and self._stale(current) and self._take_over(etag):
                return self._start()
            if current is not None and time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"{redact(self.uri)} is being written by {current.get('host')} pid"
                    f" {current.get('pid')} (its lease expires in"
                    f" {max(0.0, current.get('expires_at', 0) - time.time()):.0f} s unless"
                    " renewed): wait for that run to finish, or stop it"
                )
            time.sleep(0.05 if current is None else min(1.0, self.ttl_s / 4))

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {**self.holder, "renewed_at": now, "expires_at": now + self.ttl_s}
        ).encode()

    def _create(self) -> bool:
        if self._local:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            try:
                descriptor = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(self._body())
            self._written_at = time.monotonic()
            return True
        try:
            self._fs.pipe_file(self._path, self._body(), mode="create")
        except FileExistsError:
            return False
        self._written_at = time.monotonic()
        return True

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            data = self._fs.cat_file(self._path)
            etag = None if self._local else self._fs.info(self._path).get("ETag")
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), etag
        except json.JSONDecodeError:  # a torn local write: treat as expired
            return {"expires_at": 0}, etag

    def _stale(self, current: dict[str, Any]) -> bool:
        if current.get("expires_at", 0) < time.time():
            return True
        if current.get("host") != self.holder["host"]:
            return False
        pid = current.get("pid")
        if pid == os.getpid():
            return True  # an earlier writer of this process that did not finish
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, TypeError, ValueError):
            return False
        return False

    def _take_over(self, etag: str | None) -> bool:
        if self._local:
            tombstone = f"{self._path}.stale-{self.holder['token']}"
            try:
                os.rename(self._path, tombstone)  # only one taker's rename finds it
            except FileNotFoundError:
                return False
            os.unlink(tombstone)
            return self._create()
        try:
            self._fs.pipe_file(self._path, self._body(), IfMatch=etag)
        except (OSError, FileNotFoundError):
            return False  # someone renewed or took it first
        self._written_at = time.monotonic()
        return True

    def holder_now(self) -> dict[str, Any] | None:
        """Who holds the lease now (None when nobody, or the holder's lease is stale)."""
        current, _ = self._read()
        if current is None:
            return None
        if current.get("pid") == os.getpid() and current.get("host") == self.holder["host"]:
            return current  # a writer in this very process (stale only to a new writer here)
        return None if self._stale(current) else current

    # -- keeping it --

    def _start(self) -> None:
        self._held = True
        self._stop.clear()
        lease = weakref.ref(self)
        interval = self.ttl_s / 3
        stop = self._stop

        def beat() -> None:
            while not stop.wait(interval):
                held = lease()
                if held is None:
                    return
                try:
                    renewed = held._renew()
                except Exception:  # noqa: BLE001 (storage unreachable: try at the next beat;
                    # past the TTL another run may take over, and check() then says so)
                    renewed = True
                del held
                if not renewed:
                    return

        threading.Thread(target=beat, daemon=True, name=f"lease {self.uri}").start()

    def _renew(self) -> bool:
        current, etag = self._read()
        if current is None or current.get("token") != self.holder["token"]:
            self.lost = True
            return False
        try:
            if self._local:
                staging = f"{self._path}.renew-{self.holder['token']}"
                with open(staging, "wb") as handle:
                    handle.write(self._body())
                os.replace(staging, self._path)
            else:
                self._fs.pipe_file(self._path, self._body(), IfMatch=etag)
        except OSError:
            self.lost = True
            return False
        self._written_at = time.monotonic()
        return True

    def check(self) -> None:
        """Raise when this writer no longer holds the lease (taken over while stale); take
        it when it was never taken."""
        if not self._held and not self.lost:
            self.acquire()
        current, _ = self._read()  # one small read per shard: a paused writer finds out too
        if current is None or current.get("token") != self.holder["token"]:
            self.lost = True
        if self.lost:
            raise LeaseHeldError(
                f"{redact(self.uri)}: this writer's lease was taken over by another run"
                " (it was stale); stopping without writing more"
            )

    # -- giving it back --

    def release(self) -> None:
        self._stop.set()
        if not self._held:
            return
        self._held = False
        if time.monotonic() - self._written_at > self.ttl_s * 0.75:
            # Not renewed for most of its TTL (storage was unreachable): another run may
            # have taken it over between a read and a delete; left to expire instead.
            return
        current, _ = self._read()
        if current is not None and current.get("token") == self.holder["token"]:
            try:
                self._fs.rm(self._path)
            except FileNotFoundError:
                pass

    def give_back(self, timeout_s: float = 10.0) -> None:
        """release() for a failing run: never raises, and waits for storage at most
        `timeout_s` (a run failing because storage is unreachable reports that at once);
        a lease not given back stops being renewed and expires."""
        self._stop.set()

        def attempt() -> None:
            with contextlib.suppress(Exception):
                self.release()

        worker = threading.Thread(target=attempt, daemon=True, name=f"release {self.uri}")
        worker.start()
        worker.join(timeout_s)

    def __del__(self) -> None:
        # A dropped writer's lease stops being renewed and expires (or a re-run in this
        # process takes it over). No storage call here: the cyclic collector runs __del__ in
        # whatever thread allocates, which may hold a lock the call needs (seen: an
        # in-process S3 server's request thread, stalled for minutes). Stages give their
        # leases back explicitly on failure (ShardedExecutor.give_back_leases).
        if (stop := getattr(self, "_stop", None)) is not None:  # __init__ may have failed
            stop.set()
