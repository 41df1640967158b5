//! HTTP(S) sources: one download with the source's settings (user agent,
//! headers, timeouts, redirects, a body-size limit, gzip and deflate,
//! conditional requests), bounded retries with back-off, and [`mask_url`],
//! which keeps credentials out of every message.

use std::io::{Read, Write};
use std::time::Duration;

use super::check::Scanner;
use super::client::{self, Failure};
use crate::config::SourceConfig;

/// `User-Agent` when a source sets none.
pub const DEFAULT_USER_AGENT: &str = concat!("m3u-plugin-host/", env!("CARGO_PKG_VERSION"));

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The validators of a last good copy, sent as `If-None-Match` and
/// `If-Modified-Since`.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    /// The `ETag` it was served with.
    pub etag: Option<String>,
    /// Its `Last-Modified`.
    pub last_modified: Option<String>,
}

/// What a download gave.
pub enum Fetched {
    /// 304: the last good copy is still current.
    NotModified,
    /// The body is in the output, scanned; the validators to send next time.
    Body(Validators),
}

/// A response body: decoded, limited to `max_bytes`.
type BodyReader = Box<dyn Read + Send>;

/// What one request got.
enum Answer {
    NotModified,
    Body(BodyReader, Validators),
}

/// A URL with its credentials masked: the user and password before the
/// host, and every query value (`get.php?username=***&password=***`).
pub fn mask_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((before, _)) => (before, "#***"),
        None => (url, ""),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (before_fragment, None),
    };
    let mut masked = String::with_capacity(url.len());
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            masked.push_str(scheme);
            masked.push_str("://");
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    masked.push_str("***@");
                    masked.push_str(host);
                }
                None => masked.push_str(authority),
            }
            masked.push_str(path);
        }
        None => masked.push_str(base),
    }
    if let Some(query) = query {
        masked.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=***"),
                None => pair.to_string(),
            })
            .collect();
        masked.push_str(&pairs.join("&"));
    }
    masked.push_str(fragment);
    masked
}

/// Downloads `url` into `out` (from its start; `out` is emptied before
/// each attempt), scanning every byte with a fresh scanner per attempt.
/// Sends the validators of the last good copy when given. Retries per the
/// source's settings.
///
/// # Errors
/// Why the last attempt failed, with the number of attempts; never the
/// URL's credentials.
pub fn download(
    url: &str,
    settings: &SourceConfig,
    validators: Option<&Validators>,
    out: &mut std::fs::File,
    scanner: &mut Scanner,
) -> Result<Fetched, String> {
    with_retries(url, settings, || {
        *scanner = Scanner::default();
        out.set_len(0)
            .and_then(|()| rewind(out))
            .map_err(|error| Failure::Final(format!("cannot write the download: {error}")))?;
        attempt_download(url, settings, validators, out, scanner)
    })
}

/// Opens `url` for reading straight into the M3U reader (no copy, no
/// check, no retry once the body has started).
///
/// # Errors
/// As [`download`].
pub fn open_stream(url: &str, settings: &SourceConfig) -> Result<BodyReader, String> {
    with_retries(url, settings, || match request(url, settings, None)? {
        Answer::Body(reader, _) => Ok(reader),
        Answer::NotModified => Err(Failure::Final(
            "answered 304 Not Modified to a plain request".into(),
        )),
    })
}

/// Runs `attempt` up to `retries + 1` times while it fails in a way another
/// attempt may fix, waiting `retry_backoff_ms`, doubled each time, between.
fn with_retries<T>(
    url: &str,
    settings: &SourceConfig,
    mut attempt: impl FnMut() -> Result<T, Failure>,
) -> Result<T, String> {
    let attempts = settings.retries.saturating_add(1);
    let mut last = String::new();
    for number in 0..attempts {
        if number > 0 {
            let backoff = Duration::from_millis(settings.retry_backoff_ms)
                .saturating_mul(1 << (number - 1).min(16))
                .min(MAX_BACKOFF);
            log::warn!(
                "{}: {last}; attempt {} of {attempts} in {} ms",
                mask_url(url),
                number + 1,
                backoff.as_millis()
            );
            std::thread::sleep(backoff);
        }
        match attempt() {
            Ok(value) => return Ok(value),
            Err(Failure::Final(message)) => return Err(message),
            Err(Failure::Retry(message)) => last = message,
        }
    }
    Err(if attempts > 1 {
        format!("{last} (gave up after {attempts} attempts)")
    } else {
        last
    })
}

fn rewind(file: &mut std::fs::File) -> std::io::Result<()> {
    std::io::Seek::rewind(file)
}

/// One request: the body and its validators, or 304.
fn request(
    url: &str,
    settings: &SourceConfig,
    validators: Option<&Validators>,
) -> Result<Answer, Failure> {
    let user_agent = settings.user_agent.as_deref().unwrap_or(DEFAULT_USER_AGENT);
    let mut headers: Vec<(&str, &str)> = settings
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if let Some(validators) = validators {
        if let Some(etag) = &validators.etag {
            headers.push(("If-None-Match", etag));
        }
        if let Some(date) = &validators.last_modified {
            headers.push(("If-Modified-Since", date));
        }
    }
    let request = client::Request {
        user_agent,
        headers,
        connect_timeout: Duration::from_secs(settings.connect_timeout_seconds.max(1)),
        read_timeout: Duration::from_secs(settings.read_timeout_seconds.max(1)),
        max_redirects: settings.max_redirects,
    };
    let response = client::get(url, &request)?;
    let status = response.status;
    if status == 304 {
        return Ok(Answer::NotModified);
    }
    let reason = || format!("the server answered HTTP {status} {}", response.reason);
    if status >= 500 || status == 429 {
        return Err(Failure::Retry(reason()));
    }
    if !(200..300).contains(&status) {
        return Err(Failure::Final(reason()));
    }
    if response
        .header("content-type")
        .is_some_and(|kind| kind.to_ascii_lowercase().contains("html"))
    {
        return Err(Failure::Final(
            "it answered an HTML page (Content-Type: text/html), not a playlist".into(),
        ));
    }
    let validators = Validators {
        etag: response.header("etag").map(str::to_string),
        last_modified: response.header("last-modified").map(str::to_string),
    };
    let body = Box::new(LimitedRead {
        inner: response.body,
        left: settings.max_bytes,
    });
    Ok(Answer::Body(body, validators))
}

fn attempt_download(
    url: &str,
    settings: &SourceConfig,
    validators: Option<&Validators>,
    out: &mut std::fs::File,
    scanner: &mut Scanner,
) -> Result<Fetched, Failure> {
    let (mut reader, validators) = match request(url, settings, validators)? {
        Answer::NotModified => return Ok(Fetched::NotModified),
        Answer::Body(reader, validators) => (reader, validators),
    };
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(read_failure(settings, &error)),
        };
        scanner.feed(&buffer[..read]);
        out.write_all(&buffer[..read])
            .map_err(|error| Failure::Final(format!("cannot write the download: {error}")))?;
    }
    out.flush()
        .map_err(|error| Failure::Final(format!("cannot write the download: {error}")))?;
    Ok(Fetched::Body(validators))
}

fn read_failure(settings: &SourceConfig, error: &std::io::Error) -> Failure {
    if error.kind() == std::io::ErrorKind::FileTooLarge {
        return Failure::Final(format!(
            "its body is larger than max_bytes = {} bytes (raise max_bytes for this source if \
             the playlist really is that large)",
            settings.max_bytes
        ));
    }
    let message = match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "no data within read_timeout_seconds".to_string()
        }
        _ => error.to_string(),
    };
    Failure::Retry(format!("the download broke off: {message}"))
}

/// Caps a decoded body at `max_bytes`.
struct LimitedRead<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LimitedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more would go past the limit: say so rather than end.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    "body over max_bytes",
                )),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        self.left -= read as u64;
        Ok(read)
    }
}

/// A small download in memory (a logo): the body and its `Content-Type`.
/// No retries; redirects followed.
///
/// # Errors
/// Why it failed; a body over `max_bytes`; never the URL's credentials.
pub fn fetch_small(
    url: &str,
    max_bytes: u64,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<(Vec<u8>, String), String> {
    let request = client::Request {
        user_agent: DEFAULT_USER_AGENT,
        headers: Vec::new(),
        connect_timeout,
        read_timeout,
        max_redirects: 5,
    };
    let message = |failure: Failure| match failure {
        Failure::Retry(message) | Failure::Final(message) => message,
    };
    let response = client::get(url, &request).map_err(message)?;
    if !(200..300).contains(&response.status) {
        return Err(format!(
            "the server answered HTTP {} {}",
            response.status, response.reason
        ));
    }
    let kind = response.header("content-type").unwrap_or("").to_string();
    let mut body = Vec::new();
    LimitedRead {
        inner: response.body,
        left: max_bytes,
    }
    .read_to_end(&mut body)
    .map_err(|error| match error.kind() {
        std::io::ErrorKind::FileTooLarge => format!("larger than {max_bytes} bytes"),
        _ => format!("the download broke off: {error}"),
    })?;
    Ok((body, kind))
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn credentials_are_masked() {
        assert_eq!(
            mask_url(
                "http://provider.example:8080/get.php?username=joe&password=s3cret&type=m3u_plus"
            ),
            "http://provider.example:8080/get.php?username=***&password=***&type=***"
        );
        assert_eq!(
            mask_url("https://joe:s3cret@provider.example/list.m3u#token=x"),
            "https://***@provider.example/list.m3u#***"
        );
        assert_eq!(
            mask_url("http://provider.example/list.m3u"),
            "http://provider.example/list.m3u"
        );
        assert_eq!(mask_url("http://h/p?flag&key="), "http://h/p?flag&key=***");
    }
}
