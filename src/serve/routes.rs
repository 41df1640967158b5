//! The HTTP side of `serve`: the worker threads, routing a request to its
//! [`Reply`] from the shared state only, and the `/health` JSON
//! ([`render_health`], serialised from [`Health`]).

use std::io::Cursor;
use std::sync::Arc;

use serde::Serialize;

use super::logos::Logo;
use super::{render_metrics, PluginSnapshot, Served, Shared, Snapshot, STOP_CHECK};
use crate::pipeline::PluginStats;

/// Takes requests until the stop flag is set.
pub(super) fn http_worker(http: &tiny_http::Server, shared: &Shared) {
    while !shared.stopped() {
        match http.recv_timeout(STOP_CHECK) {
            Ok(Some(request)) => {
                let reply = route(&Asked::of(&request), shared);
                log::debug!("{} {} -> {}", request.method(), request.url(), reply.status);
                if let Err(error) = request.respond(reply.into_response()) {
                    log::debug!("could not send a response: {error}");
                }
            }
            Ok(None) => {}
            Err(error) => {
                log::warn!("http listener: {error}");
                std::thread::sleep(STOP_CHECK);
            }
        }
    }
}

/// What a request asks, as far as routing cares.
struct Asked<'a> {
    method: &'a tiny_http::Method,
    url: &'a str,
    if_none_match: Option<&'a str>,
    if_modified_since: Option<&'a str>,
    /// `Accept-Encoding` lists gzip (with a non-zero q).
    accepts_gzip: bool,
}

impl<'a> Asked<'a> {
    fn of(request: &'a tiny_http::Request) -> Asked<'a> {
        let header = |name: &'static str| {
            request
                .headers()
                .iter()
                .find(|header| header.field.equiv(name))
                .map(|header| header.value.as_str())
        };
        Asked {
            method: request.method(),
            url: request.url(),
            if_none_match: header("If-None-Match"),
            if_modified_since: header("If-Modified-Since"),
            accepts_gzip: header("Accept-Encoding").is_some_and(accepts_gzip),
        }
    }
}

/// `gzip` in an `Accept-Encoding` list, not refused with `q=0`.
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let refused = parts.any(|parameter| {
            parameter
                .strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// A response body: a shared generation's bytes (plain or gzip) without
/// copying them, or owned bytes.
enum Body {
    Plain(Arc<Served>),
    Gzip(Arc<Served>),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Plain(served) => &served.plain,
            Body::Gzip(served) => &served.gzip,
            Body::Owned(bytes) => bytes,
        }
    }
}

/// What a request is answered with.
struct Reply {
    status: u16,
    content_type: String,
    body: Body,
    allow_get: bool,
    /// Further headers (validators, encoding).
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn text(status: u16, message: &str) -> Reply {
        Reply::of(
            status,
            "text/plain; charset=utf-8",
            Body::Owned(format!("{message}\n").into_bytes()),
        )
    }

    fn of(status: u16, content_type: &str, body: Body) -> Reply {
        Reply {
            status,
            content_type: content_type.to_string(),
            body,
            allow_get: false,
            headers: Vec::new(),
        }
    }

    /// The playlist: 304 when the client has it, gzip when it takes it.
    fn playlist(served: Arc<Served>, asked: &Asked<'_>) -> Reply {
        let mut headers = vec![
            ("ETag", served.etag.clone()),
            ("Last-Modified", served.last_modified.clone()),
            ("Vary", "Accept-Encoding".to_string()),
        ];
        if served.not_modified(asked.if_none_match, asked.if_modified_since) {
            let mut reply = Reply::of(304, "audio/x-mpegurl", Body::Owned(Vec::new()));
            reply.headers = headers;
            return reply;
        }
        let body = if asked.accepts_gzip && !served.gzip.is_empty() {
            headers.push(("Content-Encoding", "gzip".to_string()));
            Body::Gzip(served)
        } else {
            Body::Plain(served)
        };
        let mut reply = Reply::of(200, "audio/x-mpegurl", body);
        reply.headers = headers;
        reply
    }

    fn into_response(self) -> tiny_http::Response<Cursor<Body>> {
        // Values can come from elsewhere (a logo's URL and content type):
        // bytes outside visible ASCII are percent-encoded, and a header
        // tiny_http still refuses is left out rather than sent broken.
        let header = |name: &str, value: &str| {
            tiny_http::Header::from_bytes(name.as_bytes(), visible_ascii(value).as_bytes()).ok()
        };
        let mut headers = vec![header("Content-Type", &self.content_type)];
        if !self
            .headers
            .iter()
            .any(|(name, _)| *name == "Cache-Control")
        {
            headers.push(header("Cache-Control", "no-cache"));
        }
        if self.allow_get {
            headers.push(header("Allow", "GET, HEAD"));
        }
        for (name, value) in &self.headers {
            headers.push(header(name, value));
        }
        let headers: Vec<tiny_http::Header> = headers.into_iter().flatten().collect();
        let length = self.body.as_ref().len();
        tiny_http::Response::new(
            tiny_http::StatusCode(self.status),
            headers,
            Cursor::new(self.body),
            Some(length),
            None,
        )
        // Always send Content-Length, never chunked.
        .with_chunked_threshold(usize::MAX)
    }
}

/// `value` with every byte outside visible ASCII (and space) as `%XX`.
fn visible_ascii(value: &str) -> std::borrow::Cow<'_, str> {
    if value.bytes().all(|byte| (b' '..=b'~').contains(&byte)) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut encoded = String::with_capacity(value.len() + 16);
    for byte in value.bytes() {
        if (b' '..=b'~').contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    std::borrow::Cow::Owned(encoded)
}

/// Answers one request from the shared state. `HEAD` is answered like
/// `GET` (tiny_http sends the headers without the body).
fn route(asked: &Asked<'_>, shared: &Shared) -> Reply {
    let url = asked.url;
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if let Some(hash) = path.strip_prefix("/logos/") {
        return logo(hash, shared);
    }
    if !matches!(path, "/playlist.m3u" | "/health" | "/metrics") {
        return Reply::text(404, "not found: try /playlist.m3u, /health or /metrics");
    }
    if !matches!(
        asked.method,
        tiny_http::Method::Get | tiny_http::Method::Head
    ) {
        let mut reply = Reply::text(405, "method not allowed: use GET or HEAD");
        reply.allow_get = true;
        return reply;
    }
    match path {
        "/playlist.m3u" => match shared.playlist() {
            Some(served) => Reply::playlist(served, asked),
            None => Reply::text(503, "the playlist has not been generated yet"),
        },
        "/health" => Reply::of(
            200,
            "application/json",
            Body::Owned(render_health(&shared.snapshot()).into_bytes()),
        ),
        _ => Reply::of(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            Body::Owned(render_metrics(&shared.snapshot()).into_bytes()),
        ),
    }
}

/// `/logos/{sha256}`: the cached logo, or a redirect to the original.
fn logo(hash: &str, shared: &Shared) -> Reply {
    let answer = shared
        .logos
        .as_ref()
        .map_or(Logo::Unknown, |logos| logos.answer(hash));
    match answer {
        Logo::Cached(bytes, kind) => {
            let mut reply = Reply::of(200, &kind, Body::Owned(bytes));
            reply.headers = vec![("Cache-Control", "public, max-age=86400".to_string())];
            reply
        }
        Logo::Redirect(url) => {
            let mut reply = Reply::text(302, "the logo is not cached: see Location");
            reply.headers = vec![("Location", url)];
            reply
        }
        Logo::Unknown => Reply::text(404, "no logo of the playlist has this hash"),
    }
}

/// The `/health` document: the snapshot's counts and state, two figures of
/// the last successful run, and every loaded plugin.
#[derive(Serialize)]
struct Health<'a> {
    /// `"ok"` or `"degraded"` ([`Snapshot::status`]).
    status: &'static str,
    generations: u64,
    failures: u64,
    last_error: Option<&'a str>,
    last_generation_failed: bool,
    seconds_since_last_success: Option<f64>,
    playlist_bytes: u64,
    /// Of the last successful run ([`crate::pipeline::RunStats`]).
    channels_written: Option<u64>,
    /// Of the last successful run.
    memory_pressure: Option<&'a str>,
    plugin_load_errors: &'a [String],
    plugins: Vec<HealthPlugin<'a>>,
    /// How the last successful run read each source (`stale` ones with the
    /// reason: their last good copy was served).
    sources: &'a [crate::inputs::SourceReport],
    /// The names of the stale sources of the last successful run.
    stale_sources: Vec<&'a str>,
}

/// One plugin in `/health`: every key of its [`PluginStats`] (the same as in
/// `--stats-json`, counted since the file was loaded), its file and
/// signature state, and two keys `/health` has always had.
#[derive(Serialize)]
struct HealthPlugin<'a> {
    #[serde(flatten)]
    stats: &'a PluginStats,
    /// The file, as displayed (lossy for paths that are not UTF-8).
    path: String,
    /// `unsigned` or `signed`.
    signature: &'a str,
    /// The circuit state: the same as `disabled`.
    circuit_open: bool,
    /// `time_us` in seconds.
    time_seconds: f64,
}

impl<'a> HealthPlugin<'a> {
    fn of(plugin: &'a PluginSnapshot) -> Self {
        HealthPlugin {
            stats: &plugin.stats,
            path: plugin.path.display().to_string(),
            signature: &plugin.signature,
            circuit_open: plugin.stats.disabled,
            time_seconds: plugin.stats.time_seconds(),
        }
    }
}

impl<'a> Health<'a> {
    fn of(snapshot: &'a Snapshot) -> Self {
        let run = snapshot.last_run.as_ref();
        Health {
            status: snapshot.status(),
            generations: snapshot.generations,
            failures: snapshot.failures,
            last_error: snapshot.last_error.as_deref(),
            last_generation_failed: snapshot.last_generation_failed,
            seconds_since_last_success: snapshot.seconds_since_last_success(),
            playlist_bytes: snapshot.playlist_bytes,
            channels_written: run.map(|r| r.channels_written),
            memory_pressure: run.map(|r| r.memory_pressure.as_str()),
            plugin_load_errors: &snapshot.plugin_load_errors,
            plugins: snapshot.plugins.iter().map(HealthPlugin::of).collect(),
            sources: run.map_or(&[], |r| r.sources.as_slice()),
            stale_sources: snapshot
                .stale_sources()
                .into_iter()
                .map(|source| source.name.as_str())
                .collect(),
        }
    }
}

/// The `/health` JSON of a snapshot (pretty-printed, with a final newline).
pub fn render_health(snapshot: &Snapshot) -> String {
    let mut text =
        serde_json::to_string_pretty(&Health::of(snapshot)).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tests::snapshot;

    #[test]
    fn routes_answer_404_405_and_503_before_the_first_playlist() {
        let shared = Shared::default();
        let get = tiny_http::Method::Get;
        let ask = |method, url| Asked {
            method,
            url,
            if_none_match: None,
            if_modified_since: None,
            accepts_gzip: false,
        };
        assert_eq!(route(&ask(&get, "/playlist.m3u"), &shared).status, 503);
        assert_eq!(route(&ask(&get, "/nope"), &shared).status, 404);
        assert_eq!(route(&ask(&get, "/"), &shared).status, 404);
        let post = route(&ask(&tiny_http::Method::Post, "/playlist.m3u"), &shared);
        assert_eq!((post.status, post.allow_get), (405, true));
        *shared.playlist.write().unwrap() =
            Some(Arc::new(Served::new(b"#EXTM3U\n".to_vec(), None)));
        let reply = route(&ask(&get, "/playlist.m3u?x=1"), &shared);
        assert_eq!(
            (reply.status, reply.content_type.as_str()),
            (200, "audio/x-mpegurl")
        );
        assert_eq!(reply.body.as_ref(), b"#EXTM3U\n");
        let head = route(&ask(&tiny_http::Method::Head, "/playlist.m3u"), &shared);
        assert_eq!((head.status, head.headers.len()), (200, 3), "HEAD as GET");
        let health = route(&ask(&get, "/health"), &shared);
        let json: serde_json::Value = serde_json::from_slice(health.body.as_ref()).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["generations"], 0);
    }

    #[test]
    fn accept_encoding_is_read_with_its_q_values() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br, deflate"));
        assert!(!accepts_gzip(""));
    }

    #[test]
    fn health_reports_degraded_and_the_plugin_figures() {
        let json: serde_json::Value = serde_json::from_str(&render_health(&snapshot())).unwrap();
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["plugins"][0]["circuit_open"], true);
        assert_eq!(json["plugins"][0]["signature"], "unsigned");
        assert_eq!(json["last_error"], "boom");
        assert!(json["seconds_since_last_success"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn health_keeps_every_key_and_shows_the_plugin_stats() {
        let json: serde_json::Value = serde_json::from_str(&render_health(&snapshot())).unwrap();
        for key in [
            "status",
            "generations",
            "failures",
            "last_error",
            "last_generation_failed",
            "seconds_since_last_success",
            "playlist_bytes",
            "channels_written",
            "memory_pressure",
            "plugin_load_errors",
            "plugins",
            "sources",
            "stale_sources",
        ] {
            assert!(json.get(key).is_some(), "/health lost `{key}`: {json:#}");
        }
        assert_eq!(json["channels_written"], 10_000);
        assert_eq!(json["memory_pressure"], "high");
        let plugin = &json["plugins"][0];
        let expected = serde_json::json!({
            "name": "we\"ird\\na\nme",
            "version": "1.0.0",
            "path": "/p/weird.wasm",
            "calls": 12,
            "fuel": 18_446_744_073_709_551_615_u64,
            "failures": 3,
            "circuit_open": true,
            "last_error": null,
            "time_seconds": 1.5,
            "bytes_in": 5,
            "bytes_out": 6,
            "signature": "unsigned",
        });
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&plugin[key], value, "plugin key `{key}`: {plugin:#}");
        }
        // The rest of `PluginStats`, as in `--stats-json`.
        assert_eq!(plugin["disabled"], true);
        assert_eq!(plugin["time_us"], 1_500_000);
        assert!(plugin["failures_by_kind"].is_object());
        let empty: serde_json::Value =
            serde_json::from_str(&render_health(&Snapshot::default())).unwrap();
        assert_eq!(empty["channels_written"], serde_json::Value::Null);
        assert_eq!(empty["seconds_since_last_success"], serde_json::Value::Null);
        assert_eq!(empty["plugins"], serde_json::json!([]));
    }
}
