//! The change feed's cursor decoder (clients send cursors back) on
//! arbitrary bytes: never panics, and whatever it accepts re-encodes to
//! bytes that decode to the same cursor.
#![no_main]

use kv_core::FeedCursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cursor) = FeedCursor::from_bytes(data) {
        let again = FeedCursor::from_bytes(&cursor.to_bytes()).expect("re-encoding decodes");
        assert_eq!(again, cursor);
    }
});
