//! Every decoder of the on-disk formats: random and mutated bytes give
//! errors, never panics.

use kv_lsm::decode;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn log_batch_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode::decode_log_batch(&bytes);
    }

    #[test]
    fn log_segment_scanner_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), number in 0u64..4) {
        let _ = decode::scan_log_segment(&bytes, number);
    }

    #[test]
    fn manifest_edit_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode::decode_manifest_edit(&bytes);
    }

    #[test]
    fn table_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::decode_table(&bytes);
    }
}

/// A real table, damaged byte by byte and cut at every length.
#[test]
fn damaged_real_tables_never_panic() {
    use kv_core::StorageEngine;
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = kv_lsm::LsmEngine::builder(dir.path())
            .block_bytes(256)
            .open()
            .unwrap();
        for i in 0..200u32 {
            engine
                .put(format!("key{i:04}").as_bytes(), &i.to_le_bytes())
                .unwrap();
        }
        engine.delete(b"key0007").unwrap();
        engine.flush().unwrap();
    }
    let table = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .unwrap();
    let bytes = std::fs::read(table).unwrap();
    // 200 keys; the tombstone of key0007 replaced its value at flush.
    assert_eq!(decode::decode_table(&bytes), Ok(200));
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        // A checksum catches the flip almost everywhere; nothing panics.
        let _ = decode::decode_table(&damaged);
        let _ = decode::decode_table(&bytes[..at]);
    }
}
