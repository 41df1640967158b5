//! A small Redis client (RESP2 over one TCP connection): commands, pipelines
//! of commands, `AUTH` and `SELECT` from the URL, timeouts on connect and on
//! every answer.
//!
//! Hand-written for the aarch64 size budget (the `redis` crate brings its
//! own URL, async and connection-manager layers; this file is what the host
//! needs). Redis Cluster is not supported: the client does not follow
//! `MOVED`/`ASK` redirections (a cluster answers them as errors, which name
//! the backend and fail the run).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::store::store_error;
use crate::{Error, Result};

/// Largest bulk answer accepted (a held block is far smaller).
const MAX_BULK: usize = 512 << 20;
/// Most elements of one array answer.
const MAX_ARRAY: usize = 1 << 20;

/// One answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and other simple strings.
    Simple(String),
    /// An integer.
    Integer(i64),
    /// A bulk string; `None` is the null answer.
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the null array.
    Array(Option<Vec<Reply>>),
    /// `-ERR …`.
    Error(String),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct RedisAddress {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    database: u32,
    /// The URL without credentials, for messages.
    pub shown: String,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl RedisAddress {
    /// Parses `redis://[user:password@]host[:port][/db]`.
    ///
    /// # Errors
    /// A URL of another form.
    pub fn parse(url: &str, connect_timeout: Duration, io_timeout: Duration) -> Result<Self> {
        let shown = crate::inputs::mask_url(url);
        let bad =
            |why: &str| store_error("redis", &shown, &format!("{why}; check [store.redis] url"));
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| bad("not a redis:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => match userinfo.split_once(':') {
                Some(("", password)) => (None, Some(password.to_string())),
                Some((user, password)) => (Some(user.to_string()), Some(password.to_string())),
                None => (None, Some(userinfo.to_string())),
            },
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_matches(['[', ']']).to_string(),
                port.parse().map_err(|_| bad("the port is not a number"))?,
            ),
            None => (host_port.to_string(), 6379),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let database = match path.trim_matches('/') {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| bad("the database is not a number"))?,
        };
        Ok(RedisAddress {
            host,
            port,
            username,
            password,
            database,
            shown,
            connect_timeout,
            io_timeout,
        })
    }
}

/// One connection.
pub struct Redis {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    shown: String,
    out: Vec<u8>,
}

impl Redis {
    /// Connects to the `[store.redis]` server ([`Redis::connect`]).
    ///
    /// # Errors
    /// A bad URL, or as [`Redis::connect`].
    pub fn open(config: &crate::config::RedisConfig) -> Result<Redis> {
        let address = RedisAddress::parse(
            &config.url,
            Duration::from_millis(config.connect_timeout_ms),
            Duration::from_millis(config.io_timeout_ms),
        )?;
        Redis::connect(&address)
    }

    /// Connects, authenticates, selects the database and checks with `PING`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Store`] naming Redis and what to do.
    pub fn connect(address: &RedisAddress) -> Result<Redis> {
        let fail = |message: String| store_error("redis", &address.shown, &message);
        let addresses: Vec<_> = (address.host.as_str(), address.port)
            .to_socket_addrs()
            .map_err(|error| fail(format!("cannot resolve the host: {error}")))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for socket in &addresses {
            match TcpStream::connect_timeout(socket, address.connect_timeout) {
                Ok(tcp) => {
                    stream = Some(tcp);
                    break;
                }
                Err(error) => last = Some(error),
            }
        }
        let tcp = stream.ok_or_else(|| {
            fail(format!(
                "cannot connect: {}; start Redis there or fix [store.redis] url",
                last.map_or_else(|| "no address".to_string(), |e| e.to_string())
            ))
        })?;
        let setup = tcp
            .set_read_timeout(Some(address.io_timeout))
            .and_then(|()| tcp.set_write_timeout(Some(address.io_timeout)))
            .and_then(|()| tcp.set_nodelay(true))
            .and_then(|()| tcp.try_clone());
        let writer =
            setup.map_err(|error| fail(format!("cannot set up the connection: {error}")))?;
        let mut redis = Redis {
            reader: BufReader::with_capacity(64 << 10, tcp),
            writer,
            shown: address.shown.clone(),
            out: Vec::new(),
        };
        if let Some(password) = &address.password {
            let reply = match &address.username {
                Some(user) => redis.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])?,
                None => redis.command(&[b"AUTH", password.as_bytes()])?,
            };
            redis.expect_ok(
                reply,
                "AUTH (check the user and password in [store.redis] url)",
            )?;
        }
        if address.database != 0 {
            let db = address.database.to_string();
            let reply = redis.command(&[b"SELECT", db.as_bytes()])?;
            redis.expect_ok(
                reply,
                "SELECT (check the database number in [store.redis] url)",
            )?;
        }
        match redis.command(&[b"PING"])? {
            Reply::Simple(pong) if pong == "PONG" => Ok(redis),
            other => Err(redis.error(&format!("PING answered {other:?}"))),
        }
    }

    /// Where it is connected, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// An error naming this server.
    pub fn error(&self, message: &str) -> Error {
        store_error("redis", &self.shown, message)
    }

    fn expect_ok(&self, reply: Reply, what: &str) -> Result<()> {
        match reply {
            Reply::Simple(ok) if ok == "OK" => Ok(()),
            Reply::Error(error) => Err(self.error(&format!("{what}: {error}"))),
            other => Err(self.error(&format!("{what}: unexpected answer {other:?}"))),
        }
    }

    /// Sends one command and reads its answer (an `-ERR` answer is a
    /// [`Reply::Error`], not an `Err`).
    ///
    /// # Errors
    /// The connection failed or timed out, or the answer is not RESP.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.out.clear();
        encode(&mut self.out, args);
        self.send()?;
        self.read_reply()
    }

    /// Sends every command at once and reads their answers in order.
    ///
    /// # Errors
    /// As [`Redis::command`].
    pub fn pipeline<'a>(
        &mut self,
        commands: impl IntoIterator<Item = &'a [&'a [u8]]>,
    ) -> Result<Vec<Reply>> {
        self.out.clear();
        let mut count = 0;
        for args in commands {
            encode(&mut self.out, args);
            count += 1;
        }
        self.send()?;
        (0..count).map(|_| self.read_reply()).collect()
    }

    fn send(&mut self) -> Result<()> {
        let sent = self
            .writer
            .write_all(&self.out)
            .and_then(|()| self.writer.flush());
        sent.map_err(|error| self.io_error("sending", &error))
    }

    fn io_error(&self, what: &str, error: &std::io::Error) -> Error {
        let why = match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "timed out (io_timeout_ms)".to_string()
            }
            _ => error.to_string(),
        };
        self.error(&format!(
            "{what} failed: {why}; check that Redis is running and reachable"
        ))
    }

    fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(64 << 10)
            .read_until(b'\n', &mut line)
            .map_err(|error| self.io_error("reading an answer", &error))?;
        if read == 0 || !line.ends_with(b"\r\n") {
            return Err(self.error(
                "the connection closed in the middle of an answer; check that Redis is running",
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_reply(&mut self) -> Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line
            .split_first()
            .ok_or_else(|| self.error("an empty answer line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let number = |text: &str| -> Result<i64> {
            text.parse()
                .map_err(|_| self.error(&format!("`{text}` is not a number in an answer")))
        };
        match kind {
            b'+' => Ok(Reply::Simple(text)),
            b'-' => Ok(Reply::Error(text)),
            b':' => Ok(Reply::Integer(number(&text)?)),
            b'$' => {
                let len = number(&text)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= MAX_BULK)
                    .ok_or_else(|| self.error("a bulk answer larger than 512 MiB"))?;
                let mut bulk = vec![0; len + 2];
                self.reader
                    .read_exact(&mut bulk)
                    .map_err(|error| self.io_error("reading a value", &error))?;
                bulk.truncate(len);
                Ok(Reply::Bulk(Some(bulk)))
            }
            b'*' => {
                let len = number(&text)?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= MAX_ARRAY)
                    .ok_or_else(|| self.error("an array answer with too many elements"))?;
                let items = (0..len)
                    .map(|_| self.read_reply())
                    .collect::<Result<Vec<_>>>()?;
                Ok(Reply::Array(Some(items)))
            }
            other => Err(self.error(&format!(
                "an answer starting with {:?}: is this a Redis server?",
                char::from(*other)
            ))),
        }
    }
}

/// A command as a RESP array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_credentials_and_database() {
        let second = Duration::from_secs(1);
        let address =
            RedisAddress::parse("redis://app:s3cret@cache.lan:6380/2", second, second).unwrap();
        assert_eq!((address.host.as_str(), address.port), ("cache.lan", 6380));
        assert_eq!(address.username.as_deref(), Some("app"));
        assert_eq!(address.password.as_deref(), Some("s3cret"));
        assert_eq!(address.database, 2);
        assert!(!address.shown.contains("s3cret"), "{}", address.shown);
        let plain = RedisAddress::parse("redis://127.0.0.1", second, second).unwrap();
        assert_eq!(
            (plain.port, plain.database, plain.password),
            (6379, 0, None)
        );
        let password_only = RedisAddress::parse("redis://:pw@h:1/0", second, second).unwrap();
        assert_eq!(
            (password_only.username, password_only.password.as_deref()),
            (None, Some("pw"))
        );
        assert!(RedisAddress::parse("redis://h:port", second, second).is_err());
        assert!(RedisAddress::parse("redis://h/x", second, second).is_err());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
    }

    #[test]
    fn a_closed_port_is_an_error_naming_redis() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let second = Duration::from_secs(1);
        let address =
            RedisAddress::parse(&format!("redis://127.0.0.1:{port}"), second, second).unwrap();
        let message = Redis::connect(&address).err().unwrap().to_string();
        assert!(
            message.contains("redis") && message.contains("start Redis"),
            "{message}"
        );
    }
}
