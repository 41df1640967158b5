//! `[store.redis]` and `[store.s3]`: the remote backends of the spill store
//! and of shared filter state (see [`crate::remote`]).

use serde::Deserialize;

use crate::{Error, Result};

/// Where held blocks spill once they leave memory (`[store] spill_to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpillTo {
    /// A spill file in `spill_directory` (default).
    #[default]
    Disk,
    /// Keys in the `[store.redis]` server.
    Redis,
    /// Objects in the `[store.s3]` bucket.
    S3,
}

/// `[store.redis]`: a Redis server for held blocks (`spill_to = "redis"`)
/// and for the `redis_spill` filtering strategy's key claims.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// Prefix of every key this host writes; instances that name the same
    /// namespace share their dedup claims.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// This instance's name in shared claims (default: the host name and
    /// the configuration file's path); keep it stable across runs.
    #[serde(default)]
    pub instance: Option<String>,
    /// Longest wait for the connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for any answer, in milliseconds.
    #[serde(default = "default_io_timeout_ms")]
    pub io_timeout_ms: u64,
    /// Held blocks expire after this many seconds even if a run crashed
    /// before deleting them.
    #[serde(default = "default_block_ttl")]
    pub block_ttl_seconds: u64,
    /// A dedup key claimed by an instance stays its own this long after
    /// that instance last saw it.
    #[serde(default = "default_claim_ttl")]
    pub claim_ttl_seconds: u64,
}

/// `[store.s3]`: an S3-compatible bucket for held blocks (`cloud_spill`,
/// `spill_to = "s3"`). Unset keys come from the usual environment
/// variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` of the server (or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region the server signs for (or `AWS_REGION`; default
    /// `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// The bucket (it must exist).
    pub bucket: String,
    /// Access key id (or `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret key (or `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Objects go under `<prefix>/<run id>/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `true` (default): `endpoint/bucket/key`, as self-hosted servers
    /// expect; `false`: `bucket.endpoint/key`.
    #[serde(default = "super::pressure::default_true")]
    pub path_style: bool,
    /// Longest wait for the connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for any read or write, in milliseconds.
    #[serde(default = "default_io_timeout_ms")]
    pub io_timeout_ms: u64,
    /// Attempts after a failed request (connection errors, 5xx).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_namespace() -> String {
    "m3u".to_string()
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_io_timeout_ms() -> u64 {
    10_000
}
fn default_block_ttl() -> u64 {
    24 * 3600
}
fn default_claim_ttl() -> u64 {
    7 * 24 * 3600
}
fn default_prefix() -> String {
    "m3u-spill".to_string()
}
fn default_retries() -> u32 {
    2
}

/// `[store.s3]` with the environment's values filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// `http://host:port`, no trailing slash.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret key.
    pub secret_access_key: String,
    /// Object key prefix, no trailing slash.
    pub prefix: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Read/write timeout, ms.
    pub io_timeout_ms: u64,
    /// Retries per request.
    pub retries: u32,
}

impl S3Config {
    /// The settings, with unset keys read from the environment.
    ///
    /// # Errors
    /// No endpoint or no credentials anywhere, or a bad bucket name.
    pub fn settings(&self) -> Result<S3Settings> {
        self.settings_with(|name| std::env::var(name).ok())
    }

    /// [`S3Config::settings`] with the environment given as a function.
    ///
    /// # Errors
    /// As [`S3Config::settings`].
    pub fn settings_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<S3Settings> {
        let pick = |value: &Option<String>, names: &[&str]| {
            value
                .clone()
                .or_else(|| names.iter().find_map(|name| env(name)))
                .filter(|value| !value.trim().is_empty())
        };
        let endpoint = pick(&self.endpoint, &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
            .ok_or_else(|| {
                Error::config_key(
                    "store.s3.endpoint",
                    "no endpoint: set it (http://127.0.0.1:3900 for a local Garage) or \
                     AWS_ENDPOINT_URL",
                )
            })?;
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(Error::config_key(
                "store.s3.endpoint",
                format!("`{endpoint}` must start with http:// or https://"),
            ));
        }
        let credential = |value: &Option<String>, name: &str, key: &str| {
            pick(value, &[name]).ok_or_else(|| {
                Error::config_key(
                    format!("store.s3.{key}"),
                    format!("missing: set it in [store.s3] or the {name} environment variable"),
                )
            })
        };
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(Error::config_key(
                "store.s3.bucket",
                format!(
                    "`{}` is not a bucket name (3 to 63 lowercase letters, digits, `-` or `.`)",
                    self.bucket
                ),
            ));
        }
        Ok(S3Settings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: pick(&self.region, &["AWS_REGION", "AWS_DEFAULT_REGION"])
                .unwrap_or_else(|| "us-east-1".to_string()),
            bucket: self.bucket.clone(),
            access_key_id: credential(&self.access_key_id, "AWS_ACCESS_KEY_ID", "access_key_id")?,
            secret_access_key: credential(
                &self.secret_access_key,
                "AWS_SECRET_ACCESS_KEY",
                "secret_access_key",
            )?,
            prefix: self.prefix.trim_matches('/').to_string(),
            path_style: self.path_style,
            connect_timeout_ms: self.connect_timeout_ms,
            io_timeout_ms: self.io_timeout_ms,
            retries: self.retries,
        })
    }
}

impl RedisConfig {
    /// Checks the URL's form.
    ///
    /// # Errors
    /// Not a `redis://` URL.
    pub fn check(&self) -> Result<()> {
        if self.url.starts_with("rediss://") {
            return Err(Error::config_key(
                "store.redis.url",
                "rediss:// (TLS) is not supported by this build's Redis client: use redis:// on \
                 a trusted network, or a TLS tunnel (stunnel, spiped) on loopback",
            ));
        }
        if !self.url.starts_with("redis://") {
            return Err(Error::config_key(
                "store.redis.url",
                format!(
                    "`{}` is not a redis:// URL (redis://[user:password@]host[:port][/db])",
                    crate::inputs::mask_url(&self.url)
                ),
            ));
        }
        if self.namespace.is_empty() || self.namespace.contains(char::is_whitespace) {
            return Err(Error::config_key(
                "store.redis.namespace",
                "must be a non-empty name without spaces",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(toml_text: &str) -> S3Config {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn s3_settings_fall_back_to_the_environment() {
        let config = s3("bucket = \"spill\"");
        let env = |name: &str| match name {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:3900/".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("GK1".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        };
        let settings = config.settings_with(env).unwrap();
        assert_eq!(settings.endpoint, "http://127.0.0.1:3900");
        assert_eq!(settings.region, "us-east-1");
        assert_eq!(settings.access_key_id, "GK1");
        assert!(settings.path_style);
        let missing = config.settings_with(|_| None).unwrap_err().to_string();
        assert!(missing.contains("AWS_ENDPOINT_URL"), "{missing}");
        let no_secret = s3("bucket = \"spill\"\nendpoint = \"http://x:1\"\naccess_key_id = \"a\"")
            .settings_with(|_| None)
            .unwrap_err()
            .to_string();
        assert!(no_secret.contains("AWS_SECRET_ACCESS_KEY"), "{no_secret}");
        let bad_bucket = s3("bucket = \"No_Such\"\nendpoint = \"http://x:1\"")
            .settings_with(|_| Some("k".into()))
            .unwrap_err()
            .to_string();
        assert!(bad_bucket.contains("bucket"), "{bad_bucket}");
    }

    #[test]
    fn redis_urls_are_checked() {
        let redis = |url: &str| RedisConfig {
            url: url.to_string(),
            namespace: "m3u".into(),
            instance: None,
            connect_timeout_ms: 1,
            io_timeout_ms: 1,
            block_ttl_seconds: 1,
            claim_ttl_seconds: 1,
        };
        assert!(redis("redis://127.0.0.1:6379/0").check().is_ok());
        let tls = redis("rediss://h").check().unwrap_err().to_string();
        assert!(tls.contains("TLS"), "{tls}");
        let other = redis("http://user:pw@h").check().unwrap_err().to_string();
        assert!(!other.contains("pw"), "{other}");
    }
}
