//! Dedup keys claimed in Redis: the state of `redis_spill`, shared by every
//! proxy instance that names the same namespace.
//!
//! A key belongs to the first instance that claims it
//! (`SET <ns>:claim:<key> <instance> NX GET EX <claim_ttl>`): only that
//! instance keeps channels with it, so instances that read different
//! sources together keep every key exactly once, and keep the same split on
//! every later run. Within a run, a per-run set (`SADD <ns>:run:<run>`)
//! keeps the first copy only. The owner's claim is renewed while it keeps
//! seeing the key; a key no instance has seen for `claim_ttl_seconds` is
//! free again. Nothing of this is held in the host's memory but one batch's
//! keys.

use super::redis::{Redis, Reply};
use crate::config::RedisConfig;
use crate::Result;
use std::collections::HashSet;

/// Where plugins' key claims (the `claim_keys` host function) live: in the
/// host's memory for one run (no `[store.redis]`), or in Redis, shared with
/// every instance naming the same namespace.
#[derive(Clone, Debug, Default)]
pub enum ClaimsBackend {
    /// A set per plugin and run in the host's memory.
    #[default]
    Memory,
    /// Claims in Redis.
    Redis {
        /// The server and namespace.
        config: Box<RedisConfig>,
        /// This instance's name in claims.
        instance: String,
    },
}

impl ClaimsBackend {
    /// One run's claims for `scope` (a plugin's name: its keys are
    /// `<namespace>:plugin:<scope>:…`, so no plugin reaches another's).
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub fn open(&self, scope: &str) -> Result<KeyClaims> {
        match self {
            ClaimsBackend::Memory => Ok(KeyClaims::Memory {
                seen: HashSet::new(),
                bytes: 0,
            }),
            ClaimsBackend::Redis { config, instance } => Ok(KeyClaims::Redis(RedisClaims::new(
                Redis::open(config)?,
                &format!("{}:plugin:{scope}", config.namespace),
                instance,
                &super::run_id(),
                config.claim_ttl_seconds,
            ))),
        }
    }
}

/// One run's claims of one plugin.
pub enum KeyClaims {
    /// In memory: a key is kept the first time the run meets it.
    Memory {
        /// Keys met.
        seen: HashSet<Vec<u8>>,
        /// Their bytes (bounded by the caller).
        bytes: usize,
    },
    /// In Redis ([`RedisClaims`]).
    Redis(RedisClaims),
}

impl KeyClaims {
    /// For each key: whether the caller keeps it. `max_bytes` bounds what
    /// the memory set may hold.
    ///
    /// # Errors
    /// Redis failed, or the memory set would pass `max_bytes`.
    pub fn claim(&mut self, keys: &[&[u8]], max_bytes: usize) -> Result<Vec<bool>> {
        match self {
            KeyClaims::Redis(claims) => claims.claim(keys),
            KeyClaims::Memory { seen, bytes } => {
                let mut keep = Vec::with_capacity(keys.len());
                for key in keys {
                    if seen.contains(*key) {
                        keep.push(false);
                        continue;
                    }
                    // Each entry costs its bytes and about 48 of overhead.
                    *bytes += key.len() + 48;
                    if *bytes > max_bytes {
                        return Err(crate::store::store_error(
                            "memory",
                            "the host",
                            &format!(
                                "the claimed keys of this run passed {max_bytes} bytes (the                                  plugin's memory limit, max_memory_per_plugin): configure                                  [store.redis] to keep them in Redis"
                            ),
                        ));
                    }
                    seen.insert(key.to_vec());
                    keep.push(true);
                }
                Ok(keep)
            }
        }
    }
}

/// The claims of one run of one instance.
pub struct RedisClaims {
    redis: Redis,
    claim_prefix: String,
    run_set: String,
    instance: String,
    ttl: String,
    /// Own claims seen again in the last batch, renewed with the next one.
    renew: Vec<Vec<u8>>,
}

impl RedisClaims {
    /// Claims under `namespace` for `instance`, in run `run`.
    pub fn new(redis: Redis, namespace: &str, instance: &str, run: &str, ttl_seconds: u64) -> Self {
        RedisClaims {
            redis,
            claim_prefix: format!("{namespace}:claim:"),
            run_set: format!("{namespace}:run:{run}"),
            instance: instance.to_string(),
            ttl: ttl_seconds.max(1).to_string(),
            renew: Vec::new(),
        }
    }

    /// Where the claims are, for messages.
    pub fn location(&self) -> &str {
        self.redis.shown()
    }

    /// For each key, in order: whether this instance keeps it (it owns the
    /// key and this is the key's first copy in the run).
    ///
    /// # Errors
    /// Redis failed or answered an error (the run must stop: dropping or
    /// keeping channels without their claims would break the promise).
    pub fn claim<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<bool>> {
        let claim_keys: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| [self.claim_prefix.as_bytes(), key.as_ref()].concat())
            .collect();
        let renew_keys: Vec<Vec<u8>> = std::mem::take(&mut self.renew)
            .iter()
            .map(|key| [self.claim_prefix.as_bytes(), key].concat())
            .collect();
        let mut commands: Vec<Vec<&[u8]>> = Vec::with_capacity(keys.len() * 2 + 2);
        for key in &renew_keys {
            commands.push(vec![b"EXPIRE", key, self.ttl.as_bytes()]);
        }
        for (key, claim_key) in keys.iter().zip(&claim_keys) {
            commands.push(vec![
                b"SET",
                claim_key,
                self.instance.as_bytes(),
                b"NX",
                b"GET",
                b"EX",
                self.ttl.as_bytes(),
            ]);
            commands.push(vec![b"SADD", self.run_set.as_bytes(), key.as_ref()]);
        }
        commands.push(vec![
            b"EXPIRE",
            self.run_set.as_bytes(),
            self.ttl.as_bytes(),
        ]);
        let replies = self.redis.pipeline(commands.iter().map(Vec::as_slice))?;
        if let Some(Reply::Error(error)) = replies.iter().find(|r| matches!(r, Reply::Error(_))) {
            return Err(self.redis.error(&format!(
                "claiming dedup keys failed: {error} (SET … NX GET needs Redis 7.0 or later; \
                 Redis Cluster is not supported)"
            )));
        }
        let claims = &replies[renew_keys.len()..replies.len() - 1];
        let mut keep = Vec::with_capacity(keys.len());
        for (key, pair) in keys.iter().zip(claims.chunks_exact(2)) {
            let owned = match &pair[0] {
                Reply::Bulk(None) => true,
                Reply::Bulk(Some(owner)) if owner == self.instance.as_bytes() => {
                    self.renew.push(key.as_ref().to_vec());
                    true
                }
                Reply::Bulk(Some(_)) => false,
                other => return Err(self.redis.error(&format!("SET NX GET answered {other:?}"))),
            };
            let first_in_run = matches!(pair[1], Reply::Integer(1));
            keep.push(owned && first_in_run);
        }
        Ok(keep)
    }
}

impl Drop for RedisClaims {
    fn drop(&mut self) {
        let renew = std::mem::take(&mut self.renew);
        let claim_keys: Vec<Vec<u8>> = renew
            .iter()
            .map(|key| [self.claim_prefix.as_bytes(), key].concat())
            .collect();
        let mut batch: Vec<Vec<&[u8]>> = claim_keys
            .iter()
            .map(|key| vec![&b"EXPIRE"[..], key, self.ttl.as_bytes()])
            .collect();
        batch.push(vec![b"DEL", self.run_set.as_bytes()]);
        if self
            .redis
            .pipeline(batch.iter().map(Vec::as_slice))
            .is_err()
        {
            log::warn!(
                "redis {}: could not delete this run's key set; it expires by its TTL",
                self.redis.shown()
            );
        }
    }
}
