//! The storage-engine conformance suite, on default and on small settings.

mod defaults {
    kv_testkit::engine_conformance!(|| {
        let dir = tempfile::tempdir().unwrap();
        let engine = kv_lsm::LsmEngine::builder(dir.path()).open().unwrap();
        (dir, engine)
    });
}

mod small_tables {
    kv_testkit::engine_conformance!(|| {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::small(dir.path()).open().unwrap();
        (dir, engine)
    });
}
