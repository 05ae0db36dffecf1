"""The Python client against real nodes: every call through gRPC."""

import os
import time

import pytest

from kvstore import (
    MAX_BATCH_OPS,
    Client,
    Delete,
    Denied,
    InvalidArgument,
    PreconditionFailed,
    Put,
    SiblingsError,
    Versioned,
    Written,
)
from kvstore._proto import kv_pb2


def test_a_write_is_read_back_through_every_node(kv, addrs, key):
    k = key()
    written = kv.put(k, b"alice")
    assert isinstance(written, Written) and written.counter > 0 and written.write_id != 0
    for addr in addrs:
        with Client([addr]) as one:
            read = one.get(k)
            assert read.values == [b"alice"]
            assert read.value == b"alice"
            assert read.context


def test_an_absent_key_reads_as_no_value(kv, key):
    read = kv.get(key())
    assert read.values == [] and read.value is None


def test_blind_writes_are_siblings_and_a_resolver_merges_them(kv, key):
    k = key()
    kv.put(k, b"alice")
    kv.put(k, b"bob")  # no context: concurrent with alice
    read = kv.get(k)
    assert sorted(read.values) == [b"alice", b"bob"]
    with pytest.raises(SiblingsError):
        _ = read.value
    seen = []

    def resolve(values):
        seen.append(sorted(values))
        return b"+".join(sorted(values))

    merged = kv.get(k, resolve)
    assert seen == [[b"alice", b"bob"]]
    assert merged.values == [b"alice+bob"]
    # The merge was written back, superseding both.
    assert kv.get(k).values == [b"alice+bob"]
    # A later write with the merged context supersedes it in turn.
    kv.put(k, b"carol", context=merged.context)
    assert kv.get(k).values == [b"carol"]


def test_a_delete_with_the_read_context_removes_the_key(kv, key):
    k = key()
    kv.put(k, b"x")
    read = kv.get(k)
    kv.delete(k, read.context)
    assert kv.get(k).values == []
    # A blind write after the delete is the only value.
    kv.put(k, b"y")
    assert kv.get(k).values == [b"y"]


def test_bad_input_is_refused_with_invalid_argument(kv):
    with pytest.raises(InvalidArgument):
        kv.put(b"", b"x")
    with pytest.raises(InvalidArgument):
        kv.put(b"k", b"x", context=b"\xff\xff not a context")


def test_an_attempt_sent_again_is_stored_once(kv, addrs, key):
    # What the client does when an answer is lost: the same write id on
    # another node, marked as a retry.
    k = key().encode()
    request = kv_pb2.PutRequest(key=k, value=b"once", write_id=0x5EED_0001_2345_6789)
    kv._stubs[0].Put(request, metadata=kv._metadata, timeout=5)
    request.retry = True
    kv._stubs[len(addrs) - 1].Put(request, metadata=kv._metadata, timeout=5)
    # The retry found the first copy (and answered with its dot), or, when
    # it reached a replica the first copy had not reached yet, stored a
    # second copy that becomes one version with it wherever they meet:
    # every node reads the value once, never as two siblings.
    for addr in addrs:
        with Client([addr]) as one:
            assert one.get(k).values == [b"once"]


def test_batches_answer_each_item_in_order_and_fail_only_what_fails(kv, key):
    keys = [key("batch") for _ in range(MAX_BATCH_OPS + 10)]  # two Batch calls
    writes = [Put(k, f"v{i}") for i, k in enumerate(keys)]
    writes[7] = Put(b"", b"bad")  # an empty key fails alone
    results = kv.write_many(writes)
    assert len(results) == len(writes)
    assert isinstance(results[7], InvalidArgument)
    assert all(isinstance(r, Written) for i, r in enumerate(results) if i != 7)
    reads = kv.get_many(keys)
    assert len(reads) == len(keys)
    for i, r in enumerate(reads):
        assert isinstance(r, Versioned)
        assert r.values == ([] if i == 7 else [f"v{i}".encode()])
    # Deletes and overwrites with the contexts just read.
    results = kv.write_many(
        [Delete(keys[0], reads[0].context), Put(keys[1], b"new", reads[1].context)]
    )
    assert all(isinstance(r, Written) for r in results)
    after = kv.get_many(keys[:2])
    assert [r.values for r in after] == [[], [b"new"]]
    with pytest.raises(TypeError):
        kv.write_many(["not a write"])


def test_conditional_writes_hold_or_are_refused_with_the_current_context(kv, key):
    k = key()
    created = kv.put_if_absent(k, b"first")
    with pytest.raises(PreconditionFailed) as refused:
        kv.put_if_absent(k, b"second")
    current = kv.get(k)
    assert current.values == [b"first"]
    assert refused.value.context == current.context
    # A stale context is refused; the one from the refusal works.
    kv.put(k, b"other", context=created.context)
    with pytest.raises(PreconditionFailed) as stale:
        kv.put_if_unchanged(k, b"lost update", created.context)
    assert kv.get(k).values == [b"other"]
    kv.put_if_unchanged(k, b"checked", stale.value.context)
    assert kv.get(k).values == [b"checked"]
    # Delete likewise; then create works again.
    with pytest.raises(PreconditionFailed):
        kv.delete_if_unchanged(k, created.context)
    kv.delete_if_unchanged(k, kv.get(k).context)
    assert kv.get(k).values == []
    kv.put_if_absent(k, b"again")
    assert kv.get(k).values == [b"again"]
    # In a batch, each item's condition holds or fails alone.
    fresh = key("fresh")
    current = kv.get(k)
    results = kv.write_many(
        [
            Put(fresh, b"1", if_none_match=True),
            Put(k, b"2", if_none_match=True),
            Put(k, b"3", created.context, if_not_modified=True),
            Delete(k, created.context, if_not_modified=True),
        ]
    )
    assert isinstance(results[0], Written)
    for refused in results[1:]:
        assert isinstance(refused, PreconditionFailed)
        assert refused.context == current.context
    assert kv.get(fresh).values == [b"1"] and kv.get(k).values == [b"again"]


def test_keys_are_listed_by_prefix_in_pages_that_resume(kv, key):
    prefix = key("list") + "/"
    names = [f"{prefix}{i:03}" for i in range(120)]
    assert all(isinstance(r, Written) for r in kv.write_many([Put(n, "x") for n in names]))
    kv.delete(names[5], kv.get(names[5]).context)
    expected = [n.encode() for n in names if n != names[5]]
    listed = kv.list(prefix)
    assert listed.keys == expected and listed.next is None
    page = kv.list(prefix, limit=50)
    assert page.keys == expected[:50] and page.next == expected[49]
    rest = kv.list(prefix, after=page.next)
    assert rest.keys == expected[50:] and rest.next is None
    assert kv.list(prefix + "nothing-here").keys == []
    # A range: after one key, before another.
    assert kv.list(after=expected[10], end=expected[20]).keys == expected[11:20]


def test_a_value_with_a_time_to_live_lapses_on_every_replica(kv, addrs, key):
    k, in_batch = key("ttl"), key("ttl-batch")
    kv.put(k, b"forever")
    kv.put(k, b"brief", ttl=1)  # no context: a sibling of the other
    assert isinstance(kv.write_many([Put(in_batch, b"brief", ttl=1)])[0], Written)
    assert sorted(kv.get(k).values) == [b"brief", b"forever"]
    assert kv.get(in_batch).values == [b"brief"]
    # The node stamped the version with its clock plus a second: the value
    # lapses within a few seconds (clock steps are whole seconds).
    deadline = time.monotonic() + 10
    while b"brief" in kv.get(k).values or kv.get(in_batch).values:
        assert time.monotonic() < deadline, "the value did not lapse"
        time.sleep(0.2)
    for addr in addrs:
        with Client([addr]) as one:
            assert one.get(k).values == [b"forever"]
            assert one.get(in_batch).values == []
    assert kv.list(in_batch).keys == []
    with pytest.raises(ValueError):
        kv.put(k, b"x", ttl=0)


def test_a_stranger_without_the_token_is_refused(addrs):
    certs = os.environ.get("KV_CERTS_DIR")
    if not certs:
        pytest.skip("the cluster runs without TLS and tokens (no KV_CERTS_DIR)")
    with Client(addrs, certs_dir=certs, token="not-a-token") as stranger:
        with pytest.raises(Denied):
            stranger.get("anything")


def test_a_client_needs_an_address():
    with pytest.raises(ValueError):
        Client([])


def _changes_until(watch, want, timeout=30.0):
    """Changes from `watch` until `want(changes)` holds; fails after
    `timeout` seconds."""
    got = []
    deadline = time.monotonic() + timeout
    while not want(got):
        left = deadline - time.monotonic()
        assert left > 0, f"the watch gave only {got}"
        change = watch.next(timeout=left)
        if change is not None:
            got.append(change)
    return got


def test_a_watch_delivers_changes_in_order_and_resumes_from_its_cursor(kv, addrs, key):
    prefix = key("watch") + "/"
    with kv.watch(prefix) as watch:
        assert watch.serving in addrs and watch.cursor
        first = kv.put(prefix + "a", b"1")
        kv.put(prefix + "b", b"2")
        kv.put(prefix + "a", b"3", context=first.context)
        kv.delete(prefix + "b", kv.get(prefix + "b").context)
        kv.put(key("elsewhere"), b"x")
        got = _changes_until(
            watch,
            lambda got: any(c.values == [b"3"] for c in got)
            and any(c.key.endswith(b"/b") and c.values == [] for c in got),
        )
        assert all(c.key.startswith(prefix.encode()) and not c.resync for c in got)
        # Per key, never backwards: "1" (if delivered) before "3", and
        # nothing of a after "3"; b's write before its delete.
        a = [c.values for c in got if c.key.endswith(b"/a")]
        assert a[-1] == [b"3"] and a.count([b"3"]) == 1 and [b"3"] not in a[:-1]
        b = [c.values for c in got if c.key.endswith(b"/b")]
        assert b[-1] == [] and b.count([]) == 1
        cursor = watch.cursor
    kv.put(prefix + "c", b"4")
    # Resumed (through any node) after what was delivered.
    with Client(list(reversed(addrs))) as other, other.watch(prefix, cursor=cursor) as again:
        got = _changes_until(again, lambda got: any(c.values == [b"4"] for c in got))
        assert all(c.values in ([b"1"], [b"2"], [b"3"], [], [b"4"]) for c in got)
    # One key only.
    with kv.watch(key=prefix + "a") as one:
        kv.put(prefix + "ab", b"5")
        kv.put(prefix + "a", b"6", context=kv.get(prefix + "a").context)
        got = _changes_until(one, lambda got: any(c.values == [b"6"] for c in got))
        assert all(c.key == (prefix + "a").encode() for c in got)
    with pytest.raises(InvalidArgument):
        kv.watch(prefix, cursor=b"not a cursor")
