//! The memory-pressure sections of the configuration: `[memory]` (the
//! thresholds), `[store]` (tiers, compression, spill directory) and
//! [`LevelName`], a pressure level by name.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::abi::MemoryPressureLevel;
use crate::memory::MemoryThresholds;
use crate::{Error, Result};

/// Memory-pressure thresholds (fractions of the limit in use).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// From this fraction on: Moderate.
    #[serde(default = "t_moderate")]
    pub moderate: f64,
    /// From this fraction on: High.
    #[serde(default = "t_high")]
    pub high: f64,
    /// From this fraction on: Critical.
    #[serde(default = "t_critical")]
    pub critical: f64,
    /// From this fraction on: Emergency.
    #[serde(default = "t_emergency")]
    pub emergency: f64,
    /// Pretend this level (for testing); the CLI's `--memory-pressure` wins.
    #[serde(default)]
    pub force_level: Option<LevelName>,
}

fn t_moderate() -> f64 {
    MemoryThresholds::default().moderate
}
fn t_high() -> f64 {
    MemoryThresholds::default().high
}
fn t_critical() -> f64 {
    MemoryThresholds::default().critical
}
fn t_emergency() -> f64 {
    MemoryThresholds::default().emergency
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            moderate: t_moderate(),
            high: t_high(),
            critical: t_critical(),
            emergency: t_emergency(),
            force_level: None,
        }
    }
}

impl MemoryConfig {
    /// The thresholds as the memory monitor takes them.
    pub fn thresholds(&self) -> MemoryThresholds {
        MemoryThresholds {
            moderate: self.moderate,
            high: self.high,
            critical: self.critical,
            emergency: self.emergency,
        }
    }
}

/// `[store]`: where and how a run holds what it must keep across batches
/// (see [`crate::store`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the disk tier's spill files (default: the system's
    /// temporary directory). Spill files are unlinked as soon as they are
    /// created, so nothing is left there after a run.
    #[serde(default)]
    pub spill_directory: Option<PathBuf>,
    /// `false`: no disk tier (what does not fit in memory compressed is not
    /// held at all: the holding strategy is skipped).
    #[serde(default = "default_true")]
    pub spill_to_disk: bool,
    /// Block compression: `lz4` (default, fastest) or `zstd`.
    #[serde(default)]
    pub compression: CompressionName,
    /// zstd level, 1 (fast) to 19 (small); default 3.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// A zstd dictionary trained from your own playlists
    /// (`m3u-plugin-host store train-dictionary`); zstd only.
    #[serde(default)]
    pub zstd_dictionary: Option<PathBuf>,
    /// Pressure from which held data is compressed (default `high`).
    #[serde(default = "default_compress_from")]
    pub compress_from: LevelName,
    /// Pressure from which held data goes to disk (default `critical`).
    #[serde(default = "default_disk_from")]
    pub disk_from: LevelName,
    /// Where held blocks go once they leave memory: `disk` (default),
    /// `redis` (`[store.redis]`) or `s3` (`[store.s3]`).
    #[serde(default)]
    pub spill_to: super::SpillTo,
    /// A Redis server: `spill_to = "redis"` and the `redis_spill` strategy.
    #[serde(default)]
    pub redis: Option<super::RedisConfig>,
    /// An S3-compatible bucket: `spill_to = "s3"` and the `cloud_spill`
    /// strategy.
    #[serde(default)]
    pub s3: Option<super::S3Config>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            spill_directory: None,
            spill_to_disk: true,
            compression: CompressionName::default(),
            zstd_level: default_zstd_level(),
            zstd_dictionary: None,
            compress_from: default_compress_from(),
            disk_from: default_disk_from(),
            spill_to: super::SpillTo::Disk,
            redis: None,
            s3: None,
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}
fn default_zstd_level() -> i32 {
    3
}
fn default_compress_from() -> LevelName {
    LevelName(MemoryPressureLevel::High)
}
fn default_disk_from() -> LevelName {
    LevelName(MemoryPressureLevel::Critical)
}

/// `[store] compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionName {
    /// LZ4 (pure Rust).
    #[default]
    Lz4,
    /// zstd.
    Zstd,
}

impl StoreConfig {
    /// The spill directory the disk tier uses, `None` if disabled.
    pub fn spill_directory(&self) -> Option<PathBuf> {
        self.spill_to_disk.then(|| {
            self.spill_directory
                .clone()
                .unwrap_or_else(std::env::temp_dir)
        })
    }

    /// The block codec: `compression`, with the dictionary file read.
    /// `zstd` is forced by a stage's `zstd_compression` strategy.
    ///
    /// # Errors
    /// A dictionary file that cannot be read.
    pub fn codec(
        &self,
        force_zstd: bool,
        never_compress: bool,
    ) -> Result<crate::store::BlockCodec> {
        use crate::store::BlockCodec;
        if never_compress && !force_zstd {
            return Ok(BlockCodec::None);
        }
        if self.compression == CompressionName::Lz4 && !force_zstd {
            return Ok(BlockCodec::Lz4);
        }
        let dictionary = match &self.zstd_dictionary {
            Some(path) => Some(std::sync::Arc::new(std::fs::read(path).map_err(
                |error| {
                    Error::config_key(
                        "store.zstd_dictionary",
                        format!(
                            "cannot read {}: {error}; train one with `m3u-plugin-host store \
                         train-dictionary`",
                            path.display()
                        ),
                    )
                },
            )?)),
            None => None,
        };
        Ok(BlockCodec::Zstd {
            level: self.zstd_level,
            dictionary,
        })
    }
}

/// A memory-pressure level by name (`optimal` … `emergency`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelName(pub MemoryPressureLevel);

impl<'de> Deserialize<'de> for LevelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_level(&text)
            .map(LevelName)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `optimal`, `moderate`, `high`, `critical` or `emergency`.
///
/// # Errors
/// Any other text, with the list of levels.
pub fn parse_level(text: &str) -> std::result::Result<MemoryPressureLevel, String> {
    MemoryPressureLevel::ALL
        .into_iter()
        .find(|level| level.name().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            format!(
                "unknown memory pressure level `{text}`; known: optimal, moderate, high, \
                 critical, emergency"
            )
        })
}
