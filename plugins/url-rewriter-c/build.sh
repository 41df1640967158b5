#!/bin/sh
# Builds url_rewriter_c.wasm: sh build.sh <output.wasm>
# Needs clang (any version with the wasm32 target) and lld's wasm-ld.
set -eu

out=${1:?usage: build.sh <output.wasm>}
here=$(cd "$(dirname "$0")" && pwd)
sdk="$here/../../sdk-c"
cc=${CLANG:-clang}

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "build.sh: $cc not found; install it with: apt-get install clang lld" >&2
    exit 1
fi
if ! command -v wasm-ld >/dev/null 2>&1; then
    echo "build.sh: wasm-ld not found; install it with: apt-get install clang lld" >&2
    exit 1
fi

exec "$cc" --target=wasm32 -std=c99 -O2 -ffreestanding -nostdlib -mbulk-memory \
    -Wall -Wextra -Werror \
    -Wl,--no-entry -Wl,--strip-all \
    -I "$sdk" -o "$out" "$here/url_rewriter.c"
