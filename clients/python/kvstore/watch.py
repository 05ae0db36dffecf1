"""Watching keys: a stream of changes that moves to another node when its
node fails, resuming from its cursor, in causal order per key."""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Deque, Dict, List, Optional

import grpc

from kvstore._proto import kv_pb2

if TYPE_CHECKING:
    from kvstore.client import Client

#: A watch whose node sent nothing (not even its 10 s heartbeat) for this
#: long is moved to another node.
SILENCE = 30.0


@dataclass(frozen=True)
class Change:
    """A watched key's state at one replica after a change: its live
    values (none for a delete; another replica may hold more siblings, a
    read merges them), the context to write with to supersede it, and
    whether it is a resent current state (`resync`: changes before it may
    have been missed)."""

    key: bytes
    values: List[bytes]
    context: bytes
    resync: bool


def _varint(data: bytes, at: int):
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a cut varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _clock(context: bytes) -> Optional[Dict[int, int]]:
    """The version vector a context encodes (actor -> counter), or None
    for bytes that are not one (such a change is delivered unordered)."""
    try:
        if len(context) < 2 or context[0] != 1 or context[1] != 0:
            return None
        count, at = _varint(context, 2)
        clock, actor = {}, 0
        for _ in range(count):
            delta, at = _varint(context, at)
            counter, at = _varint(context, at)
            actor += delta
            clock[actor] = counter
        return clock if at == len(context) else None
    except ValueError:
        return None


class Watch:
    """The changes of a key or a prefix (`Client.watch`), as an iterator
    (``for change in watch``) or with `next(timeout)`.

    Each acknowledged write of a watched key is delivered at least once, or
    a state that covers it is, in causal order per key: a change that what
    was delivered of its key already covers is skipped, also after moving
    to another node. `cursor` resumes after what was delivered
    (`Client.watch(cursor=...)`, on any node, in another process too).
    A background thread reads the stream; `close()` (or ``with``) ends it.
    """

    def __init__(self, client: "Client", prefix: bytes, exact: bool, cursor: bytes):
        self._client = client
        self._prefix = prefix
        self._exact = exact
        self._received = cursor
        self._cursor = cursor
        self._pending_cursor = cursor
        self._buffer: Deque[Change] = collections.deque()
        self._delivered: Dict[bytes, Dict[int, int]] = {}
        self._replies: "queue.Queue" = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        self._last_reply = time.monotonic()
        self._order = client._order()
        self.serving: Optional[str] = None
        self._subscribe()
        self._thread = threading.Thread(target=self._read, name="kv-watch", daemon=True)
        self._thread.start()

    @property
    def cursor(self) -> bytes:
        """Where to resume after every change this watch gave out."""
        return self._cursor

    def __iter__(self) -> "Watch":
        return self

    def __next__(self) -> Change:
        change = self.next()
        assert change is not None
        return change

    def next(self, timeout: Optional[float] = None) -> Optional[Change]:
        """The next change, waiting at most `timeout` seconds (for ever
        when None); None when none came in time. Raises the error that
        ended the watch (a refused or bad request)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            self._cursor = self._pending_cursor
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                return None
            if isinstance(reply, Exception):
                raise reply
            self._take(reply)
        change = self._buffer.popleft()
        if not self._buffer:
            self._cursor = self._pending_cursor
        return change

    def close(self) -> None:
        """Stops the watch."""
        self._closed.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take(self, reply) -> None:
        """Queues the reply's changes that are news for their keys."""
        for c in reply.changes:
            clock = _clock(bytes(c.context))
            if clock is not None:
                seen = self._delivered.setdefault(bytes(c.key), {})
                if seen and all(seen.get(a, 0) >= n for a, n in clock.items()):
                    continue
                for a, n in clock.items():
                    seen[a] = max(seen.get(a, 0), n)
            self._buffer.append(
                Change(
                    key=bytes(c.key),
                    values=[bytes(v) for v in c.values],
                    context=bytes(c.context),
                    resync=c.resync,
                )
            )
        self._pending_cursor = bytes(reply.cursor)
        if not self._buffer:
            self._cursor = self._pending_cursor

    def _subscribe(self) -> None:
        """Opens the watch on the next node that takes it, from the last
        cursor received; raises the last error when none does."""
        from kvstore.client import Unavailable, _from_rpc, _retryable

        last = None
        for _ in range(len(self._order)):
            i = self._order[0]
            self._order = self._order[1:] + self._order[:1]
            request = kv_pb2.WatchRequest(
                prefix=self._prefix, exact=self._exact, cursor=self._received
            )
            call = self._client._stubs[i].Watch(request, metadata=self._client._metadata)
            timer = threading.Timer(max(self._client._timeout, SILENCE), call.cancel)
            timer.start()
            try:
                first = next(call)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED:
                    # Our timer: the node did not start the watch in time.
                    last = Unavailable(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{self._client._nodes[i]}: the watch did not start in time",
                    )
                    continue
                last = _from_rpc(e)
                if not _retryable(last):
                    raise last from None
                continue
            except StopIteration:
                continue
            finally:
                timer.cancel()
            self._received = bytes(first.cursor)
            if not self._cursor:
                self._cursor = self._pending_cursor = self._received
            with self._lock:
                self._call = call
            self.serving = self._client._nodes[i]
            return
        raise last or Unavailable(grpc.StatusCode.UNAVAILABLE, "no node took the watch")

    def _read(self) -> None:
        """Reads replies into the queue; moves to another node when the
        stream breaks, goes silent or ends, until closed."""
        from kvstore.client import KvError, Unavailable

        watchdog = threading.Thread(target=self._watchdog, name="kv-watch-silence", daemon=True)
        watchdog.start()
        while not self._closed.is_set():
            self._last_reply = time.monotonic()
            try:
                for reply in self._call:
                    self._last_reply = time.monotonic()
                    self._received = bytes(reply.cursor)
                    self._replies.put(reply)
            except grpc.RpcError:
                pass
            while not self._closed.is_set():
                try:
                    self._subscribe()
                    break
                except Unavailable:
                    time.sleep(0.2)
                except KvError as e:
                    self._replies.put(e)
                    return

    def _watchdog(self) -> None:
        """Cancels a stream silent for `SILENCE` seconds (a node paused or
        cut off), which makes the reader move to another node."""
        while not self._closed.wait(1.0):
            if time.monotonic() - self._last_reply > SILENCE:
                self._last_reply = time.monotonic()
                with self._lock:
                    if self._call is not None:
                        self._call.cancel()
