#!/usr/bin/env bash
# Peak RSS and wall time of `m3u-plugin-host run` at 10k / 100k / 1M channels
# derived from the real playlist, with two plugins (group_normalizer,
# passthrough), once at forced `optimal` pressure (in-memory strategies) and
# once at `high` (streaming), and a native-only streaming baseline (no
# plugins) in the same run. Prints one line per run; figures in BENCHMARKS.md.
#   benches/rss.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example derive_playlist
cargo build --release --quiet
mkdir -p bench-data
config=bench-data/rss.toml
cat > "$config" <<TOML
[output]
path = "/dev/null"
[proxy_generation.wasm_plugins]
plugin_directory = "../target/plugins"
[proxy_generation.wasm_plugins.security]
allowed_host_functions = ["log", "read_channels", "write_channels", "get_config"]
[proxy_generation.wasm_plugins.strategies]
source_loading = ["inmemory_full"]
data_mapping = ["group_normalizer"]
filtering = ["passthrough"]
channel_numbering = ["inmemory_numbering"]
m3u_generation = ["sorted_writer"]
TOML
native=bench-data/rss-native.toml
printf '[output]\npath = "/dev/null"\n[proxy_generation.wasm_plugins]\nenabled = false\n' > "$native"
printf '%-9s %-8s %-8s %12s %10s  %s\n' channels plugins pressure "peak RSS" time strategies
for n in 10000 100000 1000000; do
  input=bench-data/derived-$n.m3u
  [ -s "$input" ] || ./target/release/examples/derive_playlist "$n" > "$input"
  for run in "$config 2 optimal" "$config 2 high" "$native 0 high"; do
    read -r run_config plugins level <<<"$run"
    ./target/release/m3u-plugin-host run -q --config "$run_config" --input "$input" \
      --memory-pressure "$level" --stats-json bench-data/stats.json
    python3 - "$n" "$plugins" "$level" <<'PY'
import json, sys
s = json.load(open("bench-data/stats.json"))
print(f"{sys.argv[1]:<9} {sys.argv[2]:<8} {sys.argv[3]:<8} {s['peak_rss_bytes']/1048576:>8.1f} MiB {s['time_ms']:>7.0f} ms  "
      + ",".join(st['strategy'] for st in s['stages']))
PY
  done
done
