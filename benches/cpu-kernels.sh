#!/usr/bin/env bash
# The CPU kernels side by side in one run (issue 14): each criterion bench with the kernels on and
# off (`EDITMGT_FUSED_ATTENTION=0`, `EDITMGT_DIRECT_CONV=0`, `EDITMGT_GROUP_NORM_KERNEL=0` select
# Burn's own ops), then the PyTorch
# reference at the same shapes (`pytorch/bench_reference.py`), and one table of medians and ratios.
#
#   benches/cpu-kernels.sh --reference /path/to/EditMGT [--python PYTHON] [--threads N]
#                          [--kernels-on-only]
#
# --kernels-on-only skips the runs with the kernels off (about half the time); the table's
# "kernels off" column is then empty.
# PYTHON defaults to target/realscale-venv/bin/python (made by `benches/realscale.sh
# --with-reference`); the reference checkout holds `src/transformer.py`. Both sides get the same
# thread count (default 2). Keep the machine otherwise idle: nothing here is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

reference="" python="target/realscale-venv/bin/python" threads=2 modes="on off"
while [ $# -gt 0 ]; do
    case "$1" in
        --reference) reference="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --kernels-on-only) modes="on"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$reference" ] || { echo "--reference PATH (a checkout of the PyTorch EditMGT) is required" >&2; exit 2; }
[ -x "$python" ] || { echo "no python at $python (run benches/realscale.sh --with-reference, or pass --python)" >&2; exit 2; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export RAYON_NUM_THREADS="$threads"

cargo bench -p editmgt-core --bench attention --bench conv --no-run
cargo bench -p editmgt-mgt --bench forward --no-run
cargo bench -p editmgt-vq --bench vq --no-run

# Medians from criterion's "time: [low median high]" lines, as "<bench id> <seconds>".
medians() {
    awk '
        /^[A-Za-z0-9_+\/.-]+$/ { id = $1 }
        /time:/ {
            if ($1 != "time:") id = $1
            gsub(/[\[\]]/, "")
            for (i = 1; i <= NF; i++) if ($i == "time:") { v = $(i + 3); u = $(i + 4) }
            s = (u == "s") ? v : (u == "ms") ? v / 1e3 : (u == "µs" || u == "us") ? v / 1e6 : v / 1e9
            printf "%s %.6f\n", id, s
        }'
}

run() { # label-suffix env... -- cargo bench args
    local suffix="$1"; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" cargo bench "$@" 2>/dev/null | medians | sed "s|\$| $suffix|" >>"$out/rust"
}

echo "== criterion benches (kernels on, then off)"
run on EDITMGT_FUSED_ATTENTION=1 EDITMGT_DIRECT_CONV=1 -- -p editmgt-core --bench attention --bench conv -- "fused|direct"
if [ "$modes" != on ]; then
    run off EDITMGT_FUSED_ATTENTION=1 -- -p editmgt-core --bench attention --bench conv -- burn_op
fi
for mode in $modes; do
    flag=1; [ "$mode" = off ] && flag=0
    kernels=(EDITMGT_FUSED_ATTENTION=$flag EDITMGT_DIRECT_CONV=$flag EDITMGT_GROUP_NORM_KERNEL=$flag)
    run "$mode" "${kernels[@]}" -- -p editmgt-mgt --bench forward
    run "$mode" "${kernels[@]}" -- -p editmgt-vq --bench vq
done

echo "== the PyTorch reference"
"$python" benches/pytorch/bench_reference.py --reference "$reference" --threads "$threads" \
    --only mgt attention vq --mgt-bf16 --json "$out/pytorch.json" >"$out/pytorch.log"

"$python" - "$out/rust" "$out/pytorch.json" <<'PY'
import json, sys
rust = {}
for line in open(sys.argv[1]):
    bench, seconds, mode = line.split()
    rust[(bench, mode)] = float(seconds)
torch = {r["bench"]: r["median_s"] for r in json.load(open(sys.argv[2]))["rows"]}
rows = [
    ("attention [2,8,2304,128], strength bias", "attention_2x8x2304x128/fused/bias", "attention_2x8x2304x128/burn_op/bias",
     "attention / [2, 8, 2304, 128] with strength bias"),
    ("attention [2,8,2304,128], no bias", "attention_2x8x2304x128/fused/no_bias", "attention_2x8x2304x128/burn_op/no_bias",
     "attention / [2, 8, 2304, 128] without bias"),
    ("conv 3x3, 128 ch, 256x256", "conv3x3/direct/128ch_256x256", "conv3x3/burn_op/128ch_256x256", None),
    ("conv 3x3, 512 ch, 32x32", "conv3x3/direct/512ch_32x32", "conv3x3/burn_op/512ch_32x32", None),
    ("conv 3x3, 3 -> 128 ch, 256x256", "conv3x3/direct/3to128ch_256x256", "conv3x3/burn_op/3to128ch_256x256", None),
    ("MGT forward, 1 double + 2 single", "mgt_forward_real_width_1d_2s/no_capture", None, "mgt_forward / no_capture"),
    ("MGT forward, bf16 products (--dtype bf16)", "mgt_forward_real_width_1d_2s/no_capture_bf16_products", None,
     "mgt_forward / no_capture"),
    ("MGT forward, bf16 products against PyTorch's bf16", "mgt_forward_real_width_1d_2s/no_capture_bf16_products", None,
     "mgt_forward / no_capture, bf16"),
    ("MGT forward, capturing a block", "mgt_forward_real_width_1d_2s/capture_single_block", None,
     "mgt_forward / capture_single_block"),
    ("VQ encode + quantize, 256x256", "vq_256x256_real_widths/encode+quantize", None, "vq / encode+quantize"),
    ("VQ decode, 256x256", "vq_256x256_real_widths/decode", None, "vq / decode"),
]
def fmt(s):
    return "" if s is None else (f"{s:.3f} s" if s >= 1 else f"{s * 1e3:.0f} ms")
def ratio(a, b):
    return "" if a is None or b is None else f"{a / b:.2f}"
print()
print("| bench | kernels on | kernels off (Burn's ops) | PyTorch | on / off | on / PyTorch |")
print("|---|---:|---:|---:|---:|---:|")
for label, on_id, off_id, torch_id in rows:
    on = rust.get((on_id, "on"))
    off = rust.get((off_id or on_id, "off"))
    pt = torch.get(torch_id) if torch_id in torch else next((v for k, v in torch.items() if torch_id and k.startswith(torch_id)), None)
    print(f"| {label} | {fmt(on)} | {fmt(off)} | {fmt(pt)} | {ratio(on, off)} | {ratio(on, pt)} |")
PY
