//! The tiers of one holder: which tier it is in, the move down a tier when
//! memory pressure rises, and the log of every move.

use std::path::PathBuf;

use m3u_proxy_plugin_abi::MemoryPressureLevel;
use serde::Serialize;

use super::blocks::{BlockBackend, BlockId, DiskBlocks, MemoryBlocks};
use super::codec::BlockCodec;
use crate::{OwnedChannel, Result};

/// Where a holder keeps what it holds, from most to least memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// As channels (fastest, ~1.6 KB per channel).
    Plain,
    /// As compressed blocks in memory.
    Compressed,
    /// As compressed blocks in a spill file.
    Disk,
    /// As compressed blocks in Redis (`[store.redis]`).
    Redis,
    /// As compressed blocks in an S3-compatible bucket (`[store.s3]`).
    S3,
}

impl Tier {
    /// Lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Plain => "plain",
            Tier::Compressed => "compressed",
            Tier::Disk => "disk",
            Tier::Redis => "redis",
            Tier::S3 => "s3",
        }
    }

    /// True for the tiers that keep blocks out of the process's memory.
    pub const fn is_spilled(self) -> bool {
        matches!(self, Tier::Disk | Tier::Redis | Tier::S3)
    }
}

/// A remote place to spill to. Each holder that spills there gets keys or
/// objects under a name of its own ([`crate::remote::run_id`]).
#[derive(Clone, Debug)]
pub enum RemoteSpill {
    /// Keys in Redis.
    Redis(Box<crate::config::RedisConfig>),
    /// Objects in a bucket.
    S3(Box<crate::config::S3Settings>),
}

impl RemoteSpill {
    /// Its tier.
    pub const fn tier(&self) -> Tier {
        match self {
            RemoteSpill::Redis(_) => Tier::Redis,
            RemoteSpill::S3(_) => Tier::S3,
        }
    }

    /// Opens a backend for `holder`'s blocks.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub fn open(&self, holder: &str) -> Result<Box<dyn BlockBackend>> {
        let run = crate::remote::run_id();
        Ok(match self {
            RemoteSpill::Redis(config) => {
                let redis = crate::remote::Redis::open(config)?;
                Box::new(crate::remote::RedisBlocks::new(
                    redis,
                    &config.namespace,
                    &run,
                    holder,
                    config.block_ttl_seconds,
                ))
            }
            RemoteSpill::S3(settings) => {
                let client = crate::remote::S3Client::new(settings.as_ref().clone())?;
                Box::new(crate::remote::S3Blocks::new(client, &run, holder))
            }
        })
    }
}

/// How a run's holders choose and change tiers (`[store]`).
#[derive(Clone, Debug)]
pub struct StorePolicy {
    /// Compression of blocks.
    pub codec: BlockCodec,
    /// The disk tier's directory; `None`: no disk tier.
    pub spill_directory: Option<PathBuf>,
    /// A remote spill tier (Redis or S3), used instead of the disk.
    pub remote: Option<RemoteSpill>,
    /// Pressure from which held data is compressed.
    pub compress_from: MemoryPressureLevel,
    /// Pressure from which held data goes to disk.
    pub disk_from: MemoryPressureLevel,
    /// Lowest tier a holder may use (`compress_held = "always"` starts at
    /// `Compressed`).
    pub floor: Tier,
}

impl StorePolicy {
    /// The tier that keeps blocks out of memory: the remote one if set,
    /// else the disk if a spill directory is set.
    pub fn spill_tier(&self) -> Option<Tier> {
        match &self.remote {
            Some(remote) => Some(remote.tier()),
            None => self.spill_directory.as_ref().map(|_| Tier::Disk),
        }
    }

    /// The tier this pressure level asks for.
    pub fn tier_for(&self, level: MemoryPressureLevel) -> Tier {
        let spill = self.spill_tier().filter(|_| level >= self.disk_from);
        let wanted = if let Some(spill) = spill {
            spill
        } else if level >= self.compress_from {
            Tier::Compressed
        } else {
            Tier::Plain
        };
        wanted.max(self.floor)
    }
}

/// One move of a holder down a tier, for logs and statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierSwitch {
    /// The holder (`inmemory_numbering`, `sorted_writer`, …).
    pub holder: String,
    /// Tier before.
    pub from: Tier,
    /// Tier after.
    pub to: Tier,
    /// Channels held when it moved.
    pub at_channels: u64,
    /// Why.
    pub reason: String,
}

/// Where a block is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    Memory(BlockId),
    Spilled(BlockId),
}

/// The compressed blocks of one holder, in memory or on disk, and its tier.
pub(crate) struct TieredBlocks {
    pub(crate) holder: &'static str,
    pub(crate) policy: StorePolicy,
    pub(crate) tier: Tier,
    memory: MemoryBlocks,
    spilled: Option<Box<dyn BlockBackend>>,
    pub(crate) switches: Vec<TierSwitch>,
    pub(crate) encoded_bytes: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) peak_memory_bytes: u64,
}

impl TieredBlocks {
    pub(crate) fn new(holder: &'static str, policy: StorePolicy, start: Tier) -> Self {
        let tier = start.max(policy.floor);
        TieredBlocks {
            holder,
            policy,
            tier,
            memory: MemoryBlocks::default(),
            spilled: None,
            switches: Vec::new(),
            encoded_bytes: 0,
            stored_bytes: 0,
            peak_memory_bytes: 0,
        }
    }

    pub(crate) fn codec(&self) -> &BlockCodec {
        &self.policy.codec
    }

    /// Encodes and stores channels in the current tier (which must not be
    /// `Plain`).
    pub(crate) fn put(&mut self, channels: &[OwnedChannel]) -> Result<Place> {
        let (block, encoded) = self.policy.codec.encode_counted(channels)?;
        self.encoded_bytes += encoded as u64;
        self.stored_bytes += block.len() as u64;
        self.put_block(&block)
    }

    fn put_block(&mut self, block: &[u8]) -> Result<Place> {
        if self.tier.is_spilled() {
            let spilled = self.spill_backend()?;
            return Ok(Place::Spilled(spilled.put(block)?));
        }
        let id = self.memory.put(block)?;
        self.peak_memory_bytes = self.peak_memory_bytes.max(self.memory.held_bytes());
        Ok(Place::Memory(id))
    }

    fn spill_backend(&mut self) -> Result<&mut Box<dyn BlockBackend>> {
        if self.spilled.is_none() {
            let backend: Box<dyn BlockBackend> = match &self.policy.remote {
                Some(remote) => remote.open(self.holder)?,
                None => {
                    let directory = self.policy.spill_directory.clone().unwrap_or_default();
                    Box::new(DiskBlocks::create(&directory)?)
                }
            };
            self.spilled = Some(backend);
        }
        Ok(self.spilled.as_mut().expect("created above"))
    }

    /// A block's bytes, taken out of its backend.
    pub(crate) fn take(&mut self, place: Place) -> Result<Vec<u8>> {
        match place {
            Place::Memory(id) => self.memory.take(id),
            Place::Spilled(id) => self.spill_backend()?.take(id),
        }
    }

    /// Moves a memory block to the spill tier (the tier must be one).
    pub(crate) fn demote(&mut self, place: Place) -> Result<Place> {
        match place {
            Place::Memory(id) => {
                let block = self.memory.take(id)?;
                self.put_block(&block)
            }
            Place::Spilled(_) => Ok(place),
        }
    }

    /// The tier to move down to before holding more, and why: the tier the
    /// pressure asks for, or compressed once the plain bytes held pass the
    /// budget. `None`: stay.
    pub(crate) fn wanted_move(
        &self,
        level: MemoryPressureLevel,
        plain_bytes: u64,
        plain_budget: u64,
    ) -> Option<(Tier, String)> {
        let by_pressure = self.policy.tier_for(level);
        if by_pressure > self.tier {
            Some((by_pressure, format!("memory pressure is {}", level.name())))
        } else if self.tier == Tier::Plain && plain_bytes > plain_budget {
            Some((
                Tier::Compressed,
                format!(
                    "{} MiB held plain, over the {} MiB the run can spare",
                    plain_bytes >> 20,
                    plain_budget >> 20
                ),
            ))
        } else {
            None
        }
    }

    /// Records a move to `to` (the caller moves what it holds).
    pub(crate) fn switch(&mut self, to: Tier, at_channels: u64, reason: String) {
        let from = self.tier;
        log::info!(
            "{}: holding {} channels, moving from {} to {} ({reason})",
            self.holder,
            at_channels,
            from.name(),
            to.name()
        );
        self.switches.push(TierSwitch {
            holder: self.holder.to_string(),
            from,
            to,
            at_channels,
            reason,
        });
        self.tier = to;
    }

    /// Where the spill tier is (a directory, a server), for statistics.
    pub(crate) fn spill_location(&self) -> Option<String> {
        self.spilled.as_ref().map(|backend| backend.location())
    }
}
