//! docs/ABI.md stays honest: its minimal plugin (§10, the one ```wat block of
//! the document) is assembled from the document as it stands, loaded by the
//! host runtime and run, through `PluginSlot::run` and through a whole
//! `Pipeline`; and what §2 says about the memory type is checked against the
//! runtime. Edit the block and these tests check the edit; remove it and
//! they fail.

use m3u_plugin_host::abi::{
    encode_stage_input, status, FieldSet, InputHeader, MemoryPressureLevel, Stage, StageContext,
};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, Source};
use m3u_plugin_host::runtime::PluginSettings;
use m3u_plugin_host::{Error, ErrorKind, OwnedChannel};

use super::common::{default_runtime, repo_path, wat_str};
use super::pipeline::scratch_dir;

/// The document, relative to the crate root.
const DOC: &str = "docs/ABI.md";

/// The name §10's plugin gives itself in its `PluginInfo`.
const NAME: &str = "wat_keep_all";

/// The `reads = NONE` input of §7 (golden test
/// `stage_input_reads_none_golden_bytes`): channels 1 and 300, 31 bytes.
#[rustfmt::skip]
const READS_NONE_INPUT: [u8; 31] = [
    0, 0, 0,                                            // batch 0, Optimal, fields NONE
    2,                                                  // count 2
    16, 1, 0, 0, 0, 0, 0, 0, 0, 0x2c, 0x01, 0, 0, 0, 0, 0, 0, // ids 1, 300 (u64 LE)
    8, 0, 0, 0, 0, 1, 0, 0, 0,                          // source_ids 0, 1 (u32 LE)
    0,                                                  // no column
];

/// The body of the one ```wat fenced block of `doc`. Panics if there is
/// none, more than one, or one that is not closed.
fn wat_block(doc: &str) -> String {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != "```wat" {
            continue;
        }
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line.trim_end() == "```" {
                closed = true;
                break;
            }
            body.push_str(line);
            body.push('\n');
        }
        assert!(closed, "{DOC}: a ```wat block is not closed");
        blocks.push(body);
    }
    assert_eq!(
        blocks.len(),
        1,
        "{DOC} must hold exactly one ```wat block (the minimal plugin of §10)"
    );
    blocks.remove(0)
}

/// §10's plugin as the document has it, assembled.
fn doc_plugin() -> Vec<u8> {
    let path = repo_path(DOC);
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    wat_str(&wat_block(&doc))
}

/// Five channels with something in every kind of field, ids 1, 2, 300, 4, 5.
fn channels() -> Vec<OwnedChannel> {
    ["A", "BC", "Déf", "", "E"]
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let mut channel = OwnedChannel {
                id: if index == 2 { 300 } else { index as u64 + 1 },
                source_id: index as u32 % 2,
                tvg_id: format!("id{index}.example").into(),
                group_title: if index % 2 == 0 { "News" } else { "Sport" }.into(),
                channel_name: (*name).into(),
                stream_url: format!("http://example.test/{index}.m3u8").into(),
                ..OwnedChannel::default()
            };
            channel.set_attribute("tvg-country".into(), "FR".into());
            if index == 1 {
                channel.extras.push("#EXTVLCOPT:http-user-agent=x".into());
            }
            channel
        })
        .collect()
}

fn filtering_context(batch_index: u32) -> StageContext<'static> {
    StageContext {
        stage: Stage::Filtering,
        memory_pressure: MemoryPressureLevel::Optimal,
        available_memory: 1 << 30,
        proxy_name: "abi_doc".into(),
        base_url: "http://proxy.local/".into(),
        batch_index,
    }
}

/// Runs one filtering batch of [`channels`] through `slot` and checks that
/// every channel is kept, unchanged and in order.
fn keeps_every_channel(slot: &mut PluginSlot) {
    let original = channels();
    let mut batch = original.clone();
    slot.run(Stage::Filtering, &filtering_context(7), &mut batch)
        .unwrap_or_else(|error| panic!("filtering through {}: {error}", slot.name()));
    assert_eq!(batch, original, "every channel kept, unchanged, in order");
}

fn status_of(error: &Error) -> Option<i32> {
    match error.kind() {
        ErrorKind::PluginStatus { status, .. } => Some(*status),
        _ => None,
    }
}

#[test]
fn the_doc_has_exactly_one_wat_block() {
    let doc = "intro\n```wat\n(module)\n```\ntext\n```sh\nls\n```\n";
    assert_eq!(wat_block(doc), "(module)\n");
    for bad in [
        "no block at all\n",
        "```wat\n(module)\n```\n```wat\n(module)\n```\n",
    ] {
        let result = std::panic::catch_unwind(|| wat_block(bad));
        assert!(result.is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn the_minimal_plugin_of_the_doc_keeps_every_channel() {
    let wasm = doc_plugin();
    // §1: the custom section, byte by byte as the document spells it out.
    let section = [&[0x00, 0x14, 0x0f][..], b"m3u_abi_version", &[2, 0, 0, 0]].concat();
    assert!(
        wasm.windows(section.len()).any(|window| window == section),
        "the assembled module lacks the section bytes of §1"
    );
    let runtime = default_runtime();
    let compiled = runtime
        .compile(&wasm)
        .unwrap_or_else(|error| panic!("§10's plugin does not compile: {error}"));
    assert!(
        compiled.imports().is_empty(),
        "§10 says it imports nothing: {:?}",
        compiled.imports()
    );

    // What its PluginInfo (28 bytes, asked before and after init) says.
    let instance = runtime
        .instantiate(&compiled, "abi_doc", &PluginSettings::new())
        .unwrap_or_else(|error| panic!("§10's plugin does not load: {error}"));
    let info = instance.info();
    assert_eq!(info.name, NAME);
    assert_eq!(info.stages, Stage::Filtering.bit(), "filtering only");
    assert_eq!(info.reads, FieldSet::NONE, "reads no field");
    assert!(info.stage_reads.is_empty());
    assert!(info.parallel_safe);
    assert_eq!(info.memory.max_pressure, MemoryPressureLevel::Emergency);

    // One batch through `PluginSlot::run`: the host writes only the ids
    // (reads = NONE) and the answer is one byte, written in place.
    let mut slot = PluginSlot::new(instance, repo_path(DOC));
    let before = slot.instance.stats().clone();
    keeps_every_channel(&mut slot);
    let after = slot.instance.stats().clone();
    let header = InputHeader {
        batch_index: 7,
        memory_pressure: MemoryPressureLevel::Optimal,
        fields: FieldSet::NONE,
    };
    let mut input = vec![0u8; 1024];
    let input_len = encode_stage_input(&mut input, header, &channels()).unwrap();
    assert_eq!(
        after.calls - before.calls,
        1,
        "one export call, no host call"
    );
    assert_eq!(after.bytes_in - before.bytes_in, input_len as u64);
    assert_eq!(after.bytes_out - before.bytes_out, 1, "KeepAll is one byte");

    // §7's 31-byte example, as the raw call sees it: the answer is `03`.
    let answer = slot
        .instance
        .execute_stage(Stage::Filtering, &READS_NONE_INPUT)
        .unwrap_or_else(|error| panic!("the §7 input: {error}"))
        .to_vec();
    assert_eq!(answer, [0x03], "StageOutput::KeepAll");

    // Another stage is answered with UNSUPPORTED_STAGE (-3), a failure that
    // leaves the batch alone.
    let error = slot
        .instance
        .execute_stage(Stage::DataMapping, &READS_NONE_INPUT)
        .unwrap_err();
    assert_eq!(
        status_of(&error),
        Some(status::UNSUPPORTED_STAGE),
        "{error}"
    );
    let original = channels();
    let mut batch = original.clone();
    let context = StageContext {
        stage: Stage::DataMapping,
        ..filtering_context(8)
    };
    assert!(slot.run(Stage::DataMapping, &context, &mut batch).is_err());
    assert_eq!(batch, original);

    // And it goes on keeping everything.
    keeps_every_channel(&mut slot);
}

#[test]
fn the_minimal_plugin_of_the_doc_runs_in_a_pipeline() {
    let dir = scratch_dir("abi-doc");
    std::fs::write(dir.join(format!("{NAME}.wasm")), doc_plugin()).unwrap();
    // §10's strategy list, batches of 2 so the plugin sees several calls.
    let text = format!(
        "[pipeline]\nbatch_size = 2\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         filtering = [\"{NAME}\", \"native_filter\"]\n",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let names = ["A", "BC", "Déf", "D", "E"];
    let mut m3u = String::from("#EXTM3U\n");
    for (index, name) in names.iter().enumerate() {
        m3u.push_str(&format!(
            "#EXTINF:-1 tvg-id=\"id{index}\" group-title=\"G{}\",{name}\n\
             http://example.test/{index}.m3u8\n",
            index % 2
        ));
    }
    let source = Source::from_reader("abi_doc", std::io::Cursor::new(m3u.into_bytes()));
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();

    assert!(
        stats.plugin_load_errors.is_empty(),
        "{:?}",
        stats.plugin_load_errors
    );
    assert_eq!((stats.plugin_failures, stats.fallbacks), (0, 0));
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|c| (c.channel_name.as_ref(), c.stream_url.as_ref()))
        .collect();
    let urls: Vec<String> = (0..names.len())
        .map(|index| format!("http://example.test/{index}.m3u8"))
        .collect();
    let expected: Vec<(&str, &str)> = names
        .iter()
        .copied()
        .zip(urls.iter().map(String::as_str))
        .collect();
    assert_eq!(got, expected, "every channel kept, in order");

    let filtering = stats
        .stages
        .iter()
        .find(|stage| stage.stage == Stage::Filtering.name())
        .expect("a filtering stage");
    assert_eq!(filtering.strategy, NAME);
    let batches = match filtering.batches_by_strategy.as_slice() {
        [(strategy, batches)] if strategy == NAME => *batches,
        other => panic!("only {NAME} should have run: {other:?}"),
    };
    assert!(
        batches >= 3,
        "5 channels in batches of 2: {batches} batches"
    );
    let plugin = stats
        .plugins
        .iter()
        .find(|plugin| plugin.name == NAME)
        .expect("the plugin's stats");
    assert_eq!(plugin.bytes_out, batches, "one byte (KeepAll) per batch");
}

/// §10's plugin with a 64-bit memory (every address an `i64`): refused.
const MEMORY64_KEEP_ALL: &str = r#"
(module
  (@custom "m3u_abi_version" "\02\00\00\00")
  (memory (export "memory") i64 17)
  (data (i64.const 0) "\0c" "wat_memory64" "\05" "0.1.0" "\00" "\00" "\04" "\00" "\00" "\00" "\04" "\01" "\00")
  (func (export "m3u_arena_ptr") (result i32) (i32.const 65536))
  (func (export "m3u_arena_capacity") (result i32) (i32.const 1048576))
  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (i64.const 65536) (i64.const 0) (i64.const 28))
    (i32.const 28))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param $stage i32) (param $input_len i32) (result i32)
    (i32.store8 (i64.add (i64.const 65536) (i64.extend_i32_u (local.get $input_len)))
      (i32.const 0x03))
    (i32.const 1)))
"#;

/// A module with a second memory besides the exported one.
const TWO_MEMORIES: &str = r#"
(module
  (@custom "m3u_abi_version" "\02\00\00\00")
  (memory (export "memory") 17)
  (memory $second 1)
  (func (export "m3u_arena_ptr") (result i32) (i32.const 65536))
  (func (export "m3u_arena_capacity") (result i32) (i32.const 1048576))
  (func (export "m3u_plugin_info") (result i32) (i32.const -1))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param i32 i32) (result i32) (i32.const -3)))
"#;

/// §2 says: the host refuses a 64-bit memory before compiling, and a second
/// memory at instantiation. If this fails, the runtime changed: update §2
/// of docs/ABI.md with it.
#[test]
fn the_memory_rules_of_section_2_hold() {
    let runtime = default_runtime();
    let error = runtime.compile(&wat_str(MEMORY64_KEEP_ALL)).unwrap_err();
    match error.kind() {
        ErrorKind::InvalidModule(message) => {
            assert!(message.contains("64-bit memory (memory64)"), "{message}")
        }
        other => panic!("expected InvalidModule, got {other:?}"),
    }

    let wasm = wat_str(TWO_MEMORIES);
    let compiled = runtime
        .compile(&wasm)
        .unwrap_or_else(|error| panic!("§2: two memories pass compilation: {error}"));
    let error = runtime
        .instantiate(&compiled, "two_memories", &PluginSettings::new())
        .unwrap_err();
    match error.kind() {
        ErrorKind::InvalidModule(message) => {
            assert!(message.contains("too many linear memories"), "{message}")
        }
        other => panic!("expected InvalidModule, got {other:?}"),
    }
}
