//! Integration tests of kv-ring.
#![allow(missing_docs)]
