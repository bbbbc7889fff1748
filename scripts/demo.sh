#!/usr/bin/env bash
# The main job, from a fresh clone: build diskimg, make a small qcow2 with
# QEMU's tools, and look at it with diskimg (info, map, convert, compare).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p diskimg-cli
bin=$PWD/target/release/diskimg
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
qemu-img create -q -f qcow2 demo.qcow2 64M
qemu-io -c 'write -P 0xab 1M 2M' -c 'write -z 8M 1M' demo.qcow2 >/dev/null
set -x
"$bin" info demo.qcow2
"$bin" info --output=json demo.qcow2
"$bin" map --output=json demo.qcow2
"$bin" check demo.qcow2
"$bin" convert -O raw demo.qcow2 demo.raw
"$bin" compare demo.qcow2 demo.raw
