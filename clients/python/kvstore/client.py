"""The client: one object per cluster, safe to share between threads."""

from __future__ import annotations

import itertools
import math
import os
import pathlib
import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Union

import grpc

from kvstore._proto import kv_pb2, kv_pb2_grpc

#: The status metadata that carries the key's current context when a
#: conditional write is refused (a unary call's FAILED_PRECONDITION).
CONTEXT_METADATA = "kv-context-bin"
#: The most operations one Batch call takes (the node refuses more).
MAX_BATCH_OPS = 1024
#: The most bytes of keys, values and contexts one Batch call takes.
MAX_BATCH_BYTES = 32 << 20
#: The DNS name every node certificate carries.
NODE_NAME = "kv-node"

Key = Union[bytes, str]
Value = Union[bytes, str]


def _bytes(b: Union[bytes, str]) -> bytes:
    return b.encode() if isinstance(b, str) else bytes(b)


class KvError(Exception):
    """A request failed; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(KvError):
    """The request itself is wrong (an empty or too long key, a context
    that does not decode); sending it again cannot help."""


class PreconditionFailed(KvError):
    """A conditional write was refused: the key is not as the condition
    said. `context` is the key's current context (read it, decide again,
    and write with it)."""

    def __init__(self, code: grpc.StatusCode, message: str, context: bytes):
        super().__init__(code, message)
        self.context = context


class Unavailable(KvError):
    """No node could take the request (down, cut off, or short of a
    quorum), or it timed out: a write's outcome is then unknown."""


class Overloaded(KvError):
    """The node sheds load; back off and retry."""


class Denied(KvError):
    """The credentials are missing, unknown, or lack the role."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAUTHENTICATED: Denied,
    grpc.StatusCode.PERMISSION_DENIED: Denied,
}


def _error(code: grpc.StatusCode, message: str, context: bytes = b"") -> KvError:
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return PreconditionFailed(code, message, context)
    return _BY_CODE.get(code, KvError)(code, message)


def _from_rpc(e: grpc.RpcError) -> KvError:
    context = b""
    for k, v in e.trailing_metadata() or ():
        if k == CONTEXT_METADATA:
            context = bytes(v)
    return _error(e.code(), e.details() or "", context)


def _retryable(e: KvError) -> bool:
    return isinstance(e, Unavailable)


class SiblingsError(Exception):
    """`Versioned.value` was asked of a key with concurrent versions."""


@dataclass(frozen=True)
class Versioned:
    """What a read found: the live sibling values (none when the key is
    absent or deleted, several after concurrent writes) and the context to
    send with the next write of the key."""

    values: List[bytes]
    context: bytes

    @property
    def value(self) -> Optional[bytes]:
        """The one value, or None when the key has none. Raises
        SiblingsError when there are several: resolve them (`Client.get`
        with a resolver) or read `values`."""
        if len(self.values) > 1:
            raise SiblingsError(
                f"{len(self.values)} concurrent values; pass a resolver to get() "
                "or read .values"
            )
        return self.values[0] if self.values else None


@dataclass(frozen=True)
class Written:
    """What a write made: the new version's dot (`actor`, `counter`), the
    context to supersede it with, and the write's id."""

    context: bytes
    actor: int
    counter: int
    write_id: int


@dataclass(frozen=True)
class KeyList:
    """A page of a key listing: the keys, ascending, and the key to
    continue after (`None` when the listing reached the end)."""

    keys: List[bytes]
    next: Optional[bytes]


@dataclass(frozen=True)
class Put:
    """A write in a batch (`context` from a read; empty for a blind
    write), with a time to live or a condition as `put`, `put_if_absent`
    (`if_none_match`) and `put_if_unchanged` (`if_not_modified`) have
    them; a refused item gives PreconditionFailed in its place."""

    key: Key
    value: Value
    context: bytes = b""
    ttl: Optional[float] = None
    if_none_match: bool = False
    if_not_modified: bool = False


@dataclass(frozen=True)
class Delete:
    """A delete in a batch: supersedes what `context` covers."""

    key: Key
    context: bytes
    if_not_modified: bool = False


def _request(item: Union[Put, Delete], write_id: int, *, retry: bool = False, w: int = 0):
    """The PutRequest or DeleteRequest that carries `item`, single or in a
    batch."""
    if not isinstance(item, (Put, Delete)):
        raise TypeError(f"a write is a Put or a Delete, not {type(item).__name__}")
    common = dict(
        key=_bytes(item.key),
        context=item.context,
        w=w,
        write_id=write_id,
        retry=retry,
        if_not_modified=item.if_not_modified,
    )
    if isinstance(item, Delete):
        return kv_pb2.DeleteRequest(**common)
    return kv_pb2.PutRequest(
        value=_bytes(item.value),
        if_none_match=item.if_none_match,
        ttl_secs=_ttl_secs(item.ttl),
        **common,
    )


def _versioned(reply) -> Versioned:
    return Versioned(values=list(reply.values), context=bytes(reply.context))


def _written(reply, write_id: int) -> Written:
    return Written(
        context=bytes(reply.context),
        actor=reply.dot_actor,
        counter=reply.dot_counter,
        write_id=write_id,
    )


def _ttl_secs(ttl: Optional[float]) -> int:
    """A time to live in whole seconds (rounded up); 0 for none."""
    if ttl is None:
        return 0
    secs = math.ceil(ttl)
    if not 0 < secs < 2**32:
        raise ValueError(f"a time to live must be 1 s to {2**32 - 1} s, not {ttl!r}")
    return secs


def _write_id() -> int:
    """A random nonzero write id: every attempt of one write carries it,
    so a write sent again after a lost answer is stored once."""
    while True:
        n = secrets.randbits(64)
        if n:
            return n


class Client:
    """A client of the nodes at `nodes` (``host:port``).

    TLS and the token come from `certs_dir` (``ca.pem``; ``admin.token``
    unless `token` is given), or from the ``KV_CERTS_DIR`` and
    ``KV_TOKEN`` variables as kvctl reads them; with neither the client
    speaks plain gRPC. Each request waits `timeout` seconds for a node.
    A request that finds a node down or too slow goes to the next one, at
    most `attempts` nodes in all; a write carries one id on every attempt,
    so it is stored once however many nodes took it. Conditional writes
    are sent once (a second attempt could be refused by its own first).
    """

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        certs_dir: Optional[Union[str, os.PathLike]] = None,
        token: Optional[str] = None,
        timeout: float = 2.0,
        attempts: int = 3,
    ):
        if isinstance(nodes, str):
            nodes = [nodes]
        nodes = [n.strip() for n in nodes if n.strip()]
        if not nodes:
            raise ValueError("no node address given")
        if certs_dir is None:
            certs_dir = os.environ.get("KV_CERTS_DIR") or None
        if token is None:
            token = os.environ.get("KV_TOKEN") or None
        credentials = None
        if certs_dir is not None:
            certs = pathlib.Path(certs_dir)
            ca = (certs / "ca.pem").read_bytes()
            if token is None and (certs / "admin.token").exists():
                token = (certs / "admin.token").read_text().strip()
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._attempts = max(1, min(attempts, len(nodes)))
        self._nodes = nodes
        self._stubs = []
        self._channels = []
        for addr in nodes:
            if credentials is not None:
                channel = grpc.secure_channel(
                    addr, credentials, options=[("grpc.ssl_target_name_override", NODE_NAME)]
                )
            else:
                channel = grpc.insecure_channel(addr)
            self._channels.append(channel)
            self._stubs.append(kv_pb2_grpc.KvStub(channel))
        self._next = itertools.count()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes every connection."""
        for c in self._channels:
            c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _order(self) -> List[int]:
        with self._lock:
            start = next(self._next)
        n = len(self._stubs)
        return [(start + i) % n for i in range(n)]

    def _call(self, method: str, make: Callable[[bool], object], attempts: Optional[int] = None):
        """Sends `make(retry)` to nodes in turn until one answers or
        `attempts` have failed with a retryable error."""
        attempts = self._attempts if attempts is None else attempts
        last: Optional[KvError] = None
        for n, i in enumerate(self._order()[:attempts]):
            try:
                return getattr(self._stubs[i], method)(
                    make(n > 0), timeout=self._timeout, metadata=self._metadata
                )
            except grpc.RpcError as e:
                last = _from_rpc(e)
                if not _retryable(last):
                    raise last from None
        assert last is not None
        raise last

    # -- single keys ------------------------------------------------------

    def get(
        self,
        key: Key,
        resolver: Optional[Callable[[List[bytes]], Value]] = None,
        *,
        r: int = 0,
    ) -> Versioned:
        """Reads `key` (at read quorum `r`; 0 is the cluster's R).

        With `resolver`, concurrent values are merged: `resolver(values)`
        gives the value to keep, which is written back with the read's
        context (superseding every sibling), and the result holds it
        alone with the new context."""
        read = _versioned(
            self._call("Get", lambda _retry: kv_pb2.GetRequest(key=_bytes(key), r=r))
        )
        if resolver is None or len(read.values) < 2:
            return read
        merged = _bytes(resolver(list(read.values)))
        written = self.put(key, merged, context=read.context)
        return Versioned(values=[merged], context=written.context)

    def put(
        self,
        key: Key,
        value: Value,
        context: bytes = b"",
        *,
        w: int = 0,
        ttl: Optional[float] = None,
    ) -> Written:
        """Writes `value`, superseding what `context` (from a read)
        covers; without a context an existing value stays as a sibling.
        With `ttl` (seconds, rounded up), the value lapses that long from
        now on every replica and is collected like a tombstone."""
        return self._write(Put(key, value, context, ttl=ttl), w)

    def delete(self, key: Key, context: bytes, *, w: int = 0) -> Written:
        """Deletes what `context` (from a read) covers: a tombstone
        version, replicated like a write."""
        return self._write(Delete(key, context), w)

    def put_if_absent(self, key: Key, value: Value, *, w: int = 0) -> Written:
        """Creates `key`: stored only if a read at the cluster's R finds no
        live value; otherwise raises PreconditionFailed with the current
        context. Not a lock: see docs/api.md, "Conditional writes"."""
        return self._write(Put(key, value, if_none_match=True), w)

    def put_if_unchanged(self, key: Key, value: Value, context: bytes, *, w: int = 0) -> Written:
        """Writes only if nothing was written to `key` since the read
        `context` came from; otherwise raises PreconditionFailed with the
        current context."""
        return self._write(Put(key, value, context, if_not_modified=True), w)

    def delete_if_unchanged(self, key: Key, context: bytes, *, w: int = 0) -> Written:
        """Deletes only if nothing was written since the read `context`
        came from; otherwise raises PreconditionFailed."""
        return self._write(Delete(key, context, if_not_modified=True), w)

    def _write(self, item: Union["Put", "Delete"], w: int) -> Written:
        """One write under a fresh write id for all its attempts; a
        conditional one is sent once (a second attempt could be refused
        by its own first)."""
        write_id = _write_id()
        conditional = item.if_not_modified or getattr(item, "if_none_match", False)
        reply = self._call(
            "Put" if isinstance(item, Put) else "Delete",
            lambda retry: _request(item, write_id, retry=retry, w=w),
            attempts=1 if conditional else None,
        )
        return _written(reply, write_id)

    # -- listing ------------------------------------------------------------

    def list(
        self,
        prefix: Key = b"",
        after: Optional[Key] = None,
        limit: int = 0,
        end: Optional[Key] = None,
    ) -> "KeyList":
        """Lists the keys that start with `prefix`, after `after` and
        before `end` (when given), in key order: at most `limit` (every
        one when 0). The node streams pages
        and asks every node for each (docs/api.md, "Key listing"); when a
        node fails mid-way the listing resumes after the last page on the
        next node. Returns the keys and `next`, the key to continue after
        (None once the listing reached the end)."""
        keys: List[bytes] = []
        cursor = _bytes(after) if after is not None else b""
        last: Optional[KvError] = None
        for i in self._order()[: max(self._attempts, 2)]:
            request = kv_pb2.ListRequest(
                prefix=_bytes(prefix),
                after=cursor,
                limit=0 if limit == 0 else limit - len(keys),
                end=_bytes(end) if end is not None else b"",
            )
            try:
                for page in self._stubs[i].List(
                    request, timeout=max(self._timeout, 10.0) * 30, metadata=self._metadata
                ):
                    keys.extend(page.keys)
                    if not page.more:
                        return KeyList(keys=keys, next=None)
                    cursor = bytes(page.cursor)
                    if limit and len(keys) >= limit:
                        return KeyList(keys=keys, next=cursor)
                return KeyList(keys=keys, next=cursor or None)
            except grpc.RpcError as e:
                last = _from_rpc(e)
                if not _retryable(last):
                    raise last from None
        assert last is not None
        raise last

    # -- watching -----------------------------------------------------------

    def watch(
        self,
        prefix: Key = b"",
        *,
        key: Optional[Key] = None,
        cursor: bytes = b"",
    ) -> "Watch":
        """Watches the keys that start with `prefix` (or only `key`) from
        now on, or after what an earlier watch delivered (its `cursor`).
        Returns once a node has asked every node where its log ends: a
        write acknowledged after that is delivered. See `Watch`."""
        from kvstore.watch import Watch

        if key is not None:
            return Watch(self, _bytes(key), True, bytes(cursor))
        return Watch(self, _bytes(prefix), False, bytes(cursor))

    # -- batches ------------------------------------------------------------

    def get_many(self, keys: Iterable[Key]) -> List[Union[Versioned, KvError]]:
        """Reads many keys: one result per key, in order; a key that fails
        gives its error in its place and fails nothing else. Sent as Batch
        calls of at most MAX_BATCH_OPS keys."""
        ops = [kv_pb2.PipelinedOp(get=kv_pb2.GetRequest(key=_bytes(k))) for k in keys]
        return self._batch(ops, [0] * len(ops))

    def write_many(self, writes: Iterable[Union[Put, Delete]]) -> List[Union[Written, KvError]]:
        """Writes and deletes many keys: one result per item, in order;
        each item is its own write (not a transaction) with its own id, so
        a batch sent again after a lost answer stores each item once."""
        ops, ids = [], []
        for item in writes:
            write_id = _write_id()
            ids.append(write_id)
            request = _request(item, write_id)
            if isinstance(item, Put):
                ops.append(kv_pb2.PipelinedOp(put=request))
            else:
                ops.append(kv_pb2.PipelinedOp(delete=request))
        return self._batch(ops, ids)

    def _batch(self, ops, ids):
        results = []
        for chunk in _chunks(ops):

            def make(retry, chunk=chunk):
                if retry:
                    for op in chunk:
                        which = op.WhichOneof("op")
                        if which in ("put", "delete"):
                            getattr(op, which).retry = True
                return kv_pb2.BatchOpsRequest(ops=chunk)

            reply = self._call("Batch", make)
            if len(reply.results) != len(chunk):
                raise KvError(
                    grpc.StatusCode.INTERNAL,
                    f"the node answered {len(reply.results)} results for {len(chunk)} operations",
                )
            results.extend(reply.results)
        out = []
        for result, write_id in zip(results, ids):
            which = result.WhichOneof("result")
            if which == "get":
                out.append(_versioned(result.get))
            elif which == "put":
                out.append(_written(result.put, write_id))
            elif which == "error":
                code = _CODES.get(result.error.code, grpc.StatusCode.UNKNOWN)
                out.append(_error(code, result.error.message, bytes(result.error.context)))
            else:
                out.append(KvError(grpc.StatusCode.INTERNAL, "the node gave an empty result"))
        return out


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _size(op) -> int:
    which = op.WhichOneof("op")
    inner = getattr(op, which)
    return len(inner.key) + len(getattr(inner, "value", b"")) + len(getattr(inner, "context", b""))


def _chunks(ops):
    """Splits operations into Batch calls within the node's limits."""
    chunk, size = [], 0
    for op in ops:
        s = _size(op)
        if chunk and (len(chunk) == MAX_BATCH_OPS or size + s > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += s
    if chunk:
        yield chunk
