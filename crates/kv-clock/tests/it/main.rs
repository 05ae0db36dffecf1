//! Integration tests of kv-clock: algebraic laws, scenarios, encoding.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod codec;
mod expiry;
mod laws;
mod retries;
mod scenarios;
