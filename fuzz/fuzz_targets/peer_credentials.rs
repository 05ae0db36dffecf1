//! What a stranger controls before the gate decides: the peer certificate
//! (bytes rustls hands over) and the token table an operator edits. Either
//! parses or is refused, never a panic.
#![no_main]

use kv_server::security::TokenTable;
use kv_server::security::certs::identity_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = identity_of(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(table) = TokenTable::from_toml(text)
    {
        // A table that parses answers any token without panicking.
        let _ = table.check(text);
    }
});
