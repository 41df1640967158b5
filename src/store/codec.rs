//! How a block of channels becomes bytes: postcard, then LZ4 or zstd.
//!
//! A block is a run of channels encoded back to back with postcard (no
//! length prefix for the whole: a reader takes channels off the front until
//! the bytes end), then compressed as one frame. Decoding one channel at a
//! time is what lets the external sort's merge keep one small decoded
//! window per sorted run instead of whole batches.

use std::sync::Arc;

use serde::Serialize;

use crate::{Error, OwnedChannel, Result};

/// The compression of held blocks (`[store] compression`).
#[derive(Clone)]
pub enum BlockCodec {
    /// Plain postcard, no compression (`compress_held = "never"`).
    None,
    /// LZ4 (pure Rust, fastest).
    Lz4,
    /// zstd at `level`, optionally with a dictionary trained from the
    /// user's own playlists (`m3u-plugin-host store train-dictionary`).
    Zstd {
        /// 1 (fast) to 19 (small).
        level: i32,
        /// The raw dictionary bytes, shared by every block.
        dictionary: Option<Arc<Vec<u8>>>,
    },
}

impl std::fmt::Debug for BlockCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl BlockCodec {
    /// Short name for logs and statistics: `none`, `lz4`, `zstd-3`,
    /// `zstd-3+dict`.
    pub fn describe(&self) -> String {
        match self {
            BlockCodec::None => "none".to_string(),
            BlockCodec::Lz4 => "lz4".to_string(),
            BlockCodec::Zstd {
                level,
                dictionary: None,
            } => format!("zstd-{level}"),
            BlockCodec::Zstd {
                level,
                dictionary: Some(_),
            } => format!("zstd-{level}+dict"),
        }
    }

    /// Expected stored size as a percentage of the M3U input, for
    /// [`plan_tier`](super::plan_tier): a margin over what 1M channels
    /// derived from the real playlist measured (LZ4 25%, zstd level 3 17%;
    /// postcard alone 81-85%).
    pub fn expected_ratio_percent(&self) -> u64 {
        match self {
            BlockCodec::None => 90,
            BlockCodec::Lz4 => 35,
            BlockCodec::Zstd { .. } => 20,
        }
    }

    /// Encodes `channels` as one block.
    ///
    /// # Errors
    /// Only if postcard or zstd fail (out of memory in the compressor).
    pub fn encode(&self, channels: &[OwnedChannel]) -> Result<Vec<u8>> {
        self.encode_counted(channels).map(|(block, _)| block)
    }

    /// Encodes `channels` as one block; also says how many bytes their
    /// postcard encoding took before compression.
    ///
    /// # Errors
    /// See [`encode`](Self::encode).
    pub fn encode_counted(&self, channels: &[OwnedChannel]) -> Result<(Vec<u8>, usize)> {
        let mut plain = Vec::with_capacity(channels.len() * 256);
        for channel in channels {
            append_postcard(&mut plain, channel)?;
        }
        let encoded = plain.len();
        Ok((self.compress(plain)?, encoded))
    }

    fn compress(&self, plain: Vec<u8>) -> Result<Vec<u8>> {
        let mut block = match self {
            BlockCodec::None => plain,
            BlockCodec::Lz4 => lz4_flex::compress_prepend_size(&plain),
            BlockCodec::Zstd { level, dictionary } => {
                let mut compressor = match dictionary {
                    Some(dictionary) => zstd::bulk::Compressor::with_dictionary(*level, dictionary),
                    None => zstd::bulk::Compressor::new(*level),
                }
                .map_err(|error| Error::malformed(format!("zstd compressor: {error}")))?;
                // Include the size so the decompressor can allocate exactly.
                compressor
                    .include_contentsize(true)
                    .map_err(|error| Error::malformed(format!("zstd compressor: {error}")))?;
                compressor
                    .compress(&plain)
                    .map_err(|error| Error::malformed(format!("zstd compression: {error}")))?
            }
        };
        block.shrink_to_fit();
        Ok(block)
    }

    /// The postcard bytes of a block (still to be decoded channel by
    /// channel with [`BlockReader`]).
    ///
    /// # Errors
    /// A block that does not decompress (damaged, or written by another
    /// codec).
    pub fn decompress(&self, block: &[u8]) -> Result<Vec<u8>> {
        match self {
            BlockCodec::None => Ok(block.to_vec()),
            BlockCodec::Lz4 => lz4_flex::decompress_size_prepended(block).map_err(|error| {
                Error::malformed(format!("held block does not decompress (lz4): {error}"))
            }),
            BlockCodec::Zstd { dictionary, .. } => {
                let size = zstd::zstd_safe::get_frame_content_size(block)
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        Error::malformed("held block does not decompress (zstd): no content size")
                    })?;
                let mut decompressor = match dictionary {
                    Some(dictionary) => zstd::bulk::Decompressor::with_dictionary(dictionary),
                    None => zstd::bulk::Decompressor::new(),
                }
                .map_err(|error| Error::malformed(format!("zstd decompressor: {error}")))?;
                let capacity = usize::try_from(size).unwrap_or(usize::MAX);
                decompressor.decompress(block, capacity).map_err(|error| {
                    Error::malformed(format!("held block does not decompress (zstd): {error}"))
                })
            }
        }
    }

    /// Every channel of a block.
    ///
    /// # Errors
    /// See [`decompress`](Self::decompress); also a block whose channels do
    /// not decode.
    pub fn decode(&self, block: &[u8]) -> Result<Vec<OwnedChannel>> {
        let mut reader = BlockReader::new(self.decompress(block)?);
        let mut channels = Vec::new();
        while let Some(channel) = reader.next_channel()? {
            channels.push(channel);
        }
        Ok(channels)
    }
}

fn append_postcard(out: &mut Vec<u8>, value: &impl Serialize) -> Result<()> {
    let bytes = postcard::to_extend(value, std::mem::take(out))
        .map_err(|error| Error::malformed(format!("held channel does not encode: {error}")))?;
    *out = bytes;
    Ok(())
}

/// Takes channels off the front of a decompressed block, one at a time.
#[derive(Debug, Default)]
pub struct BlockReader {
    bytes: Vec<u8>,
    position: usize,
}

impl BlockReader {
    /// A reader over the postcard bytes of one block.
    pub fn new(bytes: Vec<u8>) -> Self {
        BlockReader { bytes, position: 0 }
    }

    /// The next channel, `None` at the end of the block.
    ///
    /// # Errors
    /// Bytes that do not decode as a channel.
    pub fn next_channel(&mut self) -> Result<Option<OwnedChannel>> {
        let rest = &self.bytes[self.position..];
        if rest.is_empty() {
            return Ok(None);
        }
        let (channel, left) = postcard::take_from_bytes::<crate::abi::Channel<'_>>(rest)
            .map_err(|error| Error::malformed(format!("held block does not decode: {error}")))?;
        self.position = self.bytes.len() - left.len();
        Ok(Some(channel.into_owned()))
    }
}

/// Trains a zstd dictionary from playlists' channels (encoded as the store
/// encodes them), for `[store] zstd_dictionary`.
///
/// # Errors
/// Too few samples for zstd to train on.
pub fn train_dictionary(channels: &[OwnedChannel], max_size: usize) -> Result<Vec<u8>> {
    // Samples of 64 channels each: about the size of what a block holds
    // per compression window, and many of them.
    let mut samples = Vec::new();
    for chunk in channels.chunks(64) {
        let mut sample = Vec::new();
        for channel in chunk {
            append_postcard(&mut sample, channel)?;
        }
        samples.push(sample);
    }
    zstd::dict::from_samples(&samples, max_size).map_err(|error| {
        Error::config(format!(
            "cannot train a zstd dictionary from {} channels: {error}; give it a larger \
             playlist (a few thousand channels)",
            channels.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::channels;

    fn codecs() -> Vec<BlockCodec> {
        let dictionary = train_dictionary(&channels(1, 4000), 16 << 10).expect("train");
        vec![
            BlockCodec::None,
            BlockCodec::Lz4,
            BlockCodec::Zstd {
                level: 3,
                dictionary: None,
            },
            BlockCodec::Zstd {
                level: 3,
                dictionary: Some(Arc::new(dictionary)),
            },
        ]
    }

    #[test]
    fn every_codec_gives_back_what_it_was_given() {
        let batch = channels(1, 300);
        for codec in codecs() {
            let block = codec.encode(&batch).expect("encode");
            assert_eq!(codec.decode(&block).expect("decode"), batch, "{codec:?}");
            assert!(codec
                .encode(&[])
                .is_ok_and(|b| codec.decode(&b).unwrap().is_empty()));
        }
    }

    #[test]
    fn compression_makes_blocks_smaller_and_a_dictionary_smaller_still() {
        let batch = channels(10_000, 64);
        let sizes: Vec<usize> = codecs()
            .iter()
            .map(|codec| codec.encode(&batch).unwrap().len())
            .collect();
        assert!(sizes[1] < sizes[0] && sizes[2] < sizes[0], "{sizes:?}");
        assert!(sizes[3] < sizes[2], "{sizes:?}");
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        let batch = channels(1, 50);
        for codec in codecs() {
            let mut block = codec.encode(&batch).unwrap();
            block.truncate(block.len() / 2);
            assert!(codec.decode(&block).is_err(), "{codec:?}");
        }
    }
}
