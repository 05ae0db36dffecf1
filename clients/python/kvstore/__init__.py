"""A thin Python client of the kv store (see clients/python/README.md).

    from kvstore import Client
    kv = Client(["127.0.0.1:7001", "127.0.0.1:7002"])   # KV_CERTS_DIR for TLS
    kv.put("user:1", "alice")
    read = kv.get("user:1")
    kv.put("user:1", "bob", context=read.context)        # supersedes alice
"""

from kvstore.client import (
    CONTEXT_METADATA,
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    Client,
    Delete,
    Denied,
    InvalidArgument,
    KeyList,
    KvError,
    Overloaded,
    Put,
    PreconditionFailed,
    SiblingsError,
    Unavailable,
    Versioned,
    Written,
)
from kvstore.watch import Change, Watch

__all__ = [
    "CONTEXT_METADATA",
    "Change",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_OPS",
    "Client",
    "Delete",
    "Denied",
    "InvalidArgument",
    "KeyList",
    "KvError",
    "Overloaded",
    "Put",
    "PreconditionFailed",
    "SiblingsError",
    "Unavailable",
    "Versioned",
    "Watch",
    "Written",
]
