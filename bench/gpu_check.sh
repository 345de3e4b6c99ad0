#!/usr/bin/env bash
# The GPU check: one unattended run on a CUDA machine that writes OUT/gpu_check.json,
# OUT/gpu_check.md (the tables for bench/RESULTS.md) and OUT/gpu_check.log.
#
#   bash bench/gpu_check.sh [OUT] [--tiny] [--steps kernels,train,...]
#
# OUT defaults to $OUT. Without a CUDA GPU it prints one line and exits 0 (CI, laptops).
# --tiny runs every step on the CPU at tiny sizes (the dry run tests/test_gpu_check.py does).
# --steps runs only those steps (a second run after one failed); the others read "not run".
#
# Needs only what the GPU machine has (python3 with torch, triton, pytest): this checkout
# runs from PYTHONPATH, nothing is installed into that python. SAELens and sparsify come as
# wheels in bench/gpu_wheels/ (made by `bash bench/gpu_wheels.sh` where a package registry
# is reachable) and are unpacked into a folder of their own; without them the peer runners
# are recorded as skipped, with the reason. GPU_CHECK_PYTHON picks the interpreter (default
# python3); GPU_CHECK_PEERS_PYTHON an interpreter that already has the peers (no wheels then).
#
# Every step runs in its own process under `timeout`, so a failure or a hang costs at most
# its cap and the steps after it still run. Time budget on one H200, in seconds (expected:
# an estimate from the sizes in bench/gpu_check.py; cap: the timeout):
#
#   step      expected  cap  what
#   peers          15    30  unpack the peer wheels (pip --target, no index, no deps)
#   info           10    35  GPU, driver, versions; SAELens and sparsify import check
#   kernels        65   100  pytest -m gpu: Triton kernels vs torch at d 768/2304, n 16k/64k, k 32/64,
#                            fp32/bf16, fwd+bwd (about 20 compiles, 70 tests), plus the kernel module's
#                            awkward shapes on the device
#   train          70   110  TopK step, bf16 GEMM floor, sparsify, SAELens, then BatchTopK, Matryoshka, MP
#                            (d 2304, n 65536, k 64, batch 4096; 7 processes of 6-15 s each)
#   mp             45    75  MP encode vs SAELens at d 2304, n 65536, k 64, 4096 rows (4 processes;
#                            SAELens's 64 dense fp32 score products about 1.5 s an encode)
#   harvest        25    50  GPT-2-medium-shaped model (bf16), 131k tokens x 2, 1 GiB of store writes a run
#   steer          10    30  batch 32, 64 new tokens, with and without a steering vector
#   dp             20    45  torchrun --nproc-per-node 1 with NCCL: data-parallel steps vs plain ones
#   report          2    10  merge into gpu_check.json and gpu_check.md
#   total        ~260   485  (give the device tool's run timeout_s 560 or more)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${GPU_CHECK_PYTHON:-python3}

out=${OUT:-}
tiny=""
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) tiny="--tiny" ;;
        --steps) only=",${2:-},"; shift ;;
        --steps=*) only=",${1#--steps=},"; ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (use: bash bench/gpu_check.sh [OUT] [--tiny] [--steps a,b])" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done

if [ -z "$tiny" ]; then
    # No GPU: one line, exit 0. nvidia-smi first: it answers without starting Python.
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to measure"
        exit 0
    fi
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
        echo "gpu_check: $PY's torch sees no CUDA device; nothing to measure"
        exit 0
    fi
fi
if [ -z "$out" ]; then
    echo "gpu_check: no output folder; pass one (bash bench/gpu_check.sh OUT) or set OUT" >&2
    exit 2
fi
mkdir -p "$out" || { echo "gpu_check: cannot create the output folder $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
export PYTHONPATH="$ROOT" PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
: >"$log"
started=$(date +%s)

# run NAME CAP COMMAND...: the command under `timeout`, its output in WORK/NAME.log and
# the log, "exit-code seconds cap" in WORK/NAME.status for the report.
run() {
    local name=$1 cap=$2 t0 rc
    shift 2
    t0=$(date +%s)
    echo "== $name (cap ${cap}s) $(date -u +%H:%M:%S)" | tee -a "$log"
    GPU_CHECK_DEADLINE=$(( t0 + cap )) timeout -k 5 "$cap" "$@" >"$work/$name.log" 2>&1
    rc=$?
    echo "$rc $(( $(date +%s) - t0 )) $cap" >"$work/$name.status"
    cat "$work/$name.log" >>"$log"
    echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$log"
    return 0
}

peers=()
wheels=("$ROOT"/bench/gpu_wheels/*.whl)
if [ -n "${GPU_CHECK_PEERS_PYTHON:-}" ]; then
    peers=(--peers-python "$GPU_CHECK_PEERS_PYTHON")
elif [ -e "${wheels[0]}" ]; then
    PIP_ROOT_USER_ACTION=ignore run peers 30 "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --disable-pip-version-check --target "$work/peers" "${wheels[@]}"
    if [ "$(cut -d' ' -f1 "$work/peers.status")" = 0 ]; then
        peers=(--peers-python "$PY" --peers-path "$work/peers")
    else
        why=$(grep -m 1 -i "error" "$work/peers.log" || tail -n 1 "$work/peers.log")
        peers=(--peers-skip "the peer wheels did not install: $why")
    fi
fi

run info 35 "$PY" bench/gpu_check.py info --work "$work" $tiny ${peers[@]+"${peers[@]}"}
for step in kernels:100 train:110 mp:75 harvest:50 steer:30 dp:45; do
    name=${step%%:*}
    if [ -n "$only" ] && [ "${only#*,"$name",}" = "$only" ]; then
        continue
    fi
    run "$name" "${step##*:}" "$PY" bench/gpu_check.py step "$name" --work "$work" $tiny
done
timeout -k 5 10 "$PY" bench/gpu_check.py report --work "$work" --out "$out" | tee -a "$log"
echo "gpu_check: $(( $(date +%s) - started ))s; results in $out/gpu_check.json and $out/gpu_check.md" | tee -a "$log"
rm -rf "$work"
