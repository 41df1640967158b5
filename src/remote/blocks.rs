//! Held blocks in Redis (one key per block, with a TTL) and in an
//! S3-compatible bucket (one object per block under a run-scoped prefix).

use std::collections::BTreeSet;

use super::redis::{Redis, Reply};
use super::s3::S3Client;
use crate::store::{BlockBackend, BlockId};
use crate::Result;

/// Blocks as Redis keys `<namespace>:held:<run>:<holder>:<n>`, each with
/// the TTL `block_ttl_seconds`; taken back with `GETDEL`, the rest deleted
/// when the holder ends.
pub struct RedisBlocks {
    redis: Redis,
    prefix: String,
    ttl: String,
    next: u64,
    outstanding: BTreeSet<u64>,
    held: u64,
}

impl RedisBlocks {
    /// Blocks of `holder` in this run, on `redis`.
    pub fn new(redis: Redis, namespace: &str, run: &str, holder: &str, ttl_seconds: u64) -> Self {
        RedisBlocks {
            redis,
            prefix: format!("{namespace}:held:{run}:{holder}:"),
            ttl: ttl_seconds.max(1).to_string(),
            next: 0,
            outstanding: BTreeSet::new(),
            held: 0,
        }
    }

    fn key(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }
}

impl BlockBackend for RedisBlocks {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> String {
        self.redis.shown().to_string()
    }

    fn put(&mut self, block: &[u8]) -> Result<BlockId> {
        let n = self.next;
        let key = self.key(n);
        let reply =
            self.redis
                .command(&[b"SET", key.as_bytes(), block, b"EX", self.ttl.as_bytes()])?;
        match reply {
            Reply::Simple(ok) if ok == "OK" => {}
            Reply::Error(error) => {
                return Err(self.redis.error(&format!(
                    "storing a {} byte block failed: {error}; give Redis more memory \
                     (maxmemory) or spill elsewhere ([store] spill_to)",
                    block.len()
                )))
            }
            other => return Err(self.redis.error(&format!("SET answered {other:?}"))),
        }
        self.next += 1;
        self.outstanding.insert(n);
        self.held += block.len() as u64;
        Ok(BlockId::new(n, block.len() as u64))
    }

    fn take(&mut self, id: BlockId) -> Result<Vec<u8>> {
        let key = self.key(id.offset());
        match self.redis.command(&[b"GETDEL", key.as_bytes()])? {
            Reply::Bulk(Some(block)) => {
                self.outstanding.remove(&id.offset());
                self.held = self.held.saturating_sub(id.len());
                Ok(block)
            }
            Reply::Bulk(None) => Err(self.redis.error(&format!(
                "held block {key} is gone (expired, evicted or deleted): raise [store.redis] \
                 block_ttl_seconds, and keep Redis from evicting keys (maxmemory-policy \
                 noeviction)"
            ))),
            Reply::Error(error) => Err(self.redis.error(&format!(
                "reading a held block failed: {error} (GETDEL needs Redis 6.2 or later)"
            ))),
            other => Err(self.redis.error(&format!("GETDEL answered {other:?}"))),
        }
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

impl Drop for RedisBlocks {
    fn drop(&mut self) {
        let keys: Vec<String> = self.outstanding.iter().map(|&n| self.key(n)).collect();
        for chunk in keys.chunks(512) {
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(chunk.iter().map(|key| key.as_bytes()));
            // Best effort: the TTL removes what a lost connection leaves.
            if self.redis.command(&args).is_err() {
                log::warn!(
                    "redis {}: could not delete {} held blocks; they expire by their TTL",
                    self.redis.shown(),
                    keys.len()
                );
                break;
            }
        }
    }
}

/// Blocks as objects `<prefix>/<run>/<holder>-<n>` in the bucket; each is
/// deleted as it is read back, the rest when the holder ends.
pub struct S3Blocks {
    client: S3Client,
    prefix: String,
    next: u64,
    outstanding: BTreeSet<u64>,
    held: u64,
}

impl S3Blocks {
    /// Blocks of `holder` in this run.
    pub fn new(client: S3Client, run: &str, holder: &str) -> Self {
        let prefix = format!("{}/{run}/{holder}-", client.settings().prefix);
        S3Blocks {
            client,
            prefix,
            next: 0,
            outstanding: BTreeSet::new(),
            held: 0,
        }
    }

    fn key(&self, n: u64) -> String {
        format!("{}{n:08}", self.prefix)
    }
}

impl BlockBackend for S3Blocks {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn location(&self) -> String {
        self.client.shown()
    }

    fn put(&mut self, block: &[u8]) -> Result<BlockId> {
        let n = self.next;
        self.client.put(&self.key(n), block)?;
        self.next += 1;
        self.outstanding.insert(n);
        self.held += block.len() as u64;
        Ok(BlockId::new(n, block.len() as u64))
    }

    fn take(&mut self, id: BlockId) -> Result<Vec<u8>> {
        let key = self.key(id.offset());
        let block = self.client.get(&key)?;
        self.outstanding.remove(&id.offset());
        self.held = self.held.saturating_sub(id.len());
        if let Err(error) = self.client.delete(&key) {
            log::warn!("{error}; the bucket's lifecycle rule removes it later");
        }
        Ok(block)
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

impl Drop for S3Blocks {
    fn drop(&mut self) {
        let keys: Vec<String> = self.outstanding.iter().map(|&n| self.key(n)).collect();
        for key in keys {
            if let Err(error) = self.client.delete(&key) {
                log::warn!(
                    "{error}; {} held objects may remain under {}: the bucket's lifecycle rule \
                     removes them",
                    self.outstanding.len(),
                    self.prefix
                );
                break;
            }
        }
    }
}
