//! Where held blocks live: the small interface every backend implements,
//! and the two local ones (memory, a spill file on disk).
//!
//! A remote backend (Redis, S3-compatible object storage) is one more
//! implementation of [`BlockBackend`]: put a block, take it back once, in
//! any order. Blocks are taken back exactly once, so a backend may free
//! each one as it is read.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Error, ErrorKind, Result};

/// A block's handle in its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockId {
    offset: u64,
    len: u64,
}

impl BlockId {
    /// A handle made by a backend: its own number or offset, and the
    /// block's length.
    pub fn new(offset: u64, len: u64) -> Self {
        BlockId { offset, len }
    }

    /// The backend's number or offset of the block.
    pub fn offset(self) -> u64 {
        self.offset
    }

    /// Bytes the block takes in its backend.
    pub fn len(self) -> u64 {
        self.len
    }

    /// True for an empty block.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// The interface of a block store backend.
pub trait BlockBackend: Send {
    /// Short name for statistics and errors (`memory`, `disk`).
    fn name(&self) -> &'static str;
    /// Where the blocks are, for error messages (a directory, an URL).
    fn location(&self) -> String;
    /// Stores one block.
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when the backend cannot take it (disk full).
    fn put(&mut self, block: &[u8]) -> Result<BlockId>;
    /// Gives a block back (each block is taken once).
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when it cannot be read.
    fn take(&mut self, id: BlockId) -> Result<Vec<u8>>;
    /// Bytes currently held.
    fn held_bytes(&self) -> u64;
}

/// Blocks in RAM (the compressed-memory tier).
#[derive(Debug, Default)]
pub struct MemoryBlocks {
    blocks: Vec<Option<Vec<u8>>>,
    held: u64,
}

impl BlockBackend for MemoryBlocks {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> String {
        "memory".to_string()
    }

    fn put(&mut self, block: &[u8]) -> Result<BlockId> {
        let id = BlockId {
            offset: self.blocks.len() as u64,
            len: block.len() as u64,
        };
        self.blocks.push(Some(block.to_vec()));
        self.held += id.len;
        Ok(id)
    }

    fn take(&mut self, id: BlockId) -> Result<Vec<u8>> {
        let block = usize::try_from(id.offset)
            .ok()
            .and_then(|index| self.blocks.get_mut(index))
            .and_then(Option::take)
            .ok_or_else(|| store_error("memory", "memory", "block taken twice or unknown"))?;
        self.held -= id.len;
        Ok(block)
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

/// Blocks appended to one spill file (the disk tier).
///
/// The file is created already unlinked (`O_TMPFILE`, or created and
/// removed at once), so it disappears when the run ends however it ends:
/// finished, failed, interrupted or killed. Nothing is ever left behind in
/// the spill directory.
#[derive(Debug)]
pub struct DiskBlocks {
    directory: PathBuf,
    file: File,
    end: u64,
    held: u64,
}

impl DiskBlocks {
    /// A fresh spill file in `directory`.
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when the directory cannot hold a file.
    pub fn create(directory: &Path) -> Result<DiskBlocks> {
        let file = tempfile::tempfile_in(directory).map_err(|error| {
            store_error(
                "disk",
                &directory.display().to_string(),
                &format!(
                    "cannot create a spill file: {error}; point [store] spill_directory at a \
                     writable directory"
                ),
            )
        })?;
        Ok(DiskBlocks {
            directory: directory.to_path_buf(),
            file,
            end: 0,
            held: 0,
        })
    }
}

impl BlockBackend for DiskBlocks {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn location(&self) -> String {
        self.directory.display().to_string()
    }

    fn put(&mut self, block: &[u8]) -> Result<BlockId> {
        let id = BlockId {
            offset: self.end,
            len: block.len() as u64,
        };
        let written = self
            .file
            .seek(SeekFrom::Start(self.end))
            .and_then(|_| self.file.write_all(block));
        if let Err(error) = written {
            // Give back what this block took of the disk before failing.
            let _ = self.file.set_len(self.end);
            let hint = if error.raw_os_error() == Some(28) {
                "the disk is full: free space there, or point [store] spill_directory at a \
                 larger disk"
            } else {
                "check the disk, or point [store] spill_directory elsewhere"
            };
            return Err(store_error(
                "disk",
                &self.location(),
                &format!(
                    "writing {} bytes at {} MiB of spill failed: {error}; {hint}",
                    block.len(),
                    self.end >> 20
                ),
            ));
        }
        self.end += id.len;
        self.held += id.len;
        Ok(id)
    }

    fn take(&mut self, id: BlockId) -> Result<Vec<u8>> {
        let len = usize::try_from(id.len)
            .map_err(|_| store_error("disk", &self.location(), "block too large"))?;
        let mut block = vec![0; len];
        self.file
            .read_exact_at(&mut block, id.offset)
            .map_err(|error| {
                store_error(
                    "disk",
                    &self.location(),
                    &format!("reading a spilled block back failed: {error}"),
                )
            })?;
        self.held = self.held.saturating_sub(id.len);
        if self.held == 0 {
            // Everything written so far has been read: start the file over.
            let _ = self.file.set_len(0);
            self.end = 0;
        }
        Ok(block)
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

pub(crate) fn store_error(store: &str, location: &str, message: &str) -> Error {
    ErrorKind::Store {
        store: store.to_string(),
        location: location.to_string(),
        message: message.to_string(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(backend: &mut dyn BlockBackend) {
        let a = backend.put(b"first block").unwrap();
        let b = backend.put(&[7; 5000]).unwrap();
        assert_eq!(backend.held_bytes(), 5011);
        assert_eq!(backend.take(b).unwrap(), vec![7; 5000]);
        assert_eq!(backend.take(a).unwrap(), b"first block");
        assert_eq!(backend.held_bytes(), 0);
        let c = backend.put(b"again").unwrap();
        assert_eq!(backend.take(c).unwrap(), b"again");
    }

    #[test]
    fn memory_blocks_come_back_once() {
        let mut memory = MemoryBlocks::default();
        exercise(&mut memory);
        let id = memory.put(b"x").unwrap();
        memory.take(id).unwrap();
        assert!(memory.take(id).is_err());
    }

    #[test]
    fn disk_blocks_come_back_and_leave_no_file() {
        let directory = tempfile::tempdir().unwrap();
        let mut disk = DiskBlocks::create(directory.path()).unwrap();
        exercise(&mut disk);
        disk.put(b"still held").unwrap();
        // The spill file is unlinked from the start.
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unusable_spill_directory_names_the_store() {
        let error = DiskBlocks::create(Path::new("/nonexistent/spill")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("disk") && message.contains("/nonexistent/spill"),
            "{message}"
        );
        assert!(message.contains("spill_directory"), "{message}");
    }
}
