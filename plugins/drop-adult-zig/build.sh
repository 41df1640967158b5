#!/bin/sh
# Builds the drop_adult_zig plugin: ./build.sh OUTPUT.wasm
# Needs Zig from PyPI (run as `python3 -m ziglang`): pip install ziglang==0.14.1
set -eu

ZIG_VERSION=0.14.1
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTPUT.wasm" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)

if ! found=$(python3 -m ziglang version 2>/dev/null); then
    echo "error: Zig not found (python3 -m ziglang); install it with: pip install ziglang==$ZIG_VERSION" >&2
    exit 1
fi
if [ "$found" != "$ZIG_VERSION" ]; then
    echo "warning: built and tested with Zig $ZIG_VERSION, found $found (pip install ziglang==$ZIG_VERSION)" >&2
fi

# Zig leaves an object file next to its output: build in a scratch directory.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# wasm32-freestanding: no WASI, no libc. -fno-entry: no _start. -rdynamic:
# export the `export fn`s. --stack 65536: a 64 KiB stack instead of 1 MiB
# (memory = 1 MiB arena + stack + data, 18 pages). -flld: LLD keeps the
# m3u_abi_version custom section (Zig's own wasm linker drops it).
python3 -m ziglang build-exe "$here/drop_adult.zig" \
    -target wasm32-freestanding -O ReleaseSmall \
    -fno-entry -rdynamic --stack 65536 -flld \
    -femit-bin="$tmp/drop_adult_zig.wasm"
cp "$tmp/drop_adult_zig.wasm" "$out"
echo "built $out"
