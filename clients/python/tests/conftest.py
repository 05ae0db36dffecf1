"""The suite runs against a running cluster: the README's example cluster
(`cargo run --release --example cluster`) unless KV_NODES names others.
TLS and the token come from KV_CERTS_DIR, as for kvctl."""

import os
import uuid

import pytest

from kvstore import Client


def nodes():
    return os.environ.get("KV_NODES", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003").split(",")


@pytest.fixture(scope="session")
def addrs():
    return nodes()


@pytest.fixture(scope="session")
def kv(addrs):
    with Client(addrs) as client:
        yield client


@pytest.fixture
def key():
    """A key no earlier run wrote (the cluster keeps its data)."""
    prefix = f"py:{uuid.uuid4().hex}:"
    counter = iter(range(1_000_000))
    return lambda name="k": f"{prefix}{name}:{next(counter)}"
