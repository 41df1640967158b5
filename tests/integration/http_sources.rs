//! Sources over HTTP and the last good copy, against a real HTTP server on
//! loopback (an origin written here, so every misbehaviour can be staged):
//! the real playlist arrives whole plain, gzipped, deflated, chunked,
//! slowly and through a redirect; a 500, an HTML page, a body cut off mid-entry, an
//! empty body, junk, a collapsed playlist, a stalled download and a body
//! over the size limit each leave the last good copy in use (reported as
//! stale, with the reason); ETags give 304s; retries are bounded;
//! credentials never reach logs, stats or file names; a file source that
//! is emptied or still being written is not used; and `serve` keeps every
//! channel while its source file is swapped for bad versions.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m3u_plugin_host::config::Config;
use m3u_plugin_host::inputs::{Inputs, SourceReport, SourceStatus};
use m3u_plugin_host::pipeline::{M3uSink, Pipeline};

const PLAYLIST: &str = "tests/fixtures/m3u/iptv-org-index-2021.m3u";

/// The bytes the origin serves as a PNG logo.
const LOGO: &[u8] = b"\x89PNG\r\n\x1a\n a tiny logo";

fn playlist_bytes() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(PLAYLIST)).unwrap()
}

/// The playlist gzip- and zlib-encoded, made once (slow in a debug build
/// under qemu, where a request must not wait for it).
fn encoded_playlist() -> (&'static [u8], &'static [u8]) {
    static ENCODED: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    let (gzip, zlib) = ENCODED.get_or_init(|| {
        let playlist = playlist_bytes();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&playlist).unwrap();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&playlist).unwrap();
        (gzip.finish().unwrap(), zlib.finish().unwrap())
    });
    (gzip, zlib)
}

fn entries(bytes: &[u8]) -> usize {
    bytes.windows(7).filter(|w| w == b"#EXTINF").count()
}

/// A fresh, empty directory under the system temp dir.
fn scratch_dir(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "m3u-plugin-host-http-{}-{label}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How `/switch` answers (the other paths always answer the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The playlist, with `ETag: "v1"` (304 for `If-None-Match: "v1"`).
    Good,
    /// The playlist without its last channel, `ETag: "v2"`.
    GoodV2,
    ServerError,
    Html,
    /// `text/plain`, but an HTML document.
    HtmlAsText,
    Truncated,
    Empty,
    Junk,
    /// The first 100 channels only.
    Shrunk,
    /// Headers and a part of the body, then silence past the read timeout.
    Stall,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    /// Requests seen: path and headers (lowercase names).
    requests: Vec<(String, BTreeMap<String, String>)>,
    /// `/flaky`: answers 503 this many more times.
    flaky_failures: u32,
}

/// The origin server: one thread per connection, `Connection: close`.
struct Origin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Origin {
    fn start() -> Origin {
        encoded_playlist();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Some(Mode::Good),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = answer(stream, &state);
                });
            }
        });
        Origin { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    fn requests_to(&self, path: &str) -> Vec<BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(p, _)| p.split('?').next() == Some(path))
            .map(|(_, headers)| headers.clone())
            .collect()
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    write!(stream, "HTTP/1.1 {status}\r\nConnection: close\r\n")?;
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n")?;
    }
    write!(stream, "Content-Length: {}\r\n\r\n", body.len())?;
    stream.write_all(body)?;
    stream.flush()
}

fn answer(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let (mode, flaky) = {
        let mut state = state.lock().unwrap();
        state.requests.push((path.clone(), headers.clone()));
        let flaky = state.flaky_failures;
        if path == "/flaky" && flaky > 0 {
            state.flaky_failures -= 1;
        }
        (state.mode.unwrap_or(Mode::Good), flaky)
    };
    let playlist = playlist_bytes();
    let plain = |etag: &str| {
        vec![
            ("Content-Type", "audio/x-mpegurl".to_string()),
            ("ETag", etag.to_string()),
        ]
    };
    let route = path.split('?').next().unwrap_or("/");
    match route {
        "/plain" => respond(&mut stream, "200 OK", &plain("\"p\""), &playlist),
        "/gzip" | "/deflate" => {
            let (gzip, zlib) = encoded_playlist();
            let body = if route == "/gzip" { gzip } else { zlib };
            let mut headers = plain("\"z\"");
            headers.push(("Content-Encoding", route[1..].to_string()));
            respond(&mut stream, "200 OK", &headers, body)
        }
        "/slow" => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                playlist.len()
            )?;
            for chunk in playlist.chunks(playlist.len() / 20 + 1) {
                stream.write_all(chunk)?;
                stream.flush()?;
                std::thread::sleep(Duration::from_millis(40));
            }
            Ok(())
        }
        "/chunked" => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            )?;
            for chunk in playlist.chunks(7919) {
                write!(stream, "{:x}\r\n", chunk.len())?;
                stream.write_all(chunk)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
            stream.flush()
        }
        "/redirect" => respond(
            &mut stream,
            "302 Found",
            &[("Location", "/plain".to_string())],
            b"",
        ),
        "/flaky" if flaky > 0 => respond(&mut stream, "503 Service Unavailable", &[], b"busy"),
        "/flaky" => respond(&mut stream, "200 OK", &plain("\"f\""), &playlist),
        "/switch" => answer_switch(&mut stream, mode, &headers, &playlist),
        "/logo.png" | "/table.png" => respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "image/png".to_string())],
            LOGO,
        ),
        "/notimage" => respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "text/plain".to_string())],
            b"not a logo",
        ),
        _ => respond(&mut stream, "404 Not Found", &[], b"no such path"),
    }
}

fn answer_switch(
    stream: &mut TcpStream,
    mode: Mode,
    headers: &BTreeMap<String, String>,
    playlist: &[u8],
) -> std::io::Result<()> {
    let html = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>".as_slice();
    let m3u = |etag: &str| {
        vec![
            ("Content-Type", "audio/x-mpegurl".to_string()),
            ("ETag", etag.to_string()),
        ]
    };
    match mode {
        Mode::Good | Mode::GoodV2 => {
            let etag = if mode == Mode::Good {
                "\"v1\""
            } else {
                "\"v2\""
            };
            if headers.get("if-none-match").map(String::as_str) == Some(etag) {
                return respond(
                    stream,
                    "304 Not Modified",
                    &[("ETag", etag.to_string())],
                    b"",
                );
            }
            let body = if mode == Mode::Good {
                playlist.to_vec()
            } else {
                let last = find_last_entry(playlist);
                playlist[..last].to_vec()
            };
            respond(stream, "200 OK", &m3u(etag), &body)
        }
        Mode::ServerError => respond(stream, "500 Internal Server Error", &[], b"oops"),
        Mode::Html => respond(
            stream,
            "200 OK",
            &[("Content-Type", "text/html; charset=utf-8".to_string())],
            html,
        ),
        Mode::HtmlAsText => respond(
            stream,
            "200 OK",
            &[("Content-Type", "text/plain".to_string())],
            html,
        ),
        Mode::Truncated => {
            // Declares the whole length, sends 60% (cut inside an entry).
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                playlist.len()
            )?;
            stream.write_all(&playlist[..playlist.len() * 6 / 10 + 17])?;
            stream.flush()
        }
        Mode::Empty => respond(stream, "200 OK", &m3u("\"e\""), b""),
        Mode::Junk => respond(
            stream,
            "200 OK",
            &m3u("\"j\""),
            b"garbage\x00\x01 not a playlist\n",
        ),
        Mode::Shrunk => {
            let cut = nth_entry(playlist, 100);
            respond(stream, "200 OK", &m3u("\"s\""), &playlist[..cut])
        }
        Mode::Stall => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                playlist.len()
            )?;
            stream.write_all(&playlist[..4096])?;
            stream.flush()?;
            std::thread::sleep(Duration::from_secs(12));
            Ok(())
        }
    }
}

/// Byte offset of the `n`th (0-based) `#EXTINF`.
fn nth_entry(playlist: &[u8], n: usize) -> usize {
    playlist
        .windows(7)
        .enumerate()
        .filter(|(_, w)| *w == b"#EXTINF")
        .nth(n)
        .unwrap()
        .0
}

fn find_last_entry(playlist: &[u8]) -> usize {
    playlist.windows(7).rposition(|w| w == b"#EXTINF").unwrap()
}

/// A native-only config (no plugins) with one URL source and its settings.
fn config(url: &str, extra_source: &str, last_good: &Path) -> Config {
    let text = format!(
        "[memory]\nforce_level = \"optimal\"\n\
         [proxy_generation.wasm_plugins]\nenabled = false\n\
         [[sources]]\nname = \"provider\"\nurl = {url:?}\n{retries}read_timeout_seconds = 5\n\
         retry_backoff_ms = 10\n{extra_source}\n\
         [last_good]\ndirectory = {:?}\n",
        last_good.display().to_string(),
        retries = if extra_source.contains("retries") {
            ""
        } else {
            "retries = 0\n"
        },
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One run: the playlist written and the source's report.
fn run(config: &Config) -> m3u_plugin_host::Result<(Vec<u8>, SourceReport)> {
    let inputs = Inputs::from_config(config)?;
    let (sources, mut reports) = inputs.open()?;
    let mut pipeline = Pipeline::new(config.clone())?;
    let mut out = Vec::new();
    pipeline.run(sources, &mut M3uSink::new(&mut out))?;
    Ok((out, reports.remove(0)))
}

/// The same run with the playlist as a file source.
fn run_from_file(last_good: &Path) -> Vec<u8> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(PLAYLIST);
    let text = format!(
        "[memory]\nforce_level = \"optimal\"\n\
         [proxy_generation.wasm_plugins]\nenabled = false\n\
         [[sources]]\npath = {:?}\n[last_good]\ndirectory = {:?}\n",
        file.display().to_string(),
        last_good.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap();
    run(&config).unwrap().0
}

#[test]
fn url_sources_deliver_every_channel_plain_gzip_deflate_chunked_slowly_and_redirected() {
    let origin = Origin::start();
    let expected = run_from_file(&scratch_dir("file"));
    assert_eq!(entries(&expected), entries(&playlist_bytes()));
    for path in [
        "/plain",
        "/gzip",
        "/deflate",
        "/chunked",
        "/slow",
        "/redirect",
    ] {
        let dir = scratch_dir("ok");
        let config = config(
            &origin.url(path),
            "user_agent = \"VLC/3.0.20 LibVLC/3.0.20\"\nheaders = { Referer = \"http://portal/\" }",
            &dir,
        );
        let (out, report) = run(&config).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(report.status, SourceStatus::Fresh, "{path}: {report:?}");
        assert!(
            out == expected,
            "{path}: the playlist differs from the file run"
        );
        let seen = origin.requests_to(path);
        let last = seen.last().unwrap();
        assert_eq!(last["user-agent"], "VLC/3.0.20 LibVLC/3.0.20", "{path}");
        assert_eq!(last["referer"], "http://portal/", "{path}");
        assert!(last["accept-encoding"].contains("gzip"), "{path}");
    }
}

#[test]
fn a_bad_download_keeps_the_last_good_copy_and_says_why() {
    let origin = Origin::start();
    let dir = scratch_dir("switch");
    let config = config(&origin.url("/switch"), "", &dir);
    let (good, report) = run(&config).unwrap();
    assert_eq!(report.status, SourceStatus::Fresh);
    assert_eq!(report.channels, Some(entries(&playlist_bytes()) as u64));

    // The ETag is sent back; 304 keeps the copy.
    let (again, report) = run(&config).unwrap();
    assert_eq!(report.status, SourceStatus::Unchanged, "{report:?}");
    assert_eq!(again, good);
    assert_eq!(
        origin.requests_to("/switch").last().unwrap()["if-none-match"],
        "\"v1\""
    );

    for (mode, reason) in [
        (Mode::ServerError, "HTTP 500"),
        (Mode::Html, "HTML"),
        (Mode::HtmlAsText, "HTML"),
        (Mode::Truncated, "broke off"),
        (Mode::Empty, "empty"),
        (Mode::Junk, "no channel"),
        (Mode::Shrunk, "shrank from 10525 to 100"),
        (Mode::Stall, "broke off"),
    ] {
        origin.set_mode(mode);
        let (out, report) = run(&config).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(report.status, SourceStatus::Stale, "{mode:?}: {report:?}");
        let why = report.reason.clone().unwrap();
        assert!(why.contains(reason), "{mode:?}: {why}");
        assert!(out == good, "{mode:?}: the last good copy was not what ran");
    }

    // A good new version replaces the copy.
    origin.set_mode(Mode::GoodV2);
    let (out, report) = run(&config).unwrap();
    assert_eq!(report.status, SourceStatus::Fresh);
    assert_eq!(entries(&out), entries(&good) - 1);
}

#[test]
fn without_a_last_good_copy_a_bad_source_fails_the_run_with_what_to_do() {
    let origin = Origin::start();
    origin.set_mode(Mode::Html);
    let config = config(&origin.url("/switch"), "", &scratch_dir("none"));
    let error = run(&config).unwrap_err().to_string();
    assert!(
        error.contains("source provider")
            && error.contains("HTML")
            && error.contains("no last good copy"),
        "{error}"
    );
}

#[test]
fn retries_are_bounded_and_a_flaky_server_is_retried() {
    let origin = Origin::start();
    origin.state.lock().unwrap().flaky_failures = 2;
    let config_flaky = config(&origin.url("/flaky"), "retries = 2", &scratch_dir("flaky"));
    let (out, report) = run(&config_flaky).unwrap();
    assert_eq!(report.status, SourceStatus::Fresh);
    assert_eq!(entries(&out), entries(&playlist_bytes()));
    assert_eq!(origin.requests_to("/flaky").len(), 3);

    origin.set_mode(Mode::ServerError);
    let dir = scratch_dir("bounded");
    let config_bounded = config(&origin.url("/switch"), "retries = 3", &dir);
    let error = run(&config_bounded).unwrap_err().to_string();
    assert!(error.contains("gave up after 4 attempts"), "{error}");
    assert_eq!(origin.requests_to("/switch").len(), 4);
}

#[test]
fn a_body_over_max_bytes_is_refused() {
    let origin = Origin::start();
    let config = config(
        &origin.url("/gzip"),
        "max_bytes = \"1MB\"",
        &scratch_dir("limit"),
    );
    let error = run(&config).unwrap_err().to_string();
    assert!(error.contains("larger than max_bytes = 1048576"), "{error}");
}

#[test]
fn credentials_stay_out_of_logs_stats_and_file_names_and_fail_on_stale_fails() {
    let origin = Origin::start();
    let dir = scratch_dir("cli");
    let output = dir.join("playlist.m3u");
    let url = format!(
        "{}?username=joe&password=s3cr3tpw&type=m3u_plus",
        origin.url("/switch")
    );
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        "[memory]\nforce_level = \"optimal\"\n[proxy_generation.wasm_plugins]\nenabled = false\n",
    )
    .unwrap();
    let cli = |extra: &[&str]| {
        let stats = dir.join("stats.json");
        let result = std::process::Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
            .args(["run", "--config"])
            .arg(&config_path)
            .args(["--input", &url, "--output"])
            .arg(&output)
            .arg("--stats-json")
            .arg(&stats)
            .args(extra)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        let stats = std::fs::read_to_string(&stats).unwrap_or_default();
        (result, stats)
    };
    let (first, stats) = cli(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stats.contains("\"status\": \"fresh\""), "{stats}");
    let good = std::fs::read(&output).unwrap();

    origin.set_mode(Mode::ServerError);
    let (stale, stats) = cli(&[]);
    let stderr = String::from_utf8_lossy(&stale.stderr).into_owned();
    assert!(stale.status.success(), "{stderr}");
    assert!(stderr.contains("STALE"), "{stderr}");
    assert!(stats.contains("\"status\": \"stale\""), "{stats}");
    assert_eq!(std::fs::read(&output).unwrap(), good);

    let (refused, _) = cli(&["--fail-on-stale"]);
    let refused_err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1), "{refused_err}");
    assert!(
        refused_err.contains("not writing the playlist"),
        "{refused_err}"
    );
    assert_eq!(
        std::fs::read(&output).unwrap(),
        good,
        "the output was left as it was"
    );

    // The secret is nowhere: not in the logs, the stats, the last-good
    // directory's names or descriptions.
    let mut seen = vec![
        stderr,
        refused_err,
        stats,
        String::from_utf8_lossy(&first.stderr).into_owned(),
    ];
    let last_good = dir.join("playlist.m3u.last-good");
    for entry in std::fs::read_dir(&last_good).unwrap() {
        let path = entry.unwrap().path();
        seen.push(path.display().to_string());
        if path.extension().is_some_and(|e| e == "json") {
            seen.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    for text in &seen {
        assert!(
            !text.contains("s3cr3tpw") && !text.contains("joe"),
            "{text}"
        );
    }
    assert!(seen.iter().any(|t| t.contains("password=***")), "{seen:?}");
}

/// Rewrites `path` in place with `bytes` and an mtime `age` in the past.
fn rewrite(path: &Path, bytes: &[u8], age: Duration) {
    super::common::write_with_mtime(path, bytes, std::time::SystemTime::now() - age);
}

fn file_config(source: &Path, last_good: &Path) -> Config {
    let text = format!(
        "[memory]\nforce_level = \"optimal\"\n\
         [proxy_generation.wasm_plugins]\nenabled = false\n\
         [[sources]]\nname = \"local\"\npath = {:?}\n\
         [last_good]\ndirectory = {:?}\nsettle_ms = 100\n",
        source.display().to_string(),
        last_good.display().to_string()
    );
    Config::from_toml(&text).unwrap()
}

#[test]
fn a_file_source_that_is_emptied_truncated_junk_or_still_being_written_is_not_used() {
    let dir = scratch_dir("file-source");
    let source = dir.join("provider.m3u");
    let playlist = playlist_bytes();
    rewrite(&source, &playlist, Duration::from_secs(60));
    let config = file_config(&source, &dir.join("last-good"));
    let (good, report) = run(&config).unwrap();
    assert_eq!(report.status, SourceStatus::Fresh);
    let (_, report) = run(&config).unwrap();
    assert_eq!(
        report.status,
        SourceStatus::Unchanged,
        "same stamp: not read again"
    );

    let truncated = &playlist[..nth_entry(&playlist, 389) + 20];
    for (bytes, reason) in [
        (&b""[..], "empty"),
        (truncated, "shrank from 10525 to 390"),
        (&b"junk\n"[..], "no channel"),
    ] {
        rewrite(&source, bytes, Duration::from_secs(30));
        let (out, report) = run(&config).unwrap();
        assert_eq!(report.status, SourceStatus::Stale, "{reason}: {report:?}");
        assert!(
            report.reason.as_deref().unwrap().contains(reason),
            "{report:?}"
        );
        assert!(out == good, "{reason}");
    }

    // Written to while it is looked at: waited for, then not used.
    rewrite(&source, &playlist, Duration::from_secs(60));
    run(&config).unwrap();
    let writer_path = source.clone();
    let writer = std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&writer_path)
            .unwrap();
        for _ in 0..200 {
            file.write_all(b"#EXTINF:-1,More\nhttp://more\n").unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    std::thread::sleep(Duration::from_millis(30));
    let (out, report) = run(&config).unwrap();
    writer.join().unwrap();
    assert_eq!(report.status, SourceStatus::Stale, "{report:?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("still being written"),
        "{report:?}"
    );
    assert!(out == good);
}

#[test]
fn serve_keeps_every_channel_while_its_source_is_swapped_for_bad_versions() {
    use m3u_plugin_host::serve::Server;
    let dir = scratch_dir("serve");
    let source = dir.join("provider.m3u");
    let playlist = playlist_bytes();
    let channels = entries(&playlist);
    rewrite(&source, &playlist, Duration::from_secs(60));
    let config = file_config(&source, &dir.join("last-good"));
    let options = serve_options();
    let server = Server::start(config, options).unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut fetched = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = super::serve::get(addr, "/playlist.m3u").2;
                    assert_eq!(entries(&body), channels, "a fetched playlist lost channels");
                    fetched += 1;
                }
                fetched
            })
        })
        .collect();
    let truncated = playlist[..playlist.len() / 3].to_vec();
    for (bytes, reason) in [
        (Vec::new(), "empty"),
        (truncated, "shrank"),
        (b"\x00junk line\n".to_vec(), "no channel"),
    ] {
        let generations = server.snapshot().generations;
        rewrite(&source, &bytes, Duration::from_secs(5));
        let health = wait_for(|| {
            let (_, _, body) = super::serve::get(addr, "/health");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (json["generations"].as_u64().unwrap() > generations).then_some(json)
        });
        assert_eq!(health["status"], "degraded", "{health:#}");
        assert_eq!(health["stale_sources"][0], "local", "{health:#}");
        let why = health["sources"][0]["reason"].as_str().unwrap();
        assert!(why.contains(reason), "{why}");
        let metrics = String::from_utf8(super::serve::get(addr, "/metrics").2).unwrap();
        assert!(
            metrics.contains("m3u_source_stale{source=\"local\"} 1"),
            "{metrics}"
        );
    }
    rewrite(&source, &playlist, Duration::from_secs(1));
    let health = wait_for(|| {
        let json: serde_json::Value =
            serde_json::from_slice(&super::serve::get(addr, "/health").2).unwrap();
        (json["stale_sources"].as_array().unwrap().is_empty()).then_some(json)
    });
    assert_eq!(health["status"], "ok", "{health:#}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fetched: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(fetched > 0);
    let metrics = String::from_utf8(super::serve::get(addr, "/metrics").2).unwrap();
    assert!(
        metrics.contains("m3u_source_stale_total{source=\"local\"} 3"),
        "{metrics}"
    );
    server.shutdown();
}

fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[test]
fn serve_caches_the_logos_logo_mapper_points_at_and_redirects_the_rest() {
    use m3u_plugin_host::serve::Server;
    let origin = Origin::start();
    let dir = scratch_dir("logos");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(
        plugins.join("logo_mapper.wasm"),
        super::common::example_plugin("logo_mapper.wasm").0,
    )
    .unwrap();
    let logo = origin.url("/logo.png");
    let table = origin.url("/table.png");
    let not_image = origin.url("/notimage");
    let source = dir.join("provider.m3u");
    std::fs::write(
        &source,
        format!(
            "#EXTM3U\n#EXTINF:-1 tvg-id=\"a\" tvg-logo=\"{logo}\",A\nhttp://a\n\
             #EXTINF:-1 tvg-id=\"b\" tvg-logo=\"{not_image}\",B\nhttp://b\n\
             #EXTINF:-1 tvg-id=\"table-id\" tvg-logo=\"\",C\nhttp://c\n"
        ),
    )
    .unwrap();
    let text = format!(
        "[memory]\nforce_level = \"optimal\"\n[proxy]\nbase_url = \"http://proxy.example\"\n\
         [[sources]]\nname = \"local\"\npath = {:?}\n[last_good]\ndirectory = {:?}\n\
         [serve]\nlogo_cache_directory = {:?}\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\ndata_mapping = [\"logo_mapper\"]\n\
         [plugins.logo_mapper]\nby_id = \"table-id | {table}\"\n",
        source.display().to_string(),
        dir.join("last-good").display().to_string(),
        dir.join("logo-cache").display().to_string(),
        plugins.display().to_string(),
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let options = serve_options();
    let server = Server::start(config, options).unwrap();
    let addr = server.local_addr();
    let served = String::from_utf8(super::serve::get(addr, "/playlist.m3u").2).unwrap();
    for url in [&logo, &not_image, &table] {
        let path = format!("/logos/{}", sha256_hex(url));
        assert!(served.contains(&path), "{url} not rewritten: {served}");
    }

    // The image is downloaded once and served from the cache.
    let cached = wait_for(|| {
        let (status, headers, body) =
            super::serve::get(addr, &format!("/logos/{}", sha256_hex(&logo)));
        (status == 200).then_some((headers, body))
    });
    assert_eq!(cached.1, LOGO);
    assert!(
        cached
            .0
            .contains(&("content-type".into(), "image/png".into())),
        "{:?}",
        cached.0
    );
    // The table's logo (never in the source) too.
    wait_for(|| {
        let status = super::serve::get(addr, &format!("/logos/{}", sha256_hex(&table))).0;
        (status == 200).then_some(())
    });
    assert_eq!(origin.requests_to("/logo.png").len(), 1, "downloaded once");

    // Not an image: redirected to where it is.
    let (status, headers, _) =
        super::serve::get(addr, &format!("/logos/{}", sha256_hex(&not_image)));
    assert_eq!(status, 302);
    assert!(
        headers.contains(&("location".into(), not_image.clone())),
        "{headers:?}"
    );
    wait_for(|| (!origin.requests_to("/notimage").is_empty()).then_some(()));
    assert_eq!(
        super::serve::get(addr, &format!("/logos/{}", sha256_hex(&not_image))).0,
        302,
        "still redirected after the download was refused"
    );
    assert_eq!(
        super::serve::get(addr, &format!("/logos/{}", "0".repeat(64))).0,
        404
    );
    assert_eq!(super::serve::get(addr, "/logos/nothex").0, 404);
    server.shutdown();
}

/// `serve` on a free loopback port, the config's sources, a quick watch.
fn serve_options() -> m3u_plugin_host::serve::ServeOptions {
    m3u_plugin_host::serve::ServeOptions {
        inputs: Vec::new(),
        listen: "127.0.0.1:0".into(),
        regenerate_interval: None,
        watch_interval: Duration::from_millis(50),
    }
}

#[test]
fn an_unwritable_last_good_directory_does_not_stop_the_run() {
    let dir = scratch_dir("unwritable");
    let source = dir.join("provider.m3u");
    rewrite(&source, &playlist_bytes(), Duration::from_secs(60));
    // Under a regular file: no directory can be made there, not even by root.
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let config = file_config(&source, &blocker.join("last-good"));
    let (out, report) = run(&config).unwrap();
    assert_eq!(
        report.status,
        SourceStatus::Fresh,
        "checked in place: {report:?}"
    );
    assert_eq!(entries(&out), entries(&playlist_bytes()));
    // Without copies a bad source has nothing to stand in for it.
    rewrite(&source, b"", Duration::from_secs(30));
    let error = run(&config).unwrap_err().to_string();
    assert!(
        error.contains("empty") && error.contains("no last good copy"),
        "{error}"
    );
}
