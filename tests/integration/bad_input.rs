//! Bad input to the host itself: damaged playlists through the whole
//! pipeline, and configuration that is wrong in every way the other tests do
//! not already cover (see src/config/, pipeline.rs and cli.rs for those).
//!
//! Playlists: every valid entry comes out, in order; every damaged one is
//! skipped and counted in `malformed_entries`; the counters add up. Config:
//! every error is a `Config` error naming the key, and the line and column
//! when the TOML parser knows them.

use std::io::{BufRead, Read};
use std::path::Path;

use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{M3uSink, Pipeline, RunStats, Source};
use m3u_plugin_host::{ErrorKind, OwnedChannel};

use super::pipeline::scratch_dir;

// ---------------------------------------------------------------------------
// Playlists
// ---------------------------------------------------------------------------

/// Batches of two, so damage meets batch boundaries.
fn native_pipeline() -> Pipeline {
    let dir = scratch_dir("bad-input-no-plugins");
    let text = format!(
        "[pipeline]\nbatch_size = 2\n[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n",
        dir.display().to_string()
    );
    Pipeline::new(Config::from_toml(&text).unwrap()).unwrap()
}

fn run_sources(sources: Vec<Source>) -> (Vec<OwnedChannel>, RunStats) {
    native_pipeline()
        .run_collect(sources)
        .expect("damaged input never fails a run")
}

fn bytes_source(name: &str, bytes: &[u8]) -> Source {
    Source::from_reader(name.to_string(), std::io::Cursor::new(bytes.to_vec()))
}

fn names(channels: &[OwnedChannel]) -> Vec<&str> {
    channels.iter().map(|c| c.channel_name.as_ref()).collect()
}

/// The counters of a run agree with what came out.
fn assert_counts(stats: &RunStats, out: &[OwnedChannel], malformed: u64, what: &str) {
    let n = out.len() as u64;
    assert_eq!(stats.malformed_entries, malformed, "{what}: malformed");
    assert_eq!(stats.channels_loaded, n, "{what}: loaded");
    assert_eq!(stats.channels_written, n, "{what}: written");
    assert_eq!(stats.batches, n.div_ceil(2), "{what}: batches");
    let ids: Vec<u64> = out.iter().map(|c| c.id).collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "{what}: ids");
}

#[test]
fn damaged_playlists_keep_every_valid_entry_and_count_the_rest() {
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let cases: Vec<(&str, Vec<u8>, &[&str], u64)> = vec![
        (
            "binary junk between entries",
            [
                &b"#EXTM3U\n#EXTINF:-1,A\nhttp://a\n"[..],
                b"\x00\x00\x00\x00\n",
                b"\xff\xfe\xfd\n",
                png,
                b"\n#EXTINF:-1,B\nhttp://b\n",
                b"\x01\x02\x03 \x7f\n",
                b"#EXTINF:-1,C\nhttp://c\n",
            ]
            .concat(),
            &["A", "B", "C"],
            // six junk lines (the PNG header holds two line breaks); none is
            // a URL, whether or not it happens to be valid UTF-8
            6,
        ),
        (
            "binary junk inside an entry spoils only that entry",
            [
                &b"#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,Spoilt\n"[..],
                b"#EXTVLCOPT:\xc3\x28\n",
                b"http://spoilt\n#EXTINF:-1,Caf\xe9\nhttp://latin1\n",
                b"#EXTINF:-1,B\nhttp://b/\xff\n#EXTINF:-1,C\nhttp://c\n",
            ]
            .concat(),
            &["A", "C"],
            3,
        ),
        ("NUL bytes only", vec![0; 4096], &[], 1),
        (
            "unterminated quotes",
            [
                &b"#EXTM3U x-tvg-url=\"http://epg\n"[..],
                b"#EXTINF:-1 tvg-id=\"a,A\nhttp://a\n",
                b"#EXTINF:-1 tvg-id=\"b\" group-title=\"News,B\nhttp://b\n",
                b"#EXTINF:-1,\"C quoted\nhttp://c\n",
                b"#EXTINF:-1 tvg-id=\"d\",D\nhttp://d\n",
            ]
            .concat(),
            &["\"C quoted", "D"],
            2,
        ),
        (
            "missing URLs",
            [
                &b"#EXTINF:-1,NoUrl1\n#EXTINF:-1,A\nhttp://a\n"[..],
                b"#EXTINF:-1,NoUrl2\n\n\n#EXTINF:-1,B\nhttp://b\n",
                b"#EXTINF:-1,NoUrl3\n#EXTVLCOPT:x\n#EXTINF:-1,NoUrl4\n#KODIPROP:y\n#EXTINF:-1,C\n\
                  http://c\n",
                b"#EXTINF:-1,NoUrlAtEnd\n#EXTVLCOPT:z",
            ]
            .concat(),
            &["A", "B", "C"],
            5,
        ),
        (
            "only headers and comments",
            b"\xef\xbb\xbf#EXTM3U x-tvg-url=\"e\"\r\n#EXTM3U\n# a comment\n\n#PLAYLIST:x\n"
                .to_vec(),
            &[],
            0,
        ),
        ("empty", Vec::new(), &[], 0),
        (
            "bare URLs without #EXTINF",
            b"http://bare/one.m3u8\nrtmp://bare/two\n".to_vec(),
            &["one.m3u8", "two"],
            0,
        ),
    ];
    for (what, input, expected, malformed) in cases {
        let (out, stats) = run_sources(vec![bytes_source(what, &input)]);
        assert_eq!(names(&out), expected, "{what}");
        assert_counts(&stats, &out, malformed, what);
    }
}

#[test]
fn one_mib_lines_from_a_file_are_skipped_with_their_entry_only() {
    let mib = 1 << 20;
    let mut file = Vec::new();
    file.extend_from_slice(b"#EXTM3U\n#EXTINF:-1,V1\nhttp://v1\n");
    // A 1 MiB title: the entry is skipped up to its URL.
    file.extend_from_slice(b"#EXTINF:-1,Huge title ");
    file.resize(file.len() + mib, b't');
    file.extend_from_slice(b"\nhttp://huge-title\n#EXTINF:-1,V2\nhttp://v2\n");
    // A 1 MiB URL.
    file.extend_from_slice(b"#EXTINF:-1,Huge URL\nhttp://");
    file.resize(file.len() + mib, b'u');
    file.extend_from_slice(b"\n#EXTINF:-1,V3\nhttp://v3\n");
    // A 1 MiB companion line.
    file.extend_from_slice(b"#EXTINF:-1,Huge option\n#EXTVLCOPT:");
    file.resize(file.len() + mib, b'o');
    file.extend_from_slice(b"\nhttp://huge-option\n#EXTINF:-1,V4\nhttp://v4\n");
    // 1 MiB of junk between entries, and 1 MiB without a final newline.
    file.resize(file.len() + mib, b'j');
    file.extend_from_slice(b"\n#EXTINF:-1,V5\nhttp://v5\n");
    file.resize(file.len() + mib, b'z');
    let path = scratch_dir("bad-input-long-lines").join("long.m3u");
    std::fs::write(&path, &file).unwrap();

    // Through a file, as `[[sources]]` reads it (a 256 KiB buffer).
    let (out, stats) = run_sources(vec![Source::open(&path).unwrap()]);
    assert_eq!(names(&out), ["V1", "V2", "V3", "V4", "V5"]);
    assert_counts(&stats, &out, 5, "long lines");
    assert!(out.iter().all(|c| c.stream_url.len() < 16));
}

#[test]
fn damaged_sources_are_counted_together_and_keep_their_order() {
    let sources = vec![
        bytes_source("junk", b"\xff\xff\n#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,broken"),
        bytes_source("headers only", b"#EXTM3U x-tvg-url=\"e\"\n"),
        bytes_source(
            "crlf and bom",
            b"\xef\xbb\xbf#EXTM3U\r\n#EXTINF:-1,B\r\nhttp://b\r\n#EXTINF:-1 x=\"1,C\r\nhttp://c\r\n",
        ),
        bytes_source("fine", b"#EXTINF:-1,D\nhttp://d\n"),
    ];
    let (out, stats) = run_sources(sources);
    assert_eq!(names(&out), ["A", "B", "D"]);
    let source_ids: Vec<u32> = out.iter().map(|c| c.source_id).collect();
    assert_eq!(source_ids, [0, 2, 3]);
    assert_eq!(out[1].stream_url, "http://b", "no stray \\r");
    assert_counts(&stats, &out, 3, "several sources");
}

#[test]
fn a_playlist_of_only_headers_writes_just_the_header() {
    let mut out = Vec::new();
    let stats = native_pipeline()
        .run(
            vec![bytes_source(
                "headers",
                b"#EXTM3U x-tvg-url=\"http://epg\"\n#EXTM3U ignored=\"1\"\n",
            )],
            &mut M3uSink::new(&mut out),
        )
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "#EXTM3U x-tvg-url=\"http://epg\"\n"
    );
    assert_eq!((stats.channels_loaded, stats.batches), (0, 0));
}

/// A source that serves `data`, then fails.
struct FailingSource {
    data: std::io::Cursor<Vec<u8>>,
}

impl Read for FailingSource {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(out)?;
        if n == 0 {
            return Err(std::io::Error::other("connection reset"));
        }
        Ok(n)
    }
}

impl BufRead for FailingSource {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.data.position() as usize >= self.data.get_ref().len() {
            return Err(std::io::Error::other("connection reset"));
        }
        self.data.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.data.consume(amount);
    }
}

#[test]
fn a_source_failing_mid_read_stops_the_run_with_an_io_error() {
    // A partial playlist is not passed off as complete: the run fails.
    let failing = Source::from_reader(
        "flaky",
        FailingSource {
            data: std::io::Cursor::new(b"#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,B\nhttp:/".to_vec()),
        },
    );
    let error = native_pipeline()
        .run_collect(vec![failing])
        .expect_err("an unreadable source fails the run");
    assert_eq!(error.label(), "io", "{error}");
    assert!(error.to_string().contains("connection reset"), "{error}");
    // A path that cannot be opened fails before the run, naming the path.
    let missing = Path::new("/nonexistent/playlist.m3u");
    let error = Source::open(missing).unwrap_err();
    assert_eq!(error.label(), "io");
    assert!(
        error.to_string().contains("/nonexistent/playlist.m3u"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The parts of a config error.
fn config_error(text: &str) -> (Option<(usize, usize)>, Option<String>, String) {
    let error = match Config::from_toml(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error,
    };
    match error.kind() {
        ErrorKind::Config {
            location,
            key,
            message,
            ..
        } => (*location, key.clone(), message.clone()),
        _ => panic!("not a config error: {error:?}\n{text}"),
    }
}

#[test]
fn wrong_toml_is_refused_with_line_column_and_key() {
    // (TOML, line and column, key, part of the message)
    type Case<'a> = (&'a str, (usize, usize), Option<&'a str>, &'a str);
    let cases: [Case; 20] = [
        // unknown keys, anywhere
        ("[sourcse]\npath = \"x\"\n", (1, 2), Some("sourcse"), "unknown field `sourcse`, expected one of"),
        ("[[sources]]\npaht = \"a.m3u\"\n", (2, 1), Some("sources[0].paht"), "expected one of `name`, `path`, `url`"),
        (
            "[proxy_generation.wasm_plugins.fallbacks]\nmax_plugin_failure = 3\n",
            (2, 1),
            Some("proxy_generation.wasm_plugins.fallbacks.max_plugin_failure"),
            "`max_plugin_failures`",
        ),
        (
            "[proxy_generation.wasm_plugins.strategies]\nfilter = [\"native_filter\"]\n",
            (2, 1),
            Some("proxy_generation.wasm_plugins.strategies.filter"),
            "expected one of `source_loading`, `data_mapping`, `filtering`",
        ),
        // wrong types
        ("[pipeline]\nbatch_size = \"16\"\n", (2, 14), Some("pipeline.batch_size"), "invalid type: string \"16\", expected usize"),
        ("[pipeline]\nbatch_size = 1.5\n", (2, 14), Some("pipeline.batch_size"), "expected usize"),
        ("[proxy]\nname = 5\n", (2, 8), Some("proxy.name"), "expected a string"),
        (
            "[proxy_generation.wasm_plugins]\nenabled = \"yes\"\n",
            (2, 11),
            Some("proxy_generation.wasm_plugins.enabled"),
            "expected a boolean",
        ),
        (
            "[proxy_generation.wasm_plugins.security]\nallowed_host_functions = \"log\"\n",
            (2, 26),
            Some("proxy_generation.wasm_plugins.security.allowed_host_functions"),
            "expected a sequence",
        ),
        (
            "[proxy_generation.wasm_plugins.strategies]\nfiltering = \"native_filter\"\n",
            (2, 13),
            Some("proxy_generation.wasm_plugins.strategies.filtering"),
            "expected a sequence",
        ),
        (
            "[proxy_generation.wasm_plugins]\nfuel_per_call = -1\n",
            (2, 17),
            Some("proxy_generation.wasm_plugins.fuel_per_call"),
            "invalid value: integer `-1`, expected u64",
        ),
        ("[numbering]\nstart = 5000000000\n", (2, 9), Some("numbering.start"), "expected u32"),
        (
            "[[filtering.filters]]\naction = \"maybe\"\nexpression = 'channel_name contains \"x\"'\n",
            (2, 10),
            Some("filtering.filters[0].action"),
            "unknown variant `maybe`, expected `include` or `exclude`",
        ),
        (
            "[plugins.group_normalizer]\nempty_group = [\"a\", \"b\"]\n",
            (2, 15),
            Some("plugins.group_normalizer.empty_group"),
            "must be a string, integer, float or boolean",
        ),
        (
            "[memory]\nforce_level = \"panic\"\n",
            (2, 15),
            Some("memory.force_level"),
            "unknown memory pressure level `panic`; known: optimal",
        ),
        // sizes
        (
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = -1\n",
            (2, 25),
            Some("proxy_generation.wasm_plugins.max_memory_per_plugin"),
            "must be a size: a number of bytes, or text such as \"64MB\"",
        ),
        (
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"-5MB\"\n",
            (2, 25),
            Some("proxy_generation.wasm_plugins.max_memory_per_plugin"),
            "`-5MB` is not a size",
        ),
        (
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"99999999999999999999GB\"\n",
            (2, 25),
            Some("proxy_generation.wasm_plugins.max_memory_per_plugin"),
            "is out of range",
        ),
        // not TOML at all
        ("[proxy_generation.wasm_plugins\nenabled = true\n", (1, 31), None, "invalid table header"),
        ("[pipeline]\nbatch_size = 1\nbatch_size = 2\n", (3, 1), None, "duplicate key `batch_size`"),
    ];
    for (text, location, key, fragment) in cases {
        let (got_location, got_key, message) = config_error(text);
        assert_eq!(got_location, Some(location), "{text}");
        assert_eq!(got_key.as_deref(), key, "{text}");
        assert!(message.contains(fragment), "{text}: {message}");
    }
    // Bytes that are not text at all are a syntax error at 1:1, not a panic.
    let (location, _, _) = config_error("\u{0}\u{1}\u{2}");
    assert_eq!(location, Some((1, 1)));
}

#[test]
fn values_that_parse_but_make_no_sense_name_their_key() {
    // These are checked after parsing, where the TOML spans are gone: the
    // error names the key (and says what would be valid), not the line.
    let cases = [
        (
            "[pipeline]\nbatch_size = 0\n",
            "pipeline.batch_size",
            "at least 1",
        ),
        (
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"1MB\"\n",
            "proxy_generation.wasm_plugins.max_memory_per_plugin",
            "at least 2MB",
        ),
        (
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"\"\n",
            "proxy_generation.wasm_plugins.max_memory_per_plugin",
            "is not a size",
        ),
        (
            "[proxy_generation.wasm_plugins]\ntimeout_seconds = 0\n",
            "proxy_generation.wasm_plugins.timeout_seconds",
            "at least 1",
        ),
        (
            "[proxy_generation.wasm_plugins]\nfuel_per_call = 0\n",
            "proxy_generation.wasm_plugins.fuel_per_call",
            "at least 1",
        ),
        (
            "[memory]\nmoderate = 0.9\nhigh = 0.5\n",
            "memory",
            "moderate <= high",
        ),
        ("[memory]\nemergency = 1.5\n", "memory", "between 0 and 1"),
        (
            "[mapping]\nrules = ['SET nothing = \"x\"']\n",
            "mapping.rules",
            "unknown field `nothing`",
        ),
    ];
    for (text, key, fragment) in cases {
        let (_, got_key, message) = config_error(text);
        assert_eq!(got_key.as_deref(), Some(key), "{text}");
        assert!(message.contains(fragment), "{text}: {message}");
    }
}

fn pipeline_with(plugin_directory: &Path, extra: &str) -> m3u_plugin_host::Result<Pipeline> {
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n{extra}",
        plugin_directory.display().to_string()
    );
    Pipeline::new(Config::from_toml(&text)?)
}

#[test]
fn a_missing_plugin_directory_is_an_error_only_when_a_plugin_is_listed() {
    let scratch = scratch_dir("bad-input-plugin-dir");
    let missing = scratch.join("does-not-exist");
    let a_file = scratch.join("plugins.txt");
    std::fs::write(&a_file, "not a directory").unwrap();
    let wants_plugin =
        "[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"my_filter\", \"native_filter\"]\n";
    for directory in [&missing, &a_file] {
        let error = pipeline_with(directory, wants_plugin).unwrap_err();
        match error.kind() {
            ErrorKind::Config { key, message, .. } => {
                assert_eq!(
                    key.as_deref(),
                    Some("proxy_generation.wasm_plugins.plugin_directory")
                );
                assert!(
                    message.contains("cannot read plugin directory"),
                    "{message}"
                );
                assert!(
                    message.contains(&directory.display().to_string()),
                    "{message}"
                );
            }
            _ => panic!("{error:?}"),
        }
        // Native strategies only: nothing to load, nothing to complain about.
        let native =
            "[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"native_filter\"]\n";
        pipeline_with(directory, native).expect("no plugin wanted");
    }
}

#[test]
fn strategy_names_are_checked_against_the_plugins_and_natives_there_are() {
    let empty = scratch_dir("bad-input-strategies");
    for (name, why) in [
        ("Native_Filter", "names are case-sensitive"),
        ("", "an empty name"),
        (" native_filter", "no trimming"),
    ] {
        let extra = format!("[proxy_generation.wasm_plugins.strategies]\nfiltering = [{name:?}]\n");
        let error = pipeline_with(&empty, &extra).unwrap_err();
        match error.kind() {
            ErrorKind::Config { key, message, .. } => {
                assert_eq!(
                    key.as_deref(),
                    Some("proxy_generation.wasm_plugins.strategies.filtering"),
                    "{why}"
                );
                assert!(
                    message.contains(&format!("unknown strategy `{name}`")),
                    "{why}: {message}"
                );
            }
            _ => panic!("{why}: {error:?}"),
        }
    }

    // A plugin whose file failed to load is known by its file name: the
    // pipeline starts, reports the file, and the stage runs natively.
    std::fs::write(empty.join("broken_filter.wasm"), b"\0asm\x01\0\0\0garbage").unwrap();
    let extra = "[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"broken_filter\"]\n";
    let mut pipeline = pipeline_with(&empty, extra).expect("a listed plugin that failed to load");
    let source = Source::from_reader(
        "t",
        std::io::Cursor::new(b"#EXTINF:-1,A\nhttp://a\n".to_vec()),
    );
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(stats.stages[2].strategy, "native_filter");
    assert!(
        stats.stages[2]
            .reason
            .contains("broken_filter (not loaded)"),
        "{}",
        stats.stages[2].reason
    );
    assert_eq!(stats.plugin_load_errors.len(), 1);
    assert!(stats.plugin_load_errors[0].contains("broken_filter.wasm"));

    // With plugins switched off, plugin names are accepted and skipped, so a
    // config can turn plugins off without editing every list.
    let extra =
        "enabled = false\n[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"anything\"]\n";
    let mut pipeline = pipeline_with(&empty.join("missing"), extra).expect("plugins disabled");
    let source = Source::from_reader(
        "t",
        std::io::Cursor::new(b"#EXTINF:-1,A\nhttp://a\n".to_vec()),
    );
    let (_, stats) = pipeline.run_collect(vec![source]).unwrap();
    assert_eq!(stats.stages[2].strategy, "native_filter");
    assert!(
        stats.stages[2].reason.contains("anything (not loaded)"),
        "{}",
        stats.stages[2].reason
    );
    assert!(stats.plugin_load_errors.is_empty());
}
