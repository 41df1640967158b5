//! Running a plugin natively in its crate's unit tests.
//!
//! [`TestHost`] does what the host does, without Wasm: it hands the config
//! table over at init, asks for the plugin info (and the fields read) after
//! it, starts runs, writes each batch as ABI 2 columns into the arena, calls
//! the same dispatcher the exports call, and applies the answer with the
//! host's own rules ([`crate::abi::apply`]). Host functions have native
//! fallbacks: log lines are kept ([`TestHost::logs`]).
//!
//! ```ignore
//! let mut host = TestHost::<MyFilter>::new(&[("key", "tvg_id")]).unwrap();
//! let mut batch = vec![Channel { tvg_id: "a".into(), ..Channel::default() }];
//! host.run(Stage::Filtering, &mut batch).unwrap();
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::marker::PhantomData;
use std::sync::{Mutex, MutexGuard};

use m3u_proxy_plugin_abi::{
    apply, encode_stage_input, status, AnswerLimits, Channel, ConfigEntry, FieldSet, InputHeader,
    MemoryPressureLevel, PluginConfig, PluginInfo, RunContext, Stage, StageOutput,
};

use crate::arena::{with_whole_arena_mut, DATA_BYTES};
use crate::{dispatcher, LogLevel, Plugin};

/// The SDK keeps one plugin instance and one arena per process: tests that
/// use them take turns.
static TURN: Mutex<()> = Mutex::new(());
static LOGS: Mutex<Vec<(LogLevel, String)>> = Mutex::new(Vec::new());
static OUTPUT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn record_log(level: LogLevel, message: &str) {
    lock(&LOGS).push((level, message.to_string()));
}

/// The claimed keys of the current test run (`claim_keys`' native
/// fallback); emptied by [`TestHost::start_run`].
static CLAIMED: Mutex<Option<std::collections::HashSet<Vec<u8>>>> = Mutex::new(None);

pub(crate) fn claim_key(key: &[u8]) -> bool {
    lock(&CLAIMED)
        .get_or_insert_with(Default::default)
        .insert(key.to_vec())
}

pub(crate) fn record_output(bytes: &[u8]) {
    lock(&OUTPUT).extend_from_slice(bytes);
}

/// A failed call: the status code and the plugin's last error line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// The export's status code (or 0 for an answer the host refuses).
    pub status: i32,
    /// What went wrong.
    pub message: String,
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "status {}: {}", self.status, self.message)
    }
}

/// One plugin, run natively as the host would run it.
pub struct TestHost<P: Plugin> {
    _turn: MutexGuard<'static, ()>,
    info: PluginInfo<'static>,
    batch_index: u32,
    next_id: u64,
    plugin: PhantomData<P>,
}

impl<P: Plugin> TestHost<P> {
    /// A fresh instance of `P`, initialised with `config` (its
    /// `[plugins.<name>]` table as text values), started on a run at
    /// optimal pressure.
    ///
    /// # Errors
    /// `init` failed (the status and the plugin's last error line).
    pub fn new(config: &[(&str, &str)]) -> Result<Self, CallError> {
        let turn = lock(&TURN);
        dispatcher::reset();
        lock(&LOGS).clear();
        let mut entries: Vec<ConfigEntry<'_>> = config
            .iter()
            .map(|(key, value)| ConfigEntry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let table = postcard::to_allocvec(&PluginConfig { entries }).expect("encodes");
        write_arena(&table);
        let code = dispatcher::init::<P>(table.len() as i32);
        let mut host = TestHost {
            _turn: turn,
            info: PluginInfo::default(),
            batch_index: 0,
            next_id: 1 << 40,
            plugin: PhantomData,
        };
        host.check(code)?;
        let len = dispatcher::plugin_info::<P>("plugin", "0.0.0");
        host.check(len.min(0))?;
        let bytes = read_arena(0, len as usize);
        let info: PluginInfo<'_> =
            postcard::from_bytes(&bytes).map_err(|error| host.error(0, &error.to_string()))?;
        host.info = PluginInfo {
            name: info.name.into_owned().into(),
            version: info.version.into_owned().into(),
            description: info.description.into_owned().into(),
            author: info.author.into_owned().into(),
            ..info
        };
        host.start_run(MemoryPressureLevel::Optimal, "")?;
        Ok(host)
    }

    /// What the plugin said about itself after `init`.
    pub fn info(&self) -> &PluginInfo<'static> {
        &self.info
    }

    /// The fields the plugin is sent at `stage`.
    pub fn reads(&self, stage: Stage) -> FieldSet {
        self.info.reads_at(stage)
    }

    /// Starts a new run (what the host does before each pipeline run);
    /// returns whether the plugin accepts `level`. Batch indices restart.
    ///
    /// # Errors
    /// The run context could not be handed over.
    pub fn start_run(
        &mut self,
        level: MemoryPressureLevel,
        base_url: &str,
    ) -> Result<bool, CallError> {
        let context = RunContext {
            memory_pressure: level,
            available_memory: 0,
            proxy_name: "test".into(),
            base_url: base_url.into(),
        };
        let bytes = postcard::to_allocvec(&context).expect("encodes");
        write_arena(&bytes);
        self.batch_index = 0;
        *lock(&CLAIMED) = None;
        Ok(dispatcher::check_memory_pressure::<P>(level.as_u32() as i32, bytes.len() as i32) == 1)
    }

    /// Runs `stage` on `channels` and applies the answer in place, as the
    /// host does (the next batch index each call). On error the batch is
    /// unchanged.
    ///
    /// # Errors
    /// An error status, an answer that does not decode, or one the host
    /// would refuse.
    pub fn run(
        &mut self,
        stage: Stage,
        channels: &mut Vec<Channel<'static>>,
    ) -> Result<(), CallError> {
        let reads = self.reads(stage);
        let header = InputHeader {
            batch_index: self.batch_index,
            memory_pressure: MemoryPressureLevel::Optimal,
            fields: reads,
        };
        self.batch_index += 1;
        let len = with_whole_arena_mut(|arena| {
            encode_stage_input(&mut arena[..DATA_BYTES / 2], header, channels)
        })
        .expect("arena free")
        .map_err(|_| self.error(0, "the batch does not fit half the arena"))?;
        lock(&OUTPUT).clear();
        let code = dispatcher::execute_stage::<P>(stage.as_u32() as i32, len as i32);
        self.check(code.min(0))?;
        let bytes = if code > 0 {
            read_arena(len, code as usize)
        } else {
            core::mem::take(&mut *lock(&OUTPUT))
        };
        let answer: StageOutput<'_> = postcard::from_bytes(&bytes)
            .map_err(|error| self.error(0, &alloc::format!("answer does not decode: {error}")))?;
        apply(
            stage,
            reads,
            answer,
            channels,
            &mut self.next_id,
            &AnswerLimits::default(),
        )
        .map_err(|error| self.error(0, &error.0))
    }

    /// Every line the plugin logged since [`TestHost::new`].
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        lock(&LOGS).clone()
    }

    fn check(&self, code: i32) -> Result<(), CallError> {
        if code == status::OK {
            return Ok(());
        }
        let last = lock(&LOGS)
            .iter()
            .rev()
            .find(|(level, _)| *level == LogLevel::Error)
            .map(|(_, line)| line.clone())
            .unwrap_or_default();
        Err(self.error(code, &last))
    }

    fn error(&self, status: i32, message: &str) -> CallError {
        CallError {
            status,
            message: message.to_string(),
        }
    }
}

fn write_arena(bytes: &[u8]) {
    with_whole_arena_mut(|arena| arena[..bytes.len()].copy_from_slice(bytes)).expect("arena free");
}

fn read_arena(start: usize, len: usize) -> Vec<u8> {
    with_whole_arena_mut(|arena| arena[start..start + len].to_vec()).expect("arena free")
}
