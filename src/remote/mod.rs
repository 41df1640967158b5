//! Remote backends: a Redis server and an S3-compatible bucket, for the
//! spill store's held blocks ([`RedisBlocks`], [`S3Blocks`]: `cloud_spill`,
//! `[store] spill_to`) and for filter state that several proxy instances
//! share ([`RedisClaims`]: `redis_spill`'s dedup).
//!
//! Every failure is an [`ErrorKind::Store`](crate::ErrorKind::Store) naming
//! the backend, where it is, and what to do; a run that loses its backend
//! stops without writing a truncated playlist. Blocks are written under a
//! run-scoped name and deleted as they are read back and when the holder
//! ends; Redis keys carry a TTL and the bucket takes a lifecycle rule, so a
//! crashed run leaves nothing forever (README, "Several proxy instances").

mod blocks;
mod claims;
mod redis;
mod s3;

pub use blocks::{RedisBlocks, S3Blocks};
pub use claims::{ClaimsBackend, KeyClaims, RedisClaims};
pub use redis::{Redis, RedisAddress, Reply};
pub use s3::S3Client;

use std::hash::{BuildHasher, Hasher};

/// A name for one run's keys and objects: unique across processes and
/// runs (time, process id and a random seed).
pub fn run_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
