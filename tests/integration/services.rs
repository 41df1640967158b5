//! Real Redis and S3 (Garage) servers for the tests, through
//! `.ci/services`: the ones `.ci/run` started (their settings in the
//! `M3U_TEST_*` environment variables), or private ones a test starts, and
//! stops, itself.
//!
//! Without the server binaries, a test prints SKIPPED and returns, unless
//! `M3U_REQUIRE_SERVICES=1` (as `.ci/run` sets), where it fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use super::common::repo_path;

/// A server, and how to reach it.
pub struct Service {
    /// `M3U_TEST_*` settings.
    pub env: HashMap<String, String>,
    /// The scratch directory of a private server (stopped on drop).
    private: Option<tempfile::TempDir>,
}

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Garage,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Garage => "garage",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Garage => "garage",
        }
    }

    fn shared_key(self) -> &'static str {
        match self {
            Kind::Redis => "M3U_TEST_REDIS_URL",
            Kind::Garage => "M3U_TEST_S3_ENDPOINT",
        }
    }
}

fn available(kind: Kind) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {}", kind.binary())])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var("M3U_REQUIRE_SERVICES").is_err(),
            "{} is required (M3U_REQUIRE_SERVICES is set) but not on PATH",
            kind.binary()
        );
        eprintln!(
            "SKIPPED: {} not found (apt-get install redis-server; cargo install garage, as \
             .ci/run does)",
            kind.binary()
        );
    }
    found
}

impl Service {
    /// The server `.ci/run` started, else a private one; `None` (SKIPPED)
    /// without the binary.
    pub fn shared(kind: Kind) -> Option<Service> {
        let prefix = match kind {
            Kind::Redis => "M3U_TEST_REDIS",
            Kind::Garage => "M3U_TEST_S3",
        };
        if std::env::var(kind.shared_key()).is_ok() {
            let env = std::env::vars()
                .filter(|(key, _)| key.starts_with(prefix))
                .collect();
            return Some(Service { env, private: None });
        }
        Service::private(kind)
    }

    /// A server of this test's own (it may stop it); `None` (SKIPPED)
    /// without the binary.
    pub fn private(kind: Kind) -> Option<Service> {
        if !available(kind) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix(kind.name())
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let out = Command::new(repo_path(".ci/services"))
            .arg("start")
            .arg(kind.name())
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "starting {}: {}",
            kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Some(Service {
            env,
            private: Some(dir),
        })
    }

    /// A setting (`M3U_TEST_…`).
    pub fn get(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("{key} not set"))
    }

    /// The private server's directory.
    pub fn directory(&self) -> PathBuf {
        self.private
            .as_ref()
            .expect("a private server")
            .path()
            .to_path_buf()
    }

    /// Stops a private server.
    pub fn stop(&self) {
        let out = Command::new(repo_path(".ci/services"))
            .arg("stop")
            .arg(self.directory())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the Garage CLI against a private server.
    pub fn garage(&self, args: &[&str]) -> String {
        let out = Command::new("garage")
            .arg("-c")
            .arg(self.directory().join("garage.toml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `[store.redis]` for this server, under `namespace`.
    pub fn redis_section(&self, namespace: &str) -> String {
        format!(
            "[store.redis]\nurl = {:?}\nnamespace = {namespace:?}\n",
            self.get("M3U_TEST_REDIS_URL")
        )
    }

    /// `[store.s3]` for this server, under `prefix`.
    pub fn s3_section(&self, prefix: &str) -> String {
        format!(
            "[store.s3]\nendpoint = {:?}\nregion = {:?}\nbucket = {:?}\n\
             access_key_id = {:?}\nsecret_access_key = {:?}\nprefix = {prefix:?}\n",
            self.get("M3U_TEST_S3_ENDPOINT"),
            self.get("M3U_TEST_S3_REGION"),
            self.get("M3U_TEST_S3_BUCKET"),
            self.get("M3U_TEST_S3_ACCESS_KEY_ID"),
            self.get("M3U_TEST_S3_SECRET_ACCESS_KEY"),
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(dir) = &self.private {
            let _ = Command::new(repo_path(".ci/services"))
                .arg("stop")
                .arg(dir.path())
                .output();
        }
    }
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", m3u_plugin_host::remote::run_id())
}
