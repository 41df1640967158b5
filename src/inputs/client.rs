//! A small HTTP/1.1 client for source downloads: one `GET` per connection
//! (`Connection: close`), redirects, `Content-Length`, chunked and
//! close-delimited bodies (a body cut off before its end is an error, never
//! a short playlist), gzip and deflate, connect/read timeouts, user info as
//! Basic authentication. TLS (rustls) with the `https` feature.
//!
//! Hand-written because it is small: the well-kept clients (ureq with its
//! `http` types) cost ~140 KB more of the aarch64 CLI than this, which the
//! 4 MB budget did not have (BENCHMARKS.md, "CLI size").

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest status line plus headers accepted.
const MAX_HEAD: u64 = 64 << 10;

/// Why a request failed, and whether another attempt may help.
#[derive(Debug)]
pub enum Failure {
    /// A connection, timeout or transfer problem, or a 5xx/429 answer.
    Retry(String),
    /// A problem another attempt would meet again.
    Final(String),
}

/// What a request is sent with.
pub struct Request<'a> {
    /// `User-Agent`.
    pub user_agent: &'a str,
    /// Further headers, in order.
    pub headers: Vec<(&'a str, &'a str)>,
    /// Longest wait for the connection.
    pub connect_timeout: Duration,
    /// Longest wait for any read (and write).
    pub read_timeout: Duration,
    /// Redirects followed.
    pub max_redirects: u32,
}

/// A response: status, headers (lowercase names) and the decoded body.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    headers: Vec<(String, String)>,
    /// The body, framing removed and content decoding applied.
    pub body: Box<dyn Read + Send>,
}

impl Response {
    /// The first value of a header (`name` in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Where a URL points.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
    /// `Authorization: Basic …` from user info in the URL.
    basic: Option<String>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, Failure> {
        let bad = || Failure::Final("not a valid http:// or https:// URL".into());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(bad()),
        };
        let rest = rest.split('#').next().unwrap_or(rest);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| bad())?,
                None => default_port,
            };
            (host.to_string(), port)
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().map_err(|_| bad())?),
                None => (host_port.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let path = match path {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        Ok(Target {
            tls,
            host,
            port,
            path,
            basic: userinfo.map(|userinfo| format!("Basic {}", base64(&percent_decode(userinfo)))),
        })
    }

    /// The `Host` header.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `location` (a redirect) resolved against this target.
    fn resolve(&self, location: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if location.contains("://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{location}", self.host_header())
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let directory = &path[..path.rfind('/').map_or(0, |slash| slash + 1)];
            format!("{scheme}://{}{directory}{location}", self.host_header())
        }
    }
}

/// `GET url`, following redirects.
///
/// # Errors
/// As [`Failure`]; the messages never hold the URL.
pub fn get(url: &str, request: &Request<'_>) -> Result<Response, Failure> {
    let mut current = url.to_string();
    let mut redirects = 0;
    loop {
        let target = Target::parse(&current)?;
        let response = exchange(&target, "GET", None, request)?;
        let location = response.header("location").map(str::to_string);
        match (response.status, location) {
            (301 | 302 | 303 | 307 | 308, Some(location)) => {
                redirects += 1;
                if redirects > request.max_redirects {
                    return Err(Failure::Final(format!(
                        "more than max_redirects = {} redirects",
                        request.max_redirects
                    )));
                }
                current = target.resolve(&location);
            }
            _ => return Ok(response),
        }
    }
}

/// `method url` with `body` (sent with its `Content-Length`), no
/// redirects followed: for APIs (the S3 backend), whose requests are
/// signed for one URL.
///
/// # Errors
/// As [`Failure`]; the messages never hold the URL.
pub fn send(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    request: &Request<'_>,
) -> Result<Response, Failure> {
    exchange(&Target::parse(url)?, method, body, request)
}

/// One request on a new connection.
fn exchange(
    target: &Target,
    method: &str,
    body: Option<&[u8]>,
    request: &Request<'_>,
) -> Result<Response, Failure> {
    let stream = connect(target, request)?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nAccept: */*\r\n\
         Accept-Encoding: gzip, deflate\r\nConnection: close\r\n",
        target.path,
        target.host_header(),
        request.user_agent
    );
    if let Some(basic) = &target.basic {
        head.push_str(&format!("Authorization: {basic}\r\n"));
    }
    for (name, value) in &request.headers {
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(Failure::Final(format!(
                "header `{}` has a line break or a colon in its name or value",
                name.escape_debug()
            )));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.unwrap_or_default()))
        .and_then(|()| stream.flush())
        .map_err(|error| transfer("sending the request", &error))?;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let Head {
        status,
        reason,
        headers,
    } = loop {
        let head = read_head(&mut reader)?;
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim().to_ascii_lowercase())
    };
    let framed: Box<dyn Read + Send> = if status == 204 || status == 304 {
        Box::new(std::io::empty())
    } else if header("transfer-encoding").is_some_and(|coding| coding.ends_with("chunked")) {
        Box::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })
    } else if let Some(length) = header("content-length") {
        let length: u64 = length.parse().map_err(|_| {
            Failure::Retry(format!("the server sent a bad Content-Length `{length}`"))
        })?;
        Box::new(Sized {
            inner: reader,
            left: length,
        })
    } else {
        Box::new(reader)
    };
    let body: Box<dyn Read + Send> = match header("content-encoding").as_deref() {
        None | Some("" | "identity") => framed,
        Some("gzip" | "x-gzip") => Box::new(flate2::read::MultiGzDecoder::new(framed)),
        Some("deflate") => Box::new(flate2::read::ZlibDecoder::new(framed)),
        Some(other) => {
            return Err(Failure::Final(format!(
                "the server sent Content-Encoding `{other}`, which this client does not decode \
                 (it asks for gzip or deflate)"
            )))
        }
    };
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

/// Reads a status line and headers.
/// A status line and its headers (lowercase names).
struct Head {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
}

fn read_head(reader: &mut impl BufRead) -> Result<Head, Failure> {
    let mut limited = reader.take(MAX_HEAD);
    let mut line = Vec::new();
    let mut read_line = |line: &mut Vec<u8>| -> Result<String, Failure> {
        line.clear();
        limited
            .read_until(b'\n', line)
            .map_err(|error| transfer("reading the answer", &error))?;
        if line.last() != Some(&b'\n') {
            return Err(Failure::Retry(
                "the answer's head was cut off or is larger than 64 KiB".into(),
            ));
        }
        Ok(String::from_utf8_lossy(line).trim_end().to_string())
    };
    let status_line = read_line(&mut line)?;
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| Failure::Retry("the server's answer is not HTTP/1.x".into()))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let header = read_line(&mut line)?;
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Ok(Head {
        status,
        reason,
        headers,
    })
}

fn transfer(what: &str, error: &std::io::Error) -> Failure {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Failure::Retry(format!("timed out {what} (read_timeout_seconds)"))
        }
        _ => Failure::Retry(format!("{what}: {error}")),
    }
}

fn connect(target: &Target, request: &Request<'_>) -> Result<Stream, Failure> {
    let addresses: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|error| Failure::Retry(format!("cannot resolve the host: {error}")))?
        .collect();
    let mut last = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, request.connect_timeout) {
            Ok(tcp) => {
                let timeouts = tcp
                    .set_read_timeout(Some(request.read_timeout))
                    .and_then(|()| tcp.set_write_timeout(Some(request.read_timeout)));
                timeouts.map_err(|error| transfer("connecting", &error))?;
                return wrap(target, tcp);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(error) if error.kind() == std::io::ErrorKind::TimedOut => {
            Failure::Retry("timed out connecting (connect_timeout_seconds)".to_string())
        }
        Some(error) => Failure::Retry(format!("cannot connect: {error}")),
        None => Failure::Retry("the host has no address".into()),
    })
}

/// The connection: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "https")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

#[cfg(not(feature = "https"))]
fn wrap(target: &Target, tcp: TcpStream) -> Result<Stream, Failure> {
    if target.tls {
        return Err(Failure::Final(
            "https needs a build with the `https` feature".into(),
        ));
    }
    Ok(Stream::Plain(tcp))
}

#[cfg(feature = "https")]
fn wrap(target: &Target, tcp: TcpStream) -> Result<Stream, Failure> {
    use std::sync::{Arc, OnceLock};
    if !target.tls {
        return Ok(Stream::Plain(tcp));
    }
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|error| Failure::Final(format!("bad host name for TLS: {error}")))?;
    let connection = rustls::ClientConnection::new(Arc::clone(config), name)
        .map_err(|error| Failure::Final(format!("TLS: {error}")))?;
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(
        connection, tcp,
    ))))
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            #[cfg(feature = "https")]
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            #[cfg(feature = "https")]
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            #[cfg(feature = "https")]
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

fn cut_off(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string())
}

/// Reads at most `left` bytes; the stream ending first is an error.
fn read_at_most(inner: &mut impl Read, buf: &mut [u8], left: u64) -> std::io::Result<usize> {
    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    match inner.read(&mut buf[..want])? {
        0 => Err(cut_off("the body was cut off")),
        read => Ok(read),
    }
}

/// A body of `Content-Length` bytes; ending early is an error.
struct Sized<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Sized<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let read = read_at_most(&mut self.inner, buf, self.left).map_err(|error| {
            if error.kind() != std::io::ErrorKind::UnexpectedEof {
                return error;
            }
            cut_off(&format!(
                "the connection closed {} bytes before the end of the body (Content-Length)",
                self.left
            ))
        })?;
        self.left -= read as u64;
        Ok(read)
    }
}

/// A chunked body; ending before its last chunk is an error.
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        (&mut self.inner).take(4096).read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(cut_off("the chunked body was cut off"));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size `{}`", size.escape_debug()),
                )
            })?;
            if self.left == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
        }
        let read = read_at_most(&mut self.inner, buf, self.left)?;
        self.left -= read as u64;
        if self.left == 0 && !self.line()?.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a chunk did not end with a line break",
            ));
        }
        Ok(read)
    }
}

/// `%XX` escapes decoded (user info is written percent-encoded in URLs);
/// a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    decoded
}

/// Standard base64 with padding (for Basic authentication).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= group.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let target = Target::parse("http://u:p@example.com:8080/get.php?a=1#frag").unwrap();
        assert_eq!(
            (target.host.as_str(), target.port, target.path.as_str()),
            ("example.com", 8080, "/get.php?a=1")
        );
        assert_eq!(target.basic.as_deref(), Some("Basic dTpw"));
        assert_eq!(target.host_header(), "example.com:8080");
        let target = Target::parse("HTTP://[::1]/x").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 80));
        assert_eq!(target.host_header(), "[::1]");
        assert_eq!(Target::parse("http://h?q").unwrap().path, "/?q");
        assert!(Target::parse("ftp://h/").is_err());
        assert!(Target::parse("http://:80/").is_err());
    }

    #[test]
    fn redirects_resolve_absolute_rooted_and_relative_locations() {
        let target = Target::parse("http://h:81/a/b.m3u?x").unwrap();
        assert_eq!(target.resolve("http://o/p"), "http://o/p");
        assert_eq!(target.resolve("//o/p"), "http://o/p");
        assert_eq!(target.resolve("/c"), "http://h:81/c");
        assert_eq!(target.resolve("c.m3u"), "http://h:81/a/c.m3u");
    }

    #[test]
    fn chunked_and_sized_bodies_must_be_whole() {
        let read = |reader: &mut dyn Read| {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        };
        let whole = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\nTrailer: x\r\n\r\n";
        let mut chunked = Chunked {
            inner: &whole[..],
            left: 0,
            done: false,
        };
        assert_eq!(read(&mut chunked).unwrap(), b"Wikipedia ");
        let mut cut = Chunked {
            inner: &whole[..12],
            left: 0,
            done: false,
        };
        assert!(read(&mut cut).is_err());
        let mut sized = Sized {
            inner: &b"abc"[..],
            left: 3,
        };
        assert_eq!(read(&mut sized).unwrap(), b"abc");
        let mut short = Sized {
            inner: &b"ab"[..],
            left: 3,
        };
        assert!(read(&mut short).is_err());
    }

    #[test]
    fn user_info_is_percent_decoded() {
        assert_eq!(percent_decode("u%40x:p%3Aw%"), b"u@x:p:w%");
        let target = Target::parse("http://a%40b:c@h/").unwrap();
        let expected = format!("Basic {}", base64(b"a@b:c"));
        assert_eq!(target.basic.as_deref(), Some(expected.as_str()));
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"u:p"), "dTpw");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b""), "");
    }
}
