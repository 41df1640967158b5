//! Where channels come from and go to: [`Source`]s, the [`ChannelSink`]s
//! (M3U output, in-memory collection), and the loader that reads sources one
//! after another into batches and numbers channel ids.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use super::Pipeline;
use crate::m3u::{FormattedBatch, M3uReader, M3uWriter, PlaylistHeader};
use crate::{Error, OwnedChannel, Result};

/// One playlist input.
pub struct Source {
    /// Name for logs.
    pub name: String,
    /// Its size in bytes, if known (a file's length): what the planner
    /// estimates a holding strategy's need from.
    pub size_hint: Option<u64>,
    reader: Box<dyn BufRead + Send>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// A file, or standard input for `-`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> Result<Source> {
        if path.as_os_str() == "-" {
            return Ok(Source::from_reader(
                "stdin",
                BufReader::new(std::io::stdin()),
            ));
        }
        let file = std::fs::File::open(path).map_err(|error| Error::io(path, error))?;
        let size = file
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|metadata| metadata.len());
        let mut source = Source::from_reader(
            path.display().to_string(),
            BufReader::with_capacity(256 << 10, file),
        );
        source.size_hint = size;
        Ok(source)
    }

    /// Any reader.
    pub fn from_reader(name: impl Into<String>, reader: impl BufRead + Send + 'static) -> Source {
        Source {
            name: name.into(),
            size_hint: None,
            reader: Box::new(reader),
        }
    }
}

/// Where finished batches go.
pub trait ChannelSink {
    /// Called once, before the first batch, with the merged playlist header.
    ///
    /// # Errors
    /// Output errors.
    fn begin(&mut self, header: &PlaylistHeader) -> Result<()>;
    /// A finished batch, in output order.
    ///
    /// # Errors
    /// Output errors.
    fn write_batch(&mut self, batch: &[OwnedChannel]) -> Result<()>;
    /// True if the sink writes M3U text and takes batches already
    /// formatted ([`ChannelSink::write_formatted`]), so the pipeline's
    /// workers can format them.
    fn takes_formatted(&self) -> bool {
        false
    }
    /// A finished batch, in output order, formatted by
    /// [`FormattedBatch::format`]. Called only if `takes_formatted`.
    ///
    /// # Errors
    /// Output errors.
    fn write_formatted(&mut self, _batch: &FormattedBatch) -> Result<()> {
        Err(Error::config(
            "internal error: this sink takes channels, not formatted text",
        ))
    }
    /// Called once at the end.
    ///
    /// # Errors
    /// Output errors.
    fn finish(&mut self) -> Result<()>;
}

/// Writes M3U to any `Write`.
pub struct M3uSink<W: Write> {
    out: Option<W>,
    writer: Option<M3uWriter<W>>,
}

impl<W: Write> M3uSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        M3uSink {
            out: Some(out),
            writer: None,
        }
    }
}

impl<W: Write> M3uSink<W> {
    fn begun(&mut self) -> Result<&mut M3uWriter<W>> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::config("m3u sink used before begin()"))
    }
}

impl<W: Write> ChannelSink for M3uSink<W> {
    fn begin(&mut self, header: &PlaylistHeader) -> Result<()> {
        if let Some(out) = self.out.take() {
            self.writer = Some(M3uWriter::new(out, header)?);
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &[OwnedChannel]) -> Result<()> {
        let writer = self.begun()?;
        batch
            .iter()
            .try_for_each(|channel| writer.write_channel(channel))
    }

    fn takes_formatted(&self) -> bool {
        true
    }

    fn write_formatted(&mut self, batch: &FormattedBatch) -> Result<()> {
        self.begun()?.write_formatted(batch)
    }

    fn finish(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(writer) => writer.finish().map(drop),
            None => Ok(()),
        }
    }
}

/// Collects channels in memory.
#[derive(Debug, Default)]
pub struct CollectSink {
    /// The header seen.
    pub header: PlaylistHeader,
    /// The channels, in output order.
    pub channels: Vec<OwnedChannel>,
}

impl ChannelSink for CollectSink {
    fn begin(&mut self, header: &PlaylistHeader) -> Result<()> {
        self.header = header.clone();
        Ok(())
    }

    fn write_batch(&mut self, batch: &[OwnedChannel]) -> Result<()> {
        self.channels.extend_from_slice(batch);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Pipeline {
    /// Opens the sources named in the config as they are, without the
    /// last-good checks ([`crate::inputs::Inputs::open`] has them).
    ///
    /// # Errors
    /// A source that cannot be opened, or none configured.
    pub fn configured_sources(&self) -> Result<Vec<Source>> {
        crate::inputs::Inputs::from_config(&self.config)?
            .specs()
            .iter()
            .map(crate::inputs::SourceSpec::open_unchecked)
            .collect()
    }
}

/// Reads the sources one after another, in batches, assigning ids.
pub(super) struct Loader {
    readers: std::vec::IntoIter<(u32, M3uReader<Box<dyn BufRead + Send>>)>,
    current: Option<(u32, M3uReader<Box<dyn BufRead + Send>>)>,
    pub(super) header: PlaylistHeader,
    pub(super) malformed: u64,
}

impl Loader {
    pub(super) fn new(sources: Vec<Source>) -> Loader {
        let readers: Vec<_> = sources
            .into_iter()
            .enumerate()
            .map(|(index, source)| (index as u32, M3uReader::new(source.reader, index as u32)))
            .collect();
        Loader {
            readers: readers.into_iter(),
            current: None,
            header: PlaylistHeader::default(),
            malformed: 0,
        }
    }

    pub(super) fn next_batch(
        &mut self,
        size: usize,
        next_id: &mut u64,
    ) -> Result<Option<Vec<OwnedChannel>>> {
        let mut batch = Vec::with_capacity(size.min(4096));
        while batch.len() < size {
            if self.current.is_none() {
                self.current = self.readers.next();
            }
            let Some((_, reader)) = &mut self.current else {
                break;
            };
            let next = reader.next();
            // A reader knows its header once it has read its first line.
            merge_header(&mut self.header, reader.header());
            match next {
                Some(channel) => {
                    let mut channel = channel?;
                    channel.id = *next_id;
                    *next_id += 1;
                    batch.push(channel);
                }
                None => {
                    self.malformed += reader.malformed();
                    self.current = None;
                }
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

fn merge_header(into: &mut PlaylistHeader, from: &PlaylistHeader) {
    for (name, value) in &from.attributes {
        if !into
            .attributes
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            into.attributes.push((name.clone(), value.clone()));
        }
    }
}
