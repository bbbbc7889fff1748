#!/bin/sh
# Benchmark diskimg against qemu-img side by side. See scripts/README.md.
#   scripts/bench.sh [--rounds N] [--workdir DIR] [--keep] [--diskimg PATH] [--only a,b,c] [--quick]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/bench.py" "$@"
