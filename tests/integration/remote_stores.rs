//! Redis and S3-compatible storage as real backends, against real servers
//! (`redis-server`, Garage; see `services.rs`): the product's configuration
//! with both configured, the numbering barrier and the sorted writer
//! spilling to each, two instances sharing one Redis dedup set, and the
//! servers stopped (or the bucket refusing writes) in the middle of a run.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use m3u_plugin_host::remote::{Redis, RedisAddress, Reply, S3Client};

use super::common::{repo_path, PLAYLIST_FIXTURE};
use super::services::{unique, Kind, Service};

fn scratch(name: &str) -> PathBuf {
    let dir = repo_path("target/test-scratch/remote").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The CLI with `config_text`; `input` as a file or, with `None`, stdin.
fn cli(dir: &Path, name: &str, config_text: &str, input: Option<&Path>) -> Command {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, config_text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"));
    command
        .args(["run", "-q", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(dir.join(format!("{name}.m3u")))
        .arg("--stats-json")
        .arg(dir.join(format!("{name}.json")));
    match input {
        Some(input) => command.arg("--input").arg(input),
        None => command.args(["--input", "-"]),
    };
    command
}

/// Runs the CLI; the playlist and the statistics.
fn run_ok(dir: &Path, name: &str, config_text: &str, input: &Path) -> (String, serde_json::Value) {
    let out = cli(dir, name, config_text, Some(input)).output().unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    (
        std::fs::read_to_string(dir.join(format!("{name}.m3u"))).unwrap(),
        serde_json::from_str(&stats).unwrap(),
    )
}

fn stage<'s>(stats: &'s serde_json::Value, name: &str) -> &'s serde_json::Value {
    stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["stage"] == name)
        .unwrap()
}

fn redis(service: &Service) -> Redis {
    let second = Duration::from_secs(5);
    let address = RedisAddress::parse(service.get("M3U_TEST_REDIS_URL"), second, second).unwrap();
    Redis::connect(&address).unwrap()
}

/// Keys under `namespace` in the test's Redis.
fn redis_keys(service: &Service, namespace: &str) -> Vec<String> {
    let pattern = format!("{namespace}:*");
    match redis(service)
        .command(&[b"KEYS", pattern.as_bytes()])
        .unwrap()
    {
        Reply::Array(Some(keys)) => keys
            .into_iter()
            .map(|key| match key {
                Reply::Bulk(Some(key)) => String::from_utf8(key).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn s3_client(service: &Service) -> S3Client {
    let config: m3u_plugin_host::config::S3Config = toml::from_str(
        service
            .s3_section("unused")
            .trim_start_matches("[store.s3]\n"),
    )
    .unwrap();
    S3Client::new(config.settings().unwrap()).unwrap()
}

/// The product card's plugin section, `plugin_directory` pointed at the
/// built plugins.
fn product_config(plugin_directory: &str) -> String {
    super::product_config::PRODUCT_CONFIG.replace(
        "plugin_directory = \"./plugins\"",
        &format!("plugin_directory = {plugin_directory:?}"),
    )
}

const SHARED_SETTINGS: &str = "\n[plugins.sports_optimizer]\nnumber_block = \"100-999\"\n\
                               [filtering.dedup]\nkey = \"tvg_id\"\n";

#[test]
fn the_product_configuration_uses_cloud_spill_and_redis_spill_and_matches_the_native_run() {
    let (Some(redis_server), Some(garage)) =
        (Service::shared(Kind::Redis), Service::shared(Kind::Garage))
    else {
        return;
    };
    let dir = scratch("product");
    let plugins = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR"))
        .display()
        .to_string();
    let namespace = unique("product");
    let prefix = unique("product");
    let servers = format!(
        "{}{}",
        redis_server.redis_section(&namespace),
        garage.s3_section(&prefix)
    );
    let input = repo_path(PLAYLIST_FIXTURE);
    let product = format!("{}{SHARED_SETTINGS}{servers}", product_config(&plugins));
    let (playlist, stats) = run_ok(&dir, "product", &product, &input);
    assert_eq!(stage(&stats, "source_loading")["strategy"], "cloud_spill");
    assert_eq!(stage(&stats, "filtering")["strategy"], "redis_spill");
    let holds = stats["holds"].as_array().unwrap();
    let cloud = holds.iter().find(|h| h["holder"] == "cloud_spill").unwrap();
    assert_eq!(cloud["tier"], "s3", "{cloud}");
    assert_eq!(cloud["channels"], 10_525);
    assert!(cloud["spill_directory"].as_str().unwrap().contains("s3://"));

    // The native-only run with the same plugin settings and dedup.
    let plain = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {plugins:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\"]\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"sports_optimizer\"]\n{SHARED_SETTINGS}"
    );
    let (plain_playlist, _) = run_ok(&dir, "plain", &plain, &input);
    assert_eq!(playlist, plain_playlist);
    assert!(
        playlist.matches("#EXTINF").count() < 10_525,
        "dedup dropped copies"
    );

    // Nothing held is left: no block keys, no objects; only the claims.
    let left: Vec<String> = redis_keys(&redis_server, &namespace)
        .into_iter()
        .filter(|key| !key.starts_with(&format!("{namespace}:claim:")))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(
        s3_client(&garage).list(&prefix).unwrap(),
        Vec::<String>::new()
    );

    // A Redis that does not answer: redis_spill is skipped, with why.
    let dead = product.replace(
        redis_server.get("M3U_TEST_REDIS_URL"),
        "redis://127.0.0.1:1/0",
    );
    let (fallback_playlist, stats) = run_ok(&dir, "dead-redis", &dead, &input);
    let filtering = stage(&stats, "filtering");
    assert_eq!(filtering["strategy"], "bitmask_filter");
    let reason = filtering["reason"].as_str().unwrap();
    assert!(
        reason.contains("redis_spill (needs a Redis server, which does not answer"),
        "{reason}"
    );
    assert_eq!(fallback_playlist, plain_playlist);
}

/// A native sorting config spilling everything (critical pressure) to
/// `spill_to`.
fn sorting_config(spill_to: &str, servers: &str, spill: &Path) -> String {
    format!(
        "[store]\nspill_directory = {spill:?}\nspill_to = {spill_to:?}\n{servers}\
         [proxy_generation.wasm_plugins]\nenabled = false\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         channel_numbering = [\"inmemory_numbering\"]\n\
         m3u_generation = [\"sorted_writer\"]\n"
    )
}

#[test]
fn the_numbering_barrier_and_the_sorted_writer_spill_to_redis_and_s3() {
    let (Some(redis_server), Some(garage)) =
        (Service::shared(Kind::Redis), Service::shared(Kind::Garage))
    else {
        return;
    };
    let dir = scratch("tiers");
    let input = repo_path(PLAYLIST_FIXTURE);
    let namespace = unique("tiers");
    let prefix = unique("tiers");
    let servers = format!(
        "{}{}",
        redis_server.redis_section(&namespace),
        garage.s3_section(&prefix)
    );
    let mut outputs = BTreeMap::new();
    for spill_to in ["disk", "redis", "s3"] {
        let config = sorting_config(spill_to, &servers, &dir);
        let mut command = cli(&dir, spill_to, &config, Some(&input));
        let out = command
            .args(["--memory-pressure", "critical"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{spill_to}.json"))).unwrap(),
        )
        .unwrap();
        for hold in stats["holds"].as_array().unwrap() {
            assert_eq!(hold["tier"], spill_to, "{hold}");
            assert!(hold["stored_bytes"].as_u64().unwrap() > 0, "{hold}");
        }
        outputs.insert(
            spill_to,
            std::fs::read_to_string(dir.join(format!("{spill_to}.m3u"))).unwrap(),
        );
    }
    assert_eq!(outputs["redis"], outputs["disk"]);
    assert_eq!(outputs["s3"], outputs["disk"]);
    assert_eq!(outputs["disk"].matches("#EXTINF").count(), 10_525);
    assert_eq!(redis_keys(&redis_server, &namespace), Vec::<String>::new());
    assert_eq!(
        s3_client(&garage).list(&prefix).unwrap(),
        Vec::<String>::new()
    );
}

/// The entries of an M3U text (EXTINF line and what follows it).
fn entries(playlist: &str) -> Vec<String> {
    let mut entries = Vec::new();
    for line in playlist.lines() {
        if line.starts_with("#EXTINF") {
            entries.push(String::new());
        }
        if let Some(entry) = entries.last_mut() {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    entries
}

fn tvg_id(entry: &str) -> String {
    entry
        .split("tvg-id=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Two instances at the same time on two providers (the first 60% and the
/// last 60% of the real playlist, a fifth in both) with `config`, twice:
/// together they keep every tvg-id exactly once, every keyless channel, and
/// the same split in the second round. Returns the Redis keys left under
/// `namespace` that are not claims.
fn two_instances_share_one_dedup_set(name: &str, config: &str, service: &Service, namespace: &str) {
    let dir = scratch(name);
    let text = std::fs::read_to_string(repo_path(PLAYLIST_FIXTURE)).unwrap();
    let all = entries(&text);
    let (a_end, b_start) = (all.len() * 6 / 10, all.len() * 4 / 10);
    let write = |name: &str, part: &[String]| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#EXTM3U\n{}", part.concat())).unwrap();
        path
    };
    let sources = [
        write("a.m3u", &all[..a_end]),
        write("b.m3u", &all[b_start..]),
    ];
    // Each instance is known by its host, configuration and output (the
    // default `instance`), the same in both rounds.
    let run_both = || -> Vec<String> {
        let children: Vec<_> = ["a", "b"]
            .iter()
            .zip(&sources)
            .map(|(name, source)| {
                cli(&dir, name, config, Some(source))
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .zip(["a", "b"])
            .map(|(child, name)| {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::read_to_string(dir.join(format!("{name}.m3u"))).unwrap()
            })
            .collect()
    };
    let first = run_both();
    let kept: Vec<String> = first
        .iter()
        .flat_map(|playlist| entries(playlist))
        .collect();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for entry in &kept {
        let id = tvg_id(entry);
        if !id.is_empty() {
            *copies.entry(id).or_default() += 1;
        }
    }
    let expected_keys: std::collections::HashSet<String> = all
        .iter()
        .map(|e| tvg_id(e))
        .filter(|id| !id.is_empty())
        .collect();
    assert_eq!(
        copies.len(),
        expected_keys.len(),
        "every key kept somewhere"
    );
    let repeated: Vec<_> = copies.iter().filter(|(_, &n)| n > 1).collect();
    assert!(repeated.is_empty(), "kept twice: {repeated:?}");
    // Keyless channels are never duplicates: every one of both sources stays.
    let keyless_in = all[..a_end]
        .iter()
        .chain(&all[b_start..])
        .filter(|e| tvg_id(e).is_empty())
        .count();
    let keyless_out = kept.iter().filter(|e| tvg_id(e).is_empty()).count();
    assert_eq!(keyless_out, keyless_in);
    // A second round splits the keys the same way (claims are kept).
    let second = run_both();
    assert!(
        second == first,
        "the second round split the keys differently"
    );
    let run_sets: Vec<String> = redis_keys(service, namespace)
        .into_iter()
        .filter(|key| !key.contains(":claim:"))
        .collect();
    assert_eq!(run_sets, Vec::<String>::new(), "per-run sets are deleted");
}

#[test]
fn two_instances_with_redis_spill_drop_every_cross_source_duplicate_exactly_once() {
    let Some(redis_server) = Service::shared(Kind::Redis) else {
        return;
    };
    let namespace = unique("shared");
    let config = format!(
        "{}[filtering.dedup]\nkey = \"tvg_id\"\n[proxy_generation.wasm_plugins]\nenabled = false\n\
         [proxy_generation.wasm_plugins.strategies]\nfiltering = [\"redis_spill\"]\n",
        redis_server.redis_section(&namespace)
    );
    two_instances_share_one_dedup_set("two-instances", &config, &redis_server, &namespace);
}

/// The `dedup_shared` plugin (dedup's `shared` build: its key set through
/// the `claim_keys` host function), from a plugin directory of `files`.
fn shared_dedup_config(dir: &Path, files: &[&str], filtering: &str) -> String {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let built = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join("dedup_shared.wasm");
    for file in files {
        std::fs::copy(&built, plugins.join(file)).unwrap();
    }
    format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {plugins:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"claim_keys\"]\n\
         [proxy_generation.wasm_plugins.strategies]\nfiltering = [{filtering:?}]\n\
         [plugins.dedup_shared]\nkey = \"tvg_id\"\n"
    )
}

#[test]
fn the_dedup_shared_plugin_shares_its_key_set_through_the_host_in_memory_and_in_redis() {
    // In memory (no [store.redis]): the same as the native streaming dedup.
    let dir = scratch("plugin-memory");
    let input = repo_path(PLAYLIST_FIXTURE);
    let native = "[filtering.dedup]\nkey = \"tvg_id\"\n[proxy_generation.wasm_plugins]\n\
                  enabled = false\n";
    let (native_playlist, _) = run_ok(&dir, "native", native, &input);
    let one = shared_dedup_config(&dir, &["dedup_shared.wasm"], "dedup_shared");
    let (one_playlist, stats) = run_ok(&dir, "one", &one, &input);
    assert_eq!(stage(&stats, "filtering")["strategy"], "dedup_shared");
    assert_eq!(stats["plugin_failures"], 0);
    assert_eq!(one_playlist, native_playlist);
    // Its store lost (a Redis that does not answer): each batch's call
    // fails and falls back to the next candidate, nothing lost.
    let dead = format!(
        "{}[filtering.dedup]\nkey = \"tvg_id\"\n[store.redis]\nurl = \"redis://127.0.0.1:1/0\"\n",
        one.replace(
            "filtering = [\"dedup_shared\"]",
            "filtering = [\"dedup_shared\", \"native_filter\"]",
        )
    );
    let (dead_playlist, stats) = run_ok(&dir, "dead", &dead, &input);
    assert!(
        stats["fallbacks"].as_u64().unwrap() > 0,
        "{}",
        stats["fallbacks"]
    );
    assert_eq!(dead_playlist, native_playlist);

    // In Redis: two instances share the plugin's set, under its own prefix.
    let Some(redis_server) = Service::shared(Kind::Redis) else {
        return;
    };
    let namespace = unique("plugin");
    let dir = scratch("plugin-redis");
    let config = format!(
        "{}{}",
        shared_dedup_config(&dir, &["dedup_shared.wasm"], "dedup_shared"),
        redis_server.redis_section(&namespace)
    );
    two_instances_share_one_dedup_set("plugin-two-instances", &config, &redis_server, &namespace);
    let keys = redis_keys(&redis_server, &namespace);
    assert!(!keys.is_empty());
    let prefix = format!("{namespace}:plugin:dedup_shared:claim:");
    let outside: Vec<&String> = keys
        .iter()
        .filter(|key| !key.starts_with(&prefix))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

/// Feeds the CLI half the playlist on stdin, calls `break_it`, then the
/// rest; the CLI must fail naming `backend`, and leave no output file.
fn fails_mid_run(
    dir: &Path,
    name: &str,
    config: &str,
    backend: &str,
    break_it: impl FnOnce(),
) -> String {
    let text = std::fs::read(repo_path(PLAYLIST_FIXTURE)).unwrap();
    let mut child = cli(dir, name, config, None)
        .args(["--memory-pressure", "critical"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let half = text.len() / 2;
    stdin.write_all(&text[..half]).unwrap();
    stdin.flush().unwrap();
    // Let the pipeline push what it has read.
    std::thread::sleep(Duration::from_millis(500));
    break_it();
    // The CLI may already have stopped reading: a broken pipe is expected.
    let _ = stdin.write_all(&text[half..]);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name} succeeded: {stderr}");
    assert!(stderr.contains(backend), "{name}: {stderr}");
    assert!(
        !dir.join(format!("{name}.m3u")).exists(),
        "{name}: a playlist was written"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
    stderr
}

#[test]
fn redis_stopped_in_the_middle_of_a_run_fails_it_without_a_playlist() {
    let Some(redis_server) = Service::private(Kind::Redis) else {
        return;
    };
    let dir = scratch("redis-stopped");
    let namespace = unique("stopped");
    let config = sorting_config("redis", &redis_server.redis_section(&namespace), &dir);
    let stderr = fails_mid_run(&dir, "stopped", &config, "redis", || redis_server.stop());
    assert!(
        stderr.contains("check that Redis is running") || stderr.contains("start Redis"),
        "{stderr}"
    );

    // A held block carries its TTL, and a dropped holder deletes its keys.
    let Some(fresh) = Service::private(Kind::Redis) else {
        return;
    };
    let mut blocks =
        m3u_plugin_host::remote::RedisBlocks::new(redis(&fresh), "ttl", "run", "test", 3600);
    use m3u_plugin_host::store::BlockBackend;
    let id = blocks.put(b"block").unwrap();
    blocks.put(b"never read").unwrap();
    match redis(&fresh)
        .command(&[b"TTL", b"ttl:held:run:test:0"])
        .unwrap()
    {
        Reply::Integer(ttl) => assert!((3000..=3600).contains(&ttl), "{ttl}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(blocks.take(id).unwrap(), b"block");
    drop(blocks);
    assert_eq!(redis_keys(&fresh, "ttl"), Vec::<String>::new());
}

#[test]
fn garage_stopped_or_refusing_writes_in_the_middle_of_a_run_fails_it_without_a_playlist() {
    let Some(garage) = Service::private(Kind::Garage) else {
        return;
    };
    let dir = scratch("garage-stopped");
    let key = garage.get("M3U_TEST_S3_ACCESS_KEY_ID").to_string();
    let bucket = garage.get("M3U_TEST_S3_BUCKET").to_string();

    // The bucket refuses writes half-way.
    let prefix = unique("refused");
    let config = sorting_config("s3", &garage.s3_section(&prefix), &dir);
    let stderr = fails_mid_run(&dir, "refused", &config, "s3://", || {
        garage.garage(&["bucket", "deny", "--write", &bucket, "--key", &key]);
    });
    assert!(stderr.contains("403"), "{stderr}");
    assert!(stderr.contains("may read and write the bucket"), "{stderr}");
    garage.garage(&["bucket", "allow", "--write", &bucket, "--key", &key]);
    // The refusal covers deletes too: what the run had stored stays, under
    // its own run's prefix only, for the bucket's lifecycle rule (README).
    let left = s3_client(&garage).list(&prefix).unwrap();
    let runs: std::collections::BTreeSet<&str> = left
        .iter()
        .map(|key| key.split('/').nth(1).unwrap())
        .collect();
    assert!(runs.len() <= 1, "{left:?}");

    // The server stops half-way.
    let prefix = unique("stopped");
    let config = sorting_config("s3", &garage.s3_section(&prefix), &dir);
    let stderr = fails_mid_run(&dir, "stopped", &config, "s3://", || garage.stop());
    assert!(
        stderr.contains("cannot connect") || stderr.contains("failed"),
        "{stderr}"
    );
}
