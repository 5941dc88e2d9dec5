#!/usr/bin/env bash
# GPU check (issue 11): for a machine with an NVIDIA GPU (or any GPU) and a Vulkan driver, and no
# network. Runs the wgpu parity suite on the GPU, then times a 1024x1024 edit of the real-size
# synthetic checkpoint on wgpu with per-stage timings, and prints one summary table. Plan on
# about 10 minutes (most of it writing the 9.4 GB checkpoint and loading it).
#
#   scripts/gpu-check.sh [--bin DIR] [--steps N] [--cache DIR] [--dtypes "f32 f16"] [--out DIR]
#
# --bin DIR: prebuilt binaries instead of building (for a GPU machine without Rust): DIR holds
#   `editmgt` (built with the wgpu feature), `synth-checkpoint`, and the parity test binaries
#   named `parity-<crate>` (e.g. parity-editmgt-mgt). Make them on a Linux x86-64 build machine
#   with `scripts/gpu-check.sh --package DIR` (it builds in release and copies them there).
# Without --bin it builds offline here: `cargo test --release --workspace --no-run` (the test
#   build has wgpu compiled in) and `cargo build --release -p editmgt-testkit`.
# --steps: edit steps (default 36, the released schedule). --dtypes: the compute dtypes to edit
#   in, one edit each (default f32; f16 needs the adapter's shader-f16, and wgpu has no bf16).
#   --dtype is the same for one. --cache: where the synthetic checkpoint goes (default
#   target/synth-bf16; reused when it is there). --out: logs and edited images (default
#   target/gpu-check).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=""
PACKAGE=""
STEPS=36
CACHE=""
DTYPES=f32
OUT=""

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --package) PACKAGE="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --cache) CACHE="$2"; shift 2 ;;
        --dtype|--dtypes) DTYPES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$STEPS" =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu-check.sh: --steps must be a positive integer, not '$STEPS'" >&2
    exit 2
fi

CRATES=(editmgt-vq editmgt-text editmgt-mgt editmgt-attention editmgt-sampler editmgt-pipeline)

# Builds in release and lists the binaries: "name path" lines.
build() {
    (cd "$ROOT" && cargo build --release --offline -p editmgt-testkit --bin synth-checkpoint >&2)
    (cd "$ROOT" && cargo test --release --offline --workspace --no-run --message-format=json) |
        python3 -c '
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    # The package folder names the crate (a path package id may omit the name).
    pkg = m["manifest_path"].rsplit("/", 2)[-2]
    if t["name"] == "parity" and "test" in t["kind"] and pkg in want:
        print("parity-" + pkg, m["executable"])
    elif t["name"] == "editmgt" and "bin" in t["kind"] and not m["profile"]["test"]:
        print("editmgt", m["executable"])
' "${CRATES[@]}"
    echo "synth-checkpoint $ROOT/target/release/synth-checkpoint"
}

if [[ -n "$PACKAGE" ]]; then
    mkdir -p "$PACKAGE"
    build | while read -r name path; do cp "$path" "$PACKAGE/$name"; done
    ls -l "$PACKAGE"
    exit 0
fi

if [[ -z "$BIN" ]]; then
    BIN="$ROOT/target/gpu-check-bin"
    mkdir -p "$BIN"
    echo "== building (release, offline)"
    build | while read -r name path; do ln -sf "$path" "$BIN/$name"; done
fi
for need in editmgt synth-checkpoint; do
    [[ -x "$BIN/$need" ]] || { echo "gpu-check.sh: $BIN/$need is missing" >&2; exit 2; }
done

CACHE="${CACHE:-$ROOT/target/synth-bf16}"
OUT="${OUT:-$ROOT/target/gpu-check}"
mkdir -p "$OUT"
export EDITMGT_FIXTURES="${EDITMGT_FIXTURES:-$ROOT/fixtures/tiny}"
export EDITMGT_TEST_DEVICE=wgpu

echo "== GPU"
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) || true
(command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName' | head -4) || true

ROWS="$OUT/rows"
: > "$ROWS"
status=0

echo "== wgpu parity suite ($EDITMGT_FIXTURES)"
for crate in "${CRATES[@]}"; do
    exe="$BIN/parity-$crate"
    if [[ ! -x "$exe" ]]; then
        echo "parity $crate|missing|-" >> "$ROWS"
        continue
    fi
    start=$(date +%s.%N)
    # The tests locate fixture files relative to the crate, as cargo runs them.
    if (cd "$ROOT/crates/$crate" && "$exe" --test-threads 1 --nocapture) > "$OUT/parity-$crate.log" 2>&1; then
        result=passed
    else
        result=FAILED
        status=1
        tail -15 "$OUT/parity-$crate.log" >&2
    fi
    end=$(date +%s.%N)
    echo "parity $crate|$result|$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f s", b - a }')" >> "$ROWS"
    echo "   $crate: $result"
done

echo "== synthetic checkpoint in $CACHE (written once)"
start=$(date +%s.%N)
"$BIN/synth-checkpoint" --out "$CACHE" --dtype bf16 --seed 0
end=$(date +%s.%N)
echo "synthetic checkpoint|ok|$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f s", b - a }')" >> "$ROWS"

for DTYPE in $DTYPES; do
    echo "== 1024x1024 edit on wgpu, $STEPS steps, $DTYPE"
    start=$(date +%s.%N)
    if "$BIN/editmgt" edit --model "$CACHE" --image "$EDITMGT_FIXTURES/cases/source.png" \
        --prompt "make it into Ghibli style" --steps "$STEPS" --seed 0 --device wgpu --dtype "$DTYPE" \
        --timings --quiet --out "$OUT/edit-$DTYPE.png" > "$OUT/edit-$DTYPE.log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
    fi
    end=$(date +%s.%N)
    sed 's/^/   /' "$OUT/edit-$DTYPE.log"
    echo "edit $STEPS steps ($DTYPE)|$result|$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f s", b - a }')" >> "$ROWS"
done

echo
echo "| check | result | time |"
echo "|---|---|---:|"
while IFS='|' read -r what result time; do
    echo "| $what | $result | $time |"
done < "$ROWS"
exit "$status"
