//! Writes a table.

use std::path::{Path, PathBuf};

use kv_core::codec::put_varint;

use super::block::BlockBuilder;
use super::bloom::BloomBuilder;
use super::{FOOTER_LEN, TABLE_MAGIC, TABLE_VERSION, TableMeta};
use crate::error::{Error, Result};
use crate::fs::WritableFile;

/// Buffered bytes written out in one go (and the step of a paced write).
pub(crate) const WRITE_CHUNK: usize = 1 << 20;

/// Writes entries, given in version order, into a new table file.
#[derive(Debug)]
pub(crate) struct TableBuilder {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    number: u64,
    block_bytes: usize,
    buf: Vec<u8>,
    offset: u64,
    block: BlockBuilder,
    block_last_seq: u64,
    index: BlockBuilder,
    bloom: BloomBuilder,
    entries: u64,
    smallest: Option<(Vec<u8>, u64)>,
    last: (Vec<u8>, u64),
}

impl TableBuilder {
    pub(crate) fn new(
        file: Box<dyn WritableFile>,
        path: &Path,
        number: u64,
        block_bytes: usize,
        bloom_bits_per_key: u32,
    ) -> Self {
        TableBuilder {
            file,
            path: path.to_path_buf(),
            number,
            block_bytes,
            buf: Vec::with_capacity(WRITE_CHUNK + block_bytes * 2),
            offset: 0,
            block: BlockBuilder::default(),
            block_last_seq: 0,
            index: BlockBuilder::default(),
            bloom: BloomBuilder::new(bloom_bits_per_key),
            entries: 0,
            smallest: None,
            last: (Vec::new(), 0),
        }
    }

    /// Adds a version; calls must come in version order.
    pub(crate) fn add(&mut self, key: &[u8], seq: u64, value: Option<&[u8]>) -> Result<()> {
        if self.smallest.is_none() {
            self.smallest = Some((key.to_vec(), seq));
            self.bloom.add(key);
        } else if self.last.0 != key {
            self.bloom.add(key);
        }
        self.block.add(key, seq, value);
        self.block_last_seq = seq;
        self.last.0.clear();
        self.last.0.extend_from_slice(key);
        self.last.1 = seq;
        self.entries += 1;
        if self.block.estimated_size() >= self.block_bytes {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Bytes written or buffered so far.
    pub(crate) fn estimated_size(&self) -> u64 {
        self.offset + (self.buf.len() + self.block.estimated_size()) as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The table's file number.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Bytes written to the file so far (buffered ones not counted): they
    /// grow a chunk at a time.
    pub(crate) fn written(&self) -> u64 {
        self.offset
    }

    /// Hands the bytes written from `from` on to the disk and waits for
    /// them (see [`WritableFile::write_back`]).
    pub(crate) fn write_back(&mut self, from: u64) -> Result<()> {
        let len = self.offset.saturating_sub(from);
        self.file
            .write_back(from, len)
            .map_err(|e| Error::io("write back table", &self.path, e))
    }

    /// Appends a block with its checksum; returns (offset, length).
    fn emit(&mut self, block: impl FnOnce(&mut Vec<u8>)) -> Result<(u64, u64)> {
        let start = self.buf.len();
        block(&mut self.buf);
        let len = self.buf.len() - start;
        let crc = crc32c::crc32c(&self.buf[start..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        let offset = self.offset + start as u64;
        if self.buf.len() >= WRITE_CHUNK {
            self.write_out()?;
        }
        Ok((offset, len as u64))
    }

    fn write_out(&mut self) -> Result<()> {
        self.file
            .write_all(&self.buf)
            .map_err(|e| Error::io("write table", &self.path, e))?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn finish_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let last_key = self.block.last_key().to_vec();
        let last_seq = self.block_last_seq;
        let mut block = std::mem::take(&mut self.block);
        let (offset, len) = self.emit(|out| block.finish_into(out))?;
        self.block = block;
        let mut handle = Vec::with_capacity(16);
        put_varint(&mut handle, offset);
        put_varint(&mut handle, len);
        self.index.add(&last_key, last_seq, Some(&handle));
        Ok(())
    }

    /// Writes the filter, index, properties and footer, makes the file
    /// durable and returns its description.
    pub(crate) fn finish(mut self) -> Result<TableMeta> {
        self.finish_block()?;
        let bloom = std::mem::replace(&mut self.bloom, BloomBuilder::new(0));
        let filter = self.emit(|out| bloom.finish_into(out))?;
        let mut index = std::mem::take(&mut self.index);
        let index_handle = self.emit(|out| index.finish_into(out))?;
        let smallest = self.smallest.clone().unwrap_or_default();
        let largest = self.last.clone();
        let entries = self.entries;
        let props = self.emit(|out| {
            put_varint(out, entries);
            put_varint(out, smallest.0.len() as u64);
            out.extend_from_slice(&smallest.0);
            put_varint(out, smallest.1);
            put_varint(out, largest.0.len() as u64);
            out.extend_from_slice(&largest.0);
            put_varint(out, largest.1);
        })?;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        for v in [
            filter.0,
            filter.1,
            index_handle.0,
            index_handle.1,
            props.0,
            props.1,
        ] {
            footer.extend_from_slice(&v.to_le_bytes());
        }
        footer.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&crc.to_le_bytes());
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        debug_assert_eq!(footer.len(), FOOTER_LEN);
        self.buf.extend_from_slice(&footer);
        self.write_out()?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync table", &self.path, e))?;
        Ok(TableMeta {
            number: self.number,
            size: self.offset,
            entries,
            smallest,
            largest,
        })
    }
}
