//! A small S3 client: `PUT`, `GET`, `DELETE` of objects and `HEAD` of the
//! bucket, signed with AWS Signature Version 4, over the host's HTTP client
//! ([`crate::inputs::client`]), path-style (`endpoint/bucket/key`, what
//! self-hosted servers such as Garage expect) or virtual-hosted.
//!
//! Hand-written for the aarch64 size budget: the maintained S3 crates
//! (aws-sdk-s3, rust-s3) bring an async runtime and an HTTP stack of their
//! own, megabytes where the budget has ~100 KB.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::S3Settings;
use crate::inputs::client::{self, Failure, Request};
use crate::store::store_error;
use crate::{Error, Result};

/// Largest object read back (a held block is far smaller).
const MAX_OBJECT: u64 = 1 << 30;

/// A bucket on an S3-compatible server.
#[derive(Clone, Debug)]
pub struct S3Client {
    settings: S3Settings,
    /// `http` or `https`.
    scheme: String,
    /// The `Host` header the client sends (and the signature covers).
    host: String,
    /// `/bucket` (path style) or empty.
    bucket_path: String,
}

impl S3Client {
    /// A client for `settings` (no request is made).
    ///
    /// # Errors
    /// An endpoint without a host.
    pub fn new(settings: S3Settings) -> Result<S3Client> {
        let (scheme, rest) = settings
            .endpoint
            .split_once("://")
            .unwrap_or(("http", settings.endpoint.as_str()));
        let authority = rest.split('/').next().unwrap_or_default();
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        let authority = authority.strip_suffix(default_port).unwrap_or(authority);
        if authority.is_empty() {
            return Err(store_error(
                "s3",
                &settings.endpoint,
                "the endpoint has no host; check [store.s3] endpoint",
            ));
        }
        let (host, bucket_path) = if settings.path_style {
            (authority.to_string(), format!("/{}", settings.bucket))
        } else {
            (format!("{}.{authority}", settings.bucket), String::new())
        };
        Ok(S3Client {
            scheme: scheme.to_string(),
            host,
            bucket_path,
            settings,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// `s3://bucket at endpoint`, for messages.
    pub fn shown(&self) -> String {
        format!(
            "s3://{} at {}",
            self.settings.bucket,
            crate::inputs::mask_url(&self.settings.endpoint)
        )
    }

    fn error(&self, message: &str) -> Error {
        store_error("s3", &self.shown(), message)
    }

    /// Checks that the bucket exists and the credentials are accepted.
    ///
    /// # Errors
    /// The server is unreachable, the bucket missing, the key refused.
    pub fn check(&self) -> Result<()> {
        self.call("HEAD", "", None).map(drop)
    }

    /// Stores an object.
    ///
    /// # Errors
    /// The server refused it or could not be reached.
    pub fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        self.call("PUT", key, Some(body)).map(drop)
    }

    /// Reads an object whole.
    ///
    /// # Errors
    /// Missing, refused, unreachable, or cut off.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.call("GET", key, None)
    }

    /// Deletes an object (deleting a missing one succeeds, as in S3).
    ///
    /// # Errors
    /// Refused or unreachable.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.call("DELETE", key, None).map(drop)
    }

    /// The keys under `prefix` (every page of `ListObjectsV2`).
    ///
    /// # Errors
    /// Refused or unreachable.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_string()),
                ("prefix", prefix.to_string()),
            ];
            if let Some(token) = &token {
                query.push(("continuation-token", token.clone()));
            }
            query.sort();
            let query = query
                .iter()
                .map(|(name, value)| format!("{name}={}", uri_encode(value, true)))
                .collect::<Vec<_>>()
                .join("&");
            let page = self.call_with_query("GET", "", &query, None)?;
            let page = String::from_utf8_lossy(&page);
            let mut rest = page.as_ref();
            while let Some(key) = xml_element(rest, "Key") {
                keys.push(key.replace("&amp;", "&"));
                rest = &rest[rest.find("</Key>").map_or(rest.len(), |end| end + 6)..];
            }
            token = xml_element(&page, "NextContinuationToken").map(str::to_string);
            if xml_element(&page, "IsTruncated") != Some("true") || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// One request with retries; the body of a successful answer.
    fn call(&self, method: &str, key: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        self.call_with_query(method, key, "", body)
    }

    fn call_with_query(
        &self,
        method: &str,
        key: &str,
        query: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            match self.attempt(method, key, query, body) {
                Ok(answer) => return Ok(answer),
                Err(Failure::Retry(why)) if attempt < self.settings.retries => {
                    log::debug!("s3 {method} {key}: {why}; retrying");
                    std::thread::sleep(backoff);
                    backoff *= 2;
                    attempt += 1;
                }
                Err(Failure::Retry(why) | Failure::Final(why)) => {
                    let what = if key.is_empty() {
                        format!("{method} of the bucket")
                    } else {
                        format!("{method} {key}")
                    };
                    return Err(self.error(&format!("{what} failed: {why}")));
                }
            }
        }
    }

    fn attempt(
        &self,
        method: &str,
        key: &str,
        query: &str,
        body: Option<&[u8]>,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let path = if key.is_empty() {
            self.bucket_path.clone()
        } else {
            format!("{}/{}", self.bucket_path, uri_encode(key, false))
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signed = sign(
            &self.settings,
            &Signable {
                method,
                host: &self.host,
                path: &path,
                query,
                body: body.unwrap_or_default(),
            },
            now,
        );
        let headers = vec![
            ("x-amz-date", signed.amz_date.as_str()),
            ("x-amz-content-sha256", signed.payload_hash.as_str()),
            ("Authorization", signed.authorization.as_str()),
        ];
        let request = Request {
            user_agent: concat!("m3u-plugin-host/", env!("CARGO_PKG_VERSION")),
            headers,
            connect_timeout: Duration::from_millis(self.settings.connect_timeout_ms),
            read_timeout: Duration::from_millis(self.settings.io_timeout_ms),
            max_redirects: 0,
        };
        let url = if query.is_empty() {
            format!("{}://{}{path}", self.scheme, self.host)
        } else {
            format!("{}://{}{path}?{query}", self.scheme, self.host)
        };
        let mut response = client::send(method, &url, body, &request)?;
        let mut answer = Vec::new();
        if method != "HEAD" {
            (&mut response.body)
                .take(MAX_OBJECT)
                .read_to_end(&mut answer)
                .map_err(|error| Failure::Retry(format!("reading the answer: {error}")))?;
        }
        match response.status {
            200..=299 => Ok(answer),
            status => {
                let text = String::from_utf8_lossy(&answer);
                let code = xml_element(&text, "Code").unwrap_or_default();
                let message = xml_element(&text, "Message").unwrap_or_default();
                let hint = match (status, code) {
                    (_, "NoSuchBucket") | (404, _) if key.is_empty() => {
                        "create the bucket, or fix [store.s3] bucket"
                    }
                    (_, "NoSuchKey") | (404, _) => {
                        "a held object is gone: keep lifecycle rules on this prefix longer than \
                         a run"
                    }
                    (403, _) | (_, "AccessDenied" | "InvalidAccessKeyId") => {
                        "check [store.s3] access_key_id / secret_access_key and that the key \
                         may read and write the bucket"
                    }
                    (_, "SignatureDoesNotMatch") => {
                        "check the secret key and [store.s3] region (the region the server \
                         signs for)"
                    }
                    (507, _) | (_, "QuotaExceeded" | "InsufficientStorage") => {
                        "the store is full: free space there or spill elsewhere ([store] \
                         spill_to)"
                    }
                    _ => "check the server's log",
                };
                let detail = match (code, message) {
                    ("", "") => String::new(),
                    (code, "") => format!(" {code}"),
                    (code, message) => format!(" {code}: {message}"),
                };
                let why = format!("HTTP {} {}{detail}; {hint}", status, response.reason);
                if status >= 500 || status == 429 {
                    Err(Failure::Retry(why))
                } else {
                    Err(Failure::Final(why))
                }
            }
        }
    }
}

/// What a signature adds to a request.
struct Signed {
    amz_date: String,
    payload_hash: String,
    authorization: String,
}

/// What a signature covers.
struct Signable<'a> {
    method: &'a str,
    host: &'a str,
    /// The canonical (encoded) path.
    path: &'a str,
    /// The canonical query: sorted, encoded `name=value` pairs.
    query: &'a str,
    body: &'a [u8],
}

/// AWS Signature Version 4 of a request, signing `host`,
/// `x-amz-content-sha256` and `x-amz-date`.
fn sign(settings: &S3Settings, request: &Signable<'_>, unix_seconds: u64) -> Signed {
    let Signable {
        method,
        host,
        path,
        query,
        body,
    } = request;
    let amz_date = amz_date(unix_seconds);
    let date = &amz_date[..8];
    let payload_hash = hex(&Sha256::digest(body));
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\n\
         x-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload_hash}"
    );
    let scope = format!("{date}/{}/s3/aws4_request", settings.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(&settings.secret_access_key, date, &settings.region, "s3");
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    Signed {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
            settings.access_key_id
        ),
        amz_date,
        payload_hash,
    }
}

/// The SigV4 signing key of a day, region and service.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    [date, region, service, "aws4_request"]
        .iter()
        .fold(format!("AWS4{secret}").into_bytes(), |key, part| {
            hmac(&key, part.as_bytes())
        })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Percent-encodes all but the unreserved characters (and `/` unless
/// `encode_slash`), as SigV4's canonical URI wants.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The text of the first `<name>…</name>` in an XML answer.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: "http://127.0.0.1:3900".into(),
            region: "us-east-1".into(),
            bucket: "examplebucket".into(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            prefix: "m3u-spill".into(),
            path_style: true,
            connect_timeout_ms: 1000,
            io_timeout_ms: 1000,
            retries: 0,
        }
    }

    #[test]
    fn dates_are_utc_in_the_basic_format() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        // 2013-05-24T00:00:00Z, the date of AWS's worked examples.
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(1_709_210_096), "20240229T123456Z");
    }

    #[test]
    fn signatures_match_the_aws_worked_example() {
        // The form of the header, and the empty payload's hash; the
        // signature itself is checked by the server in the S3 tests.
        let signed = sign(
            &settings(),
            &Signable {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: "",
                body: b"",
            },
            1_369_353_600,
        );
        assert_eq!(
            signed.payload_hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(signed.authorization.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
        ));
        // The signing key of AWS's published derivation example (IAM, 2015-08-30).
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn paths_and_hosts_follow_the_addressing_style() {
        let path_style = S3Client::new(settings()).unwrap();
        assert_eq!(path_style.host, "127.0.0.1:3900");
        assert_eq!(path_style.bucket_path, "/examplebucket");
        let virtual_hosted = S3Client::new(S3Settings {
            endpoint: "https://s3.example.com:443".into(),
            path_style: false,
            ..settings()
        })
        .unwrap();
        assert_eq!(virtual_hosted.host, "examplebucket.s3.example.com");
        assert_eq!(uri_encode("a b/c+d", false), "a%20b/c%2Bd");
        assert_eq!(
            xml_element("<Error><Code>NoSuchKey</Code></Error>", "Code"),
            Some("NoSuchKey")
        );
    }
}
