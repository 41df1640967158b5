//! `serve` over real HTTP regenerates the playlist when a plugin file is
//! replaced on disk, without restarting; a broken plugin file keeps the last
//! good playlist served and shows in /health; /metrics is valid Prometheus
//! text; unknown paths and methods are refused; shutdown is prompt.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use m3u_plugin_host::config::Config;
use m3u_plugin_host::serve::{ServeOptions, Server};

const PLAYLIST: &str = "tests/fixtures/m3u/iptv-org-index-2021.m3u";
const ENTRIES: usize = 10_525;

/// A fresh, empty directory under the system temp dir.
fn scratch_dir(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "m3u-plugin-host-serve-{}-{label}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn example_plugin(file: &str) -> Vec<u8> {
    let path = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins with `cargo build`",
            path.display()
        )
    })
}

/// Replaces `path` atomically (write beside it, set an mtime unlike the
/// previous one, rename over it), the way a deployment should.
fn replace_file(path: &Path, bytes: &[u8]) {
    let previous = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).unwrap();
    let mtime = previous.map_or(SystemTime::now(), |t| t + Duration::from_secs(10));
    std::fs::File::options()
        .write(true)
        .open(&temporary)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A server on a free loopback port over the real playlist, with
/// `group_normalizer.wasm` (empty groups become "First") as the mapper.
fn start() -> (Server, PathBuf) {
    let plugins = scratch_dir("plugins");
    std::fs::write(
        plugins.join("group_normalizer.wasm"),
        example_plugin("group_normalizer.wasm"),
    )
    .unwrap();
    let text = format!(
        "[memory]\nforce_level = \"optimal\"\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\ndata_mapping = [\"group_normalizer\"]\n\
         [plugins.group_normalizer]\nempty_group = \"First\"\n",
        plugins.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let options = ServeOptions {
        inputs: vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(PLAYLIST)],
        listen: "127.0.0.1:0".into(),
        regenerate_interval: None,
        watch_interval: Duration::from_millis(50),
    };
    let server = Server::start(config, options).unwrap();
    (server, plugins)
}

/// One HTTP/1.1 request with std only: status, headers (lowercase names), body.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    if let Some(length) = header(&headers, "content-length") {
        assert_eq!(body.len(), length.parse::<usize>().unwrap(), "whole body");
    }
    (status, headers, body)
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    request(addr, "GET", path)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn health(addr: SocketAddr) -> serde_json::Value {
    let (status, headers, body) = get(addr, "/health");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    serde_json::from_slice(&body).unwrap()
}

/// Polls /health until `done` holds (60 s at most: a debug build under
/// qemu in .ci/arm is slow).
fn wait_for_health(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let json = health(addr);
        if done(&json) {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {json:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entries, entries without a group (the writer leaves out an empty
/// `group-title`), entries in the group "First".
fn groups(playlist: &[u8]) -> (usize, usize, usize) {
    let text = std::str::from_utf8(playlist).unwrap();
    let entries: Vec<&str> = text.lines().filter(|l| l.starts_with("#EXTINF")).collect();
    let without_group = entries
        .iter()
        .filter(|l| !l.contains("group-title=\"") || l.contains("group-title=\"\""))
        .count();
    let first = entries
        .iter()
        .filter(|l| l.contains("group-title=\"First\""))
        .count();
    (entries.len(), without_group, first)
}

fn playlist(addr: SocketAddr) -> Vec<u8> {
    let (status, headers, body) = get(addr, "/playlist.m3u");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("audio/x-mpegurl"));
    body
}

#[test]
fn replacing_a_plugin_on_disk_regenerates_and_a_broken_one_keeps_the_last_playlist() {
    let (server, plugins) = start();
    let addr = server.local_addr();
    let plugin_file = plugins.join("group_normalizer.wasm");

    let first = playlist(addr);
    let (entries, empty, first_group) = groups(&first);
    assert_eq!(entries, ENTRIES);
    assert_eq!(empty, 0, "group_normalizer fills every empty group");
    assert!(first_group >= 8_231, "{first_group} entries in \"First\"");
    let json = health(addr);
    assert_eq!(json["status"], "ok", "{json:#}");
    assert_eq!(json["generations"], 1);
    assert_eq!(json["plugins"][0]["name"], "group_normalizer");
    assert_eq!(json["plugins"][0]["signature"], "unsigned");

    // Same file name, other plugin: `group_normalizer` is no longer loaded,
    // so data_mapping falls back to the native mapper without rules.
    let started = Instant::now();
    replace_file(&plugin_file, &example_plugin("passthrough.wasm"));
    let json = wait_for_health(addr, "the regeneration after the swap", |j| {
        j["generations"].as_u64() > Some(1)
    });
    let reload_took = started.elapsed();
    assert_eq!(json["status"], "ok", "{json:#}");
    assert_eq!(json["plugins"][0]["name"], "passthrough", "{json:#}");
    let second = playlist(addr);
    let (entries, empty, first_group) = groups(&second);
    assert_eq!(entries, ENTRIES);
    assert!(empty >= 8_231, "empty groups are back: {empty}");
    assert_eq!(first_group, 0);

    // A corrupt file: refused, the previous version keeps running, the
    // playlist stays the last good one, and /health says why.
    let generations = server.generations();
    replace_file(&plugin_file, b"\0asm definitely not a module");
    let json = wait_for_health(addr, "the load error of the corrupt file", |j| {
        j["status"] == "degraded"
    });
    assert!(
        json["generations"].as_u64().unwrap() > generations,
        "{json:#}"
    );
    let errors = json["plugin_load_errors"].as_array().unwrap();
    assert!(
        errors.len() == 1
            && errors[0]
                .as_str()
                .unwrap()
                .contains("group_normalizer.wasm"),
        "{json:#}"
    );
    assert_eq!(json["last_generation_failed"], false);
    assert_eq!(
        json["plugins"][0]["name"], "passthrough",
        "previous version kept"
    );
    assert_eq!(
        playlist(addr),
        second,
        "the last good playlist is still served"
    );
    let (_, _, metrics) = get(addr, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("\nm3u_plugin_load_errors 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nm3u_degraded 1\n"), "{metrics}");

    // Fixing the file clears the problem.
    replace_file(&plugin_file, &example_plugin("group_normalizer.wasm"));
    let json = wait_for_health(addr, "the fixed plugin", |j| j["status"] == "ok");
    assert_eq!(json["plugins"][0]["name"], "group_normalizer", "{json:#}");
    assert_eq!(groups(&playlist(addr)).1, 0);

    eprintln!("plugin swap picked up and served after {reload_took:?}");
    server.shutdown();
    let _ = std::fs::remove_dir_all(plugins);
}

/// Label names and values of a sample, in order.
type Labels = Vec<(String, String)>;

/// One sample: metric name, labels, value.
type Sample = (String, Labels, f64);

/// A strict reader of the Prometheus text format 0.0.4: returns the samples
/// as (name, labels, value). Panics on anything it does not accept.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut typed: Vec<String> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let context = || format!("line {}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("{}", context()));
            assert!(valid_name(name), "{}", context());
            assert!(!help.is_empty(), "{}", context());
            assert!(
                !helped.iter().any(|h| h == name),
                "second HELP: {}",
                context()
            );
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("{}", context()));
            assert!(valid_name(name), "{}", context());
            assert!(matches!(kind, "counter" | "gauge"), "{}", context());
            assert!(
                !typed.iter().any(|t| t == name),
                "second TYPE: {}",
                context()
            );
            typed.push(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{}", context());
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{}", context()));
        let name = &line[..name_end];
        assert!(valid_name(name), "{}", context());
        assert_eq!(
            typed.last().map(String::as_str),
            Some(name),
            "sample outside its family's group: {}",
            context()
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let (parsed, after) =
                parse_labels(inner).unwrap_or_else(|e| panic!("{e}: {}", context()));
            labels = parsed;
            rest = after;
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{}", context()));
        assert!(
            !value.contains(' '),
            "no timestamps expected: {}",
            context()
        );
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("value: {}", context())),
        };
        samples.push((name.to_string(), labels, value));
    }
    assert_eq!(typed, helped, "every family has HELP and TYPE");
    samples
}

/// Parses `a="x",b="y"}` (the text after `{`): the labels and what follows `}`.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = text.split_once("=\"").ok_or("expected name=\"")?;
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("invalid label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((index, '"')) => break index,
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name.to_string(), value));
        text = &after[end + 1..];
        if let Some(next) = text.strip_prefix(',') {
            text = next;
        } else if !text.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

#[test]
fn metrics_are_valid_prometheus_text_with_per_plugin_series() {
    let (server, plugins) = start();
    let (status, headers, body) = get(server.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    let samples = parse_prometheus(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in\n{text}");
        found[0]
    };
    assert_eq!(value("m3u_generations_total", &[]), 1.0);
    assert_eq!(value("m3u_generation_failures_total", &[]), 0.0);
    assert_eq!(value("m3u_channels_loaded", &[]), ENTRIES as f64);
    assert_eq!(value("m3u_channels_written", &[]), ENTRIES as f64);
    assert!(value("m3u_generation_duration_seconds", &[]) > 0.0);
    assert_eq!(
        value("m3u_memory_pressure_level", &[("level", "optimal")]),
        0.0
    );
    assert_eq!(
        value("m3u_stage_channels_in", &[("stage", "data_mapping")]),
        ENTRIES as f64
    );
    assert_eq!(
        value("m3u_stage_channels_out", &[("stage", "filtering")]),
        ENTRIES as f64
    );
    assert!(value("m3u_stage_duration_seconds", &[("stage", "data_mapping")]) > 0.0);
    let plugin = [("plugin", "group_normalizer")];
    assert!(
        value("m3u_plugin_calls_total", &plugin) >= 11.0,
        "one call per batch and more"
    );
    assert!(value("m3u_plugin_fuel_total", &plugin) > 0.0);
    assert!(value("m3u_plugin_time_seconds_total", &plugin) > 0.0);
    assert_eq!(value("m3u_plugin_failures_total", &plugin), 0.0);
    assert_eq!(value("m3u_plugin_circuit_open", &plugin), 0.0);
    assert!(text.contains("# TYPE m3u_plugin_calls_total counter\n"));
    assert!(text.contains("# TYPE m3u_plugin_circuit_open gauge\n"));
    server.shutdown();
    let _ = std::fs::remove_dir_all(plugins);
}

#[test]
fn unknown_paths_and_methods_are_refused_and_shutdown_is_prompt() {
    let (server, plugins) = start();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(get(addr, "/").0, 404);
    assert_eq!(get(addr, "/playlist.m3u/extra").0, 404);
    let (status, headers, _) = request(addr, "POST", "/playlist.m3u");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    assert_eq!(request(addr, "DELETE", "/health").0, 405);
    assert_eq!(get(addr, "/playlist.m3u?refresh=1").0, 200);

    let started = Instant::now();
    server.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    eprintln!("shutdown took {took:?}");
    // tiny_http's accept thread lets go of the port right after.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "the port is still open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(plugins);
}

/// curl, the real HTTP client the endpoint is checked with.
fn curl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}; install it (apt-get install curl)"))
}

/// `curl -D -` header lines, lowercase names.
fn curl_headers(output: &std::process::Output) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

#[test]
fn the_playlist_answers_head_304_and_gzip_to_curl() {
    let (server, plugins) = start();
    let url = format!("http://{}/playlist.m3u", server.local_addr());
    let plain = playlist(server.local_addr());
    assert!(entries(&plain) >= ENTRIES - 10);

    // HEAD: the headers of GET, no body.
    let head = curl(&["-I", &url]);
    let (status, headers) = curl_headers(&head);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-length"),
        Some(plain.len().to_string().as_str())
    );
    let etag = header(&headers, "etag").expect("ETag").to_string();
    let modified = header(&headers, "last-modified")
        .expect("Last-Modified")
        .to_string();
    assert_eq!(header(&headers, "content-type"), Some("audio/x-mpegurl"));

    // Conditional requests: 304 without a body.
    for validator in [
        format!("If-None-Match: {etag}"),
        format!("If-Modified-Since: {modified}"),
    ] {
        let out = curl(&["-D", "-", "-o", "/dev/null", "-H", &validator, &url]);
        let (status, headers) = curl_headers(&out);
        assert_eq!(status, 304, "{validator}");
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    }
    let stale = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "If-None-Match: \"old\"",
        &url,
    ]);
    assert_eq!(curl_headers(&stale).0, 200);

    // gzip for a client that takes it, decoded by curl to the same bytes.
    let dir = scratch_dir("curl");
    let body = dir.join("body");
    let gzipped = curl(&[
        "--compressed",
        "-D",
        "-",
        "-o",
        body.to_str().unwrap(),
        &url,
    ]);
    let (status, headers) = curl_headers(&gzipped);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    let compressed_length: usize = header(&headers, "content-length").unwrap().parse().unwrap();
    assert!(
        compressed_length * 3 < plain.len(),
        "{compressed_length} of {}",
        plain.len()
    );
    assert_eq!(std::fs::read(&body).unwrap(), plain);
    // Without Accept-Encoding: plain.
    let identity = curl(&["-D", "-", "-o", body.to_str().unwrap(), &url]);
    assert_eq!(header(&curl_headers(&identity).1, "content-encoding"), None);
    assert_eq!(std::fs::read(&body).unwrap(), plain);
    server.shutdown();
    let _ = std::fs::remove_dir_all(plugins);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn many_clients_during_regenerations_get_only_complete_playlists() {
    let dir = scratch_dir("load");
    let source = dir.join("provider.m3u");
    let full = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(PLAYLIST)).unwrap();
    let last_entry = full.windows(7).rposition(|w| w == b"#EXTINF").unwrap();
    let versions = [full.clone(), full[..last_entry].to_vec()];
    let counts = [entries(&versions[0]), entries(&versions[1])];
    std::fs::write(&source, &versions[0]).unwrap();
    let text = format!(
        "[memory]\nforce_level = \"optimal\"\n[proxy_generation.wasm_plugins]\nenabled = false\n\
         [[sources]]\nname = \"local\"\npath = {:?}\n[last_good]\ndirectory = {:?}\nsettle_ms = 20\n",
        source.display().to_string(),
        dir.join("last-good").display().to_string()
    );
    let config = Config::from_toml(&text).unwrap();
    let options = ServeOptions {
        inputs: Vec::new(),
        listen: "127.0.0.1:0".into(),
        regenerate_interval: None,
        watch_interval: Duration::from_millis(20),
    };
    let server = Server::start(config, options).unwrap();
    let addr = server.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut fetched = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // `request` checks the body against Content-Length.
                    let (status, _, body) = get(addr, "/playlist.m3u");
                    assert_eq!(status, 200);
                    let n = entries(&body);
                    assert!(counts.contains(&n), "a playlist of {n} entries: {counts:?}");
                    assert!(body.ends_with(b"\n"));
                    fetched += 1;
                }
                fetched
            })
        })
        .collect();
    // Swap versions and wait for each to be generated (not a fixed time:
    // a debug build on a busy machine generates slowly).
    let mut swaps = 0;
    while swaps < 4 {
        swaps += 1;
        let before = server.snapshot().generations;
        replace_file(&source, &versions[swaps % 2]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.snapshot().generations == before {
            assert!(
                Instant::now() < deadline,
                "no generation after swap {swaps}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fetched: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let generations = server.snapshot().generations;
    eprintln!("{fetched} fetches by 16 clients during {swaps} swaps, {generations} generations");
    assert!(generations >= 5, "only {generations} generations");
    assert!(fetched >= 16);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

fn entries(playlist: &[u8]) -> usize {
    playlist.windows(7).filter(|w| w == b"#EXTINF").count()
}
