#!/bin/sh
# Builds the url_rewriter_as plugin: ./build.sh OUTPUT.wasm
#
# npm ci (only when node_modules is missing), then the AssemblyScript
# compiler, then add-abi-section.mjs, which checks imports and exports and
# appends the `m3u_abi_version` custom section (docs/ABI.md §1).
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUTPUT.wasm" >&2
    exit 2
fi
case $1 in
    /*) out=$1 ;;
    *) out=$(pwd)/$1 ;;
esac

for tool in node npm npx; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: '$tool' not found: the url_rewriter_as plugin needs Node.js (>= 20) and npm (>= 10) to build (https://nodejs.org/)" >&2
        exit 1
    fi
done
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "build.sh: Node.js $(node --version) is too old: AssemblyScript 0.28 needs Node.js >= 20" >&2
    exit 1
fi

cd "$(dirname "$0")"
here=$(pwd)
# The compiler's node_modules: under target/ when cargo's build.rs runs this
# (M3U_FOREIGN_BUILD_DIR), here when run by hand. npm ci again whenever the
# lockfile changed.
work=${M3U_FOREIGN_BUILD_DIR:-$here}
if [ "$work" != "$here" ] && ! cmp -s package-lock.json "$work/package-lock.json"; then
    cp package.json package-lock.json "$work/"
    rm -rf "$work/node_modules"
fi
if [ ! -d "$work/node_modules" ]; then
    (cd "$work" && npm ci --no-audit --no-fund)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --runtime stub: no GC and no imports (the plugin never allocates anyway);
# --use abort=: no env.abort import (a failed assertion is `unreachable`);
# --initialMemory 17: 17 pages hold the static data and the 1 MiB arena,
# so no memory.grow is needed (and paid for in fuel) at load;
# -O3 --noAssert: fewer instructions, i.e. less fuel, over size.
# The runtime helpers are not exported (no --exportRuntime).
"$work/node_modules/.bin/asc" "$here/assembly/index.ts" \
    --outFile "$tmp/url_rewriter_as.wasm" \
    -O3 --noAssert \
    --runtime stub \
    --initialMemory 17 \
    --use abort=

node add-abi-section.mjs "$tmp/url_rewriter_as.wasm" "$out"
