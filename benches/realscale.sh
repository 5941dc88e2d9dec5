#!/usr/bin/env bash
# Real-scale benchmark (issue 13): a 1024x1024 edit with a full-size checkpoint of random
# weights, timed and measured (wall time, peak resident memory, load, time per step and the
# rest) in f32 and bf16, with and without --low-memory, printed as one Markdown table. The step
# is the mean of steps 2..N on both sides (the reference's step callbacks bracket those), so it
# needs --steps 2 or more (the default).
#
#   benches/realscale.sh [--steps N] [--cache DIR] [--checkpoint-dtype f32|f16|bf16]
#                        [--dtypes "f32 bf16"] [--seed N] [--out DIR]
#                        [--with-reference --reference PATH] [--reference-dtypes "f32 bf16"]
#                        [--skip-low-memory] [--threads N]
#
# The checkpoint (about 9.4 GB in bf16, 19 GB in f32) is written once by the testkit's
# `synth-checkpoint` into the cache folder (default target/synth-<checkpoint dtype>) and reused
# by later runs. Each edit needs the memory the table reports (about 20 GB in f32 today), so run
# it on a machine with nothing else big running. Needs GNU time (/usr/bin/time).
#
# --skip-low-memory: only the default runs (not again with --low-memory).
#
# --with-reference: also the PyTorch reference pipeline (float32; --reference-dtypes "f32 bf16"
# adds a bfloat16 run, on PyTorch's own bf16 kernels) on the same folder, steps and threads: a
# venv in target/realscale-venv gets torch 2.1.0, diffusers 0.32.1 and transformers 4.47.1 from
# PyPI, and benches/pytorch/bench_reference.py --only pipeline imports the reference
# from the checkout given by --reference (the folder holding src/). Before that, one transformer
# forward of both sides on the same synthetic weights and inputs (the `forward_check` example,
# then bench_reference.py --only forward_check): the logits must agree within 1e-3 relative.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEPS=2
CKPT_DTYPE=bf16
CACHE=""
DTYPES="f32 bf16"
SEED=0
OUT=""
WITH_REFERENCE=0
REFERENCE=""
REFERENCE_DTYPES="f32"
LOW_MEMORY=1
THREADS=""
IMAGE="$ROOT/fixtures/tiny/cases/source.png" # 1024x1024
PROMPT="make it into Ghibli style"

usage() {
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) STEPS="$2"; shift 2 ;;
        --cache) CACHE="$2"; shift 2 ;;
        --checkpoint-dtype) CKPT_DTYPE="$2"; shift 2 ;;
        --dtypes) DTYPES="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --with-reference) WITH_REFERENCE=1; shift ;;
        --reference) REFERENCE="$2"; shift 2 ;;
        --reference-dtypes) REFERENCE_DTYPES="$2"; shift 2 ;;
        --skip-low-memory) LOW_MEMORY=0; shift ;;
        --threads) THREADS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "realscale.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if ! [[ "$STEPS" =~ ^[1-9][0-9]*$ ]]; then
    echo "realscale.sh: --steps must be a positive integer, not '$STEPS'" >&2
    exit 2
fi
if [[ ! -x /usr/bin/time ]]; then
    echo "realscale.sh: GNU time (/usr/bin/time) is needed to measure peak memory (Debian: apt-get install time)" >&2
    exit 2
fi
CACHE="${CACHE:-$ROOT/target/synth-$CKPT_DTYPE}"
OUT="${OUT:-$ROOT/target/realscale}"
mkdir -p "$OUT"
if [[ -n "$THREADS" ]]; then
    export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
fi

# Whether the cache already holds the checkpoint for this dtype and seed (synth-checkpoint's
# `.complete` markers), so that synth-checkpoint need not be built or run.
checkpoint_complete() {
    local component
    for component in editmgt vqvae text_encoder llm_encoder; do
        local marker="$CACHE/$component/.complete"
        [[ -f "$marker" ]] || return 1
        grep -q "\"dtype\": \"$CKPT_DTYPE\"" "$marker" || return 1
        grep -q "\"seed\": $SEED\b" "$marker" || return 1
    done
    [[ -d "$CACHE/tokenizer" && -d "$CACHE/scheduler" ]]
}

echo "== building (release)"
(cd "$ROOT" && cargo build --release -p editmgt-cli)
EDITMGT="$ROOT/target/release/editmgt"

if checkpoint_complete; then
    echo "== synthetic checkpoint ($CKPT_DTYPE, seed $SEED) already in $CACHE"
else
    echo "== synthetic checkpoint ($CKPT_DTYPE, seed $SEED) in $CACHE"
    # Without the test kit's default `wgpu` feature: the writer needs no GPU backend.
    (cd "$ROOT" && cargo build --release -p editmgt-testkit --no-default-features --bin synth-checkpoint)
    "$ROOT/target/release/synth-checkpoint" --out "$CACHE" --dtype "$CKPT_DTYPE" --seed "$SEED"
fi

# Stage timings, when this editmgt has them (issue 13, item 2).
TIMINGS=()
if "$EDITMGT" edit --help 2>/dev/null | grep -q -- "--timings"; then
    TIMINGS=(--timings)
fi

# Seconds of the `--timings` row that starts with LABEL in FILE (the value is in ms), or nothing.
timing() {
    awk -v k="$1" 'index($0, k) == 1 && $NF ~ /^[0-9.]+$/ { printf "%.1f", $NF / 1000; exit }' "$2"
}

# "load|step|fixed" of one of our edit logs: the load, one step (transformer + sampler, the mean
# of steps 2..N) and the edit minus steps 2..N (the fixed cost plus the first step, as the
# reference's callbacks measure it); "n/a" where a value needs --timings or two steps.
stage_times() {
    local log="$1" load edit transformer sampler
    load="$(timing "load total" "$log")"
    edit="$(timing "edit total" "$log")"
    transformer="$(timing "transformer, mean of steps 2.." "$log")"
    sampler="$(timing "sampler, mean per step" "$log")"
    if [[ -n "$transformer" && -n "$sampler" && -n "$edit" ]]; then
        awk -v l="${load:-0}" -v e="$edit" -v t="$transformer" -v s="$sampler" -v n="$STEPS" \
            'BEGIN { printf "%.1f s|%.1f s|%.1f s", l, t + s, e - (n - 1) * (t + s) }'
    elif [[ -n "$edit" ]]; then
        if [[ -n "$load" ]]; then load="$load s"; else load="n/a"; fi
        echo "$load|n/a|$edit s"
    else
        echo "n/a|n/a|n/a"
    fi
}

# Runs one edit under GNU time; appends "dtype|low|wall|peak|load|step|fixed" to $OUT/rows.
ROWS="$OUT/rows"
: > "$ROWS"
run_edit() {
    local dtype="$1" low="$2"
    local name="edit-$dtype${low:+-low-memory}"
    local flags=(--dtype "$dtype" --steps "$STEPS" --seed 0 --quiet "${TIMINGS[@]}")
    [[ -n "$low" ]] && flags+=(--low-memory)
    echo "== $name: editmgt edit ${flags[*]}"
    if ! /usr/bin/time -v -o "$OUT/$name.time" "$EDITMGT" edit --model "$CACHE" --image "$IMAGE" \
        --prompt "$PROMPT" --out "$OUT/$name.png" "${flags[@]}" > "$OUT/$name.log" 2>&1; then
        echo "   failed; see $OUT/$name.log and $OUT/$name.time" >&2
        tail -5 "$OUT/$name.log" >&2 || true
        echo "$dtype|${low:+yes}|failed|failed|n/a|n/a|n/a" >> "$ROWS"
        return 0
    fi
    local wall peak_kb
    wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$OUT/$name.time")"
    peak_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/$name.time")"
    local seconds
    seconds="$(awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }' <<< "$wall")"
    local peak
    peak="$(awk '{ printf "%.2f", $1 / 1048576 }' <<< "$peak_kb")"
    echo "   ${seconds} s, peak ${peak} GiB"
    [[ ${#TIMINGS[@]} -gt 0 ]] && grep -v '^\s*$' "$OUT/$name.log" | sed 's/^/   /' || true
    echo "$dtype|${low:+yes}|$seconds s|$peak GiB|$(stage_times "$OUT/$name.log")" >> "$ROWS"
}

for dtype in $DTYPES; do
    run_edit "$dtype" ""
    if [[ "$LOW_MEMORY" == 1 ]]; then
        run_edit "$dtype" "yes"
    fi
done

# The PyTorch reference pipeline on the same folder, steps and threads, in each of
# $REFERENCE_DTYPES: rows "dtype|low|wall|peak|load|step|fixed" in $OUT/reference-rows.
REF_ROWS="$OUT/reference-rows"
: > "$REF_ROWS"
if [[ "$WITH_REFERENCE" == 1 ]]; then
    if [[ -z "$REFERENCE" || ! -f "$REFERENCE/src/transformer.py" ]]; then
        echo "realscale.sh: --with-reference needs --reference PATH, a checkout of" \
            "https://github.com/weichow23/EditMGT (the folder holding src/)" >&2
        exit 2
    fi
    VENV="$ROOT/target/realscale-venv"
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "== creating $VENV and installing the reference's packages from PyPI"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet torch==2.1.0 diffusers==0.32.1 transformers==4.47.1 peft==0.14.0 \
            accelerate einops scipy "numpy<2" pillow safetensors sentencepiece protobuf termcolor \
            "opencv-python-headless==4.10.0.84" "pyarrow==17.0.0" torchvision==0.16.0 pyyaml
    fi
    echo "== real-size transformer forward: ours, then the reference's on the same weights and inputs"
    (cd "$ROOT" && cargo build --release -p editmgt-examples --example forward_check)
    FORWARD_OK=1
    if ! "$ROOT/target/release/examples/forward_check" "$CACHE" "$OUT/forward_check.safetensors" \
        > "$OUT/forward_check.log" 2>&1 ||
        ! "$VENV/bin/python" "$ROOT/benches/pytorch/bench_reference.py" --reference "$REFERENCE" \
            --only forward_check --model "$CACHE" --check-file "$OUT/forward_check.safetensors" \
            --threads "${THREADS:-$(nproc)}" >> "$OUT/forward_check.log" 2>&1; then
        FORWARD_OK=0
    fi
    sed 's/^/   /' "$OUT/forward_check.log"
    for ref_dtype in $REFERENCE_DTYPES; do
        echo "== reference pipeline ($ref_dtype, $STEPS step(s))"
        name="reference-$ref_dtype"
        if /usr/bin/time -v -o "$OUT/$name.time" "$VENV/bin/python" "$ROOT/benches/pytorch/bench_reference.py" \
            --reference "$REFERENCE" --only pipeline --model "$CACHE" --image "$IMAGE" --prompt "$PROMPT" \
            --steps "$STEPS" --threads "${THREADS:-$(nproc)}" --pipeline-dtype "$ref_dtype" \
            --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1; then
            sed 's/^/   /' "$OUT/$name.log"
            wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$OUT/$name.time")"
            peak_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/$name.time")"
            seconds="$(awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }' <<< "$wall")"
            peak="$(awk '{ printf "%.2f", $1 / 1048576 }' <<< "$peak_kb")"
            # Load, mean step after the first and edit minus those steps, from the bench's JSON.
            ref_stages="$("$VENV/bin/python" - "$OUT/$name.json" <<'PY'
import json, sys
rows = {r["bench"]: r["median_s"] for r in json.load(open(sys.argv[1]))["rows"]}
def pick(prefix):
    v = next((s for b, s in rows.items() if b.startswith(prefix)), None)
    return "n/a" if v is None else f"{v:.1f} s"
edit = pick("pipeline / fixed cost")
if edit == "n/a":
    edit = pick("pipeline / edit")
print("|".join([pick("pipeline / load"), pick("pipeline / step"), edit]))
PY
)" || ref_stages="n/a|n/a|n/a"
            echo "$ref_dtype|no|$seconds s|$peak GiB|$ref_stages" >> "$REF_ROWS"
        else
            echo "   the reference failed; see $OUT/$name.log" >&2
            tail -20 "$OUT/$name.log" >&2 || true
            echo "$ref_dtype|no|failed|failed|n/a|n/a|n/a" >> "$REF_ROWS"
        fi
    done
fi

echo
echo "1024x1024 edit, $STEPS step(s), checkpoint $CKPT_DTYPE on disk ($CACHE), $(nproc) cores${THREADS:+, $THREADS threads}"
echo
echo "| side | dtype | --low-memory | wall time | peak RSS | load | step (mean of 2..N) | edit minus steps 2..N |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
while IFS='|' read -r dtype low wall peak load step fixed; do
    echo "| editmgt-rs | $dtype | ${low:-no} | $wall | $peak | $load | $step | $fixed |"
done < "$ROWS"
REF_FAILED=0
while IFS='|' read -r dtype low wall peak load step fixed; do
    echo "| PyTorch reference | $dtype | $low | $wall | $peak | $load | $step | $fixed |"
    [[ "$wall" == failed ]] && REF_FAILED=1
done < "$REF_ROWS"
# Ratios of each of our default runs to each reference run (below 1: we are faster / smaller).
ratio() { awk -v a="${1% *}" -v b="${2% *}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "n/a" }'; }
if [[ -s "$REF_ROWS" ]]; then
    echo
    while IFS='|' read -r our_dtype our_low our_wall our_peak _ our_step our_fixed; do
        [[ -n "$our_low" || "$our_wall" == failed ]] && continue
        while IFS='|' read -r ref_dtype _ wall peak _ step fixed; do
            [[ "$wall" == failed ]] && continue
            echo "$our_dtype editmgt-rs / $ref_dtype reference: time $(ratio "$our_wall" "$wall")," \
                "step $(ratio "$our_step" "$step"), edit minus steps 2..N $(ratio "$our_fixed" "$fixed")," \
                "peak memory $(ratio "$our_peak" "$peak")"
        done < "$REF_ROWS"
    done < "$ROWS"
fi
if [[ "$WITH_REFERENCE" == 1 ]]; then
    [[ "$REF_FAILED" == 1 ]] && exit 1
    if [[ "$FORWARD_OK" != 1 ]]; then
        echo "the real-size forward check failed; see $OUT/forward_check.log" >&2
        exit 1
    fi
fi
