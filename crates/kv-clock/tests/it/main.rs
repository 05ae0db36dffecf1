//! Integration tests of kv-clock: algebraic laws, scenarios, encoding.
#![allow(missing_docs)]

mod codec;
mod laws;
mod scenarios;
