#!/usr/bin/env bash
# The device check (benchmarks/gpu_check.py): runs from a plain checkout, picochat need not be installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$root/benchmarks/gpu_check.py" "$@"
