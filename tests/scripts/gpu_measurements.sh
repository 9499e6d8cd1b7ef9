#!/usr/bin/env bash
# The GPU measurements issues #5, #6 and #11 owe, in one command for a lent GPU machine:
#   1. the full-size models with random weights: SD-Turbo (student) with the real towers, SD 2.1
#      (teacher), written by the carried trainer itself (nothing is downloaded);
#   2. `trainer bench` (one fit iteration, batch 2, 512 px, bf16 frozen networks, --profile) and
#      its eager PyTorch peer tests/scripts/bench_reference_iteration.py on the same folders,
#      photos and settings, alternating, each with the GPU's memory in use sampled by nvidia-smi;
#   3. a short `trainer fit` on those models and `trainer bench-eval` on its run (seconds per
#      generated-and-scored image with the real-size CLIP ViT-L/14@336 and DINO ViT-S/16);
#   4. `trainer bench` with `checkpoint_decoder=true`, then with the UNets checkpointed too
#      (`checkpoint_unet=true`): their peak memory and time against 2.'s.
# Everything is printed; OUT gets summary.md and logs.tar.gz (every step's output), refreshed
# after each step so that a run cut short still brings back what it did.
#
# usage: tests/scripts/gpu_measurements.sh (--kit DIR | --trainer BIN --tokenizer DIR) --out OUT
#          [--work DIR] [--size full|tiny] [--device cuda|cpu] [--dtype bf16|f16|f32]
#          [--iters N] [--rounds N] [--python PY] [--no-reference]
# --kit takes the folder `./run.sh gpu-kit` writes (the CUDA trainer, the tokenizer, diffusers)
# and unpacks it into --work. --size tiny --device cpu runs the same steps on the tiny
# architectures: how this script is checked on a machine without a GPU (the test suite runs it
# so, with --no-reference: CI has no PyTorch). The Python side needs torch, diffusers and
# transformers. See docs/performance.md for the device call.
set -uo pipefail

kit="" trainer="" tokenizer="" out="" work="${TMPDIR:-/tmp}/echodistill-gpu" size=full device=cuda
dtype=bf16 iters=10 rounds=1 python=python3 reference=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-reference) reference=0; shift; continue ;;
        --kit) kit="$2" ;;
        --trainer) trainer="$2" ;;
        --tokenizer) tokenizer="$2" ;;
        --out) out="$2" ;;
        --work) work="$2" ;;
        --size) size="$2" ;;
        --device) device="$2" ;;
        --dtype) dtype="$2" ;;
        --iters) iters="$2" ;;
        --rounds) rounds="$2" ;;
        --python) python="$2" ;;
        *) echo "gpu_measurements.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
mkdir -p "$work/logs" || exit 2
if [[ -n "$kit" ]]; then
    # The kit: trainer.xz, tokenizer.tar.xz, python-site.tar.xz (see ./run.sh gpu-kit).
    "$python" - "$kit" "$work" <<'UNPACK' || exit 2
import lzma, shutil, sys, tarfile
from pathlib import Path
kit, work = Path(sys.argv[1]), Path(sys.argv[2])
with lzma.open(kit / "trainer.xz") as src, open(work / "trainer", "wb") as dst:
    shutil.copyfileobj(src, dst)
(work / "trainer").chmod(0o755)
for name in ("tokenizer", "python-site"):
    with tarfile.open(kit / f"{name}.tar.xz") as tar:
        tar.extractall(work / name, filter="data")
print(f"unpacked {kit} into {work}")
UNPACK
    trainer="$work/trainer" tokenizer="$work/tokenizer"
    export PYTHONPATH="$work/python-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z "$trainer" || -z "$tokenizer" || -z "$out" ]]; then
    echo "usage: gpu_measurements.sh (--kit DIR | --trainer BIN --tokenizer DIR) --out OUT [--size full|tiny] [--device cuda|cpu] ..." >&2
    exit 2
fi
[[ -x "$trainer" ]] || { echo "gpu_measurements.sh: $trainer is not an executable trainer binary" >&2; exit 2; }
[[ -f "$tokenizer/vocab.json" ]] || { echo "gpu_measurements.sh: $tokenizer has no vocab.json (a CLIP tokenizer folder)" >&2; exit 2; }
case "$size" in
    full) student_arch=sd-turbo teacher_arch=sd21 towers_set=full resolution=512 ;;
    tiny) student_arch=tiny-student teacher_arch=tiny-teacher towers_set=tiny resolution=128 ;;
    *) echo "gpu_measurements.sh: --size is full or tiny, not $size" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
images="$root/trainer/assets/toy/dreambench/medal_06"
mkdir -p "$out"
logs="$work/logs"
summary="$out/summary.md"
: >"$logs/failures"
failed=0

# The table of what has been measured so far, from the logs (missing: not run yet or failed).
write_summary() {
    local round
    echo "# GPU measurements ($(date -u +%F), $(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader || echo "no GPU"))"
    echo
    echo "size $size ($student_arch + $teacher_arch, $towers_set towers), batch 2, $resolution px, $device $dtype, $iters timed iterations per side and round"
    echo
    echo "| side | round | s/iteration | peak GPU MiB in use (nvidia-smi) | peak allocated (torch) |"
    echo "| --- | --- | --- | --- | --- |"
    for round in $(seq 1 "$rounds"); do
        echo "| trainer bench | $round | $(line "trainer-bench-$round" 'seconds per iteration:' | awk '{print $NF}') | $(gpu_mib "trainer-bench-$round") | — |"
        echo "| trainer bench, pageable uploads | $round | $(line "trainer-bench-$round" 'with pageable' | awk '{print $NF}') | (same process) | — |"
        [[ "$reference" == 1 ]] && echo "| eager PyTorch | $round | $(line "reference-$round" 'seconds per iteration' | awk '{print $NF}') | $(gpu_mib "reference-$round") | $(line "reference-$round" 'peak GPU memory allocated' | awk '$1 != "missing" {print $(NF-1), $NF} $1 == "missing" {print "n/a"}') |"
    done
    [[ -f "$logs/trainer-bench-checkpointed.log" ]] &&
        echo "| trainer bench, checkpoint_decoder=true | 1 | $(line trainer-bench-checkpointed 'seconds per iteration:' | awk '{print $NF}') | $(gpu_mib trainer-bench-checkpointed) | — |"
    [[ -f "$logs/trainer-bench-checkpointed-unet.log" ]] &&
        echo "| trainer bench, checkpoint_decoder=true checkpoint_unet=true | 1 | $(line trainer-bench-checkpointed-unet 'seconds per iteration:' | awk '{print $NF}') | $(gpu_mib trainer-bench-checkpointed-unet) | — |"
    [[ "$reference" == 1 ]] || echo "(the eager PyTorch reference was not run: --no-reference)"
    echo
    echo "bench-eval (5 prompts x 2 seeds, 1 step, real-size CLIP and DINO with --size full): $(line bench-eval 'end to end' | sed 's/^ *//')"
    echo "fit (5 iterations, model loading included): $(cat "$logs/fit.seconds" 2>/dev/null || echo n/a) s wall, $(gpu_mib fit) MiB peak in use"
    echo
    echo "Profiles: trainer-bench-*.log and reference-*.log in logs.tar.gz (every step's output)."
}

# OUT brings back at most 8 files: the summary and one archive of the logs, both refreshed after
# every step.
pack() {
    { write_summary; [[ -s "$logs/failures" ]] && printf '\n%s\n' "$(cat "$logs/failures")"; } >"$summary"
    tar -C "$logs" -czf "$out/logs.tar.gz" . 2>/dev/null
}

say() { printf '\n== %s\n' "$*"; }
note() { printf '%s\n' "$*" | tee -a "$logs/failures"; }

# run_logged NAME CMD...: runs CMD with its output to the terminal and logs/NAME.log, its wall
# time into logs/NAME.seconds and the largest GPU memory in use while it ran (nvidia-smi, whole
# device, sampled every 100 ms) into logs/NAME.gpu-mib. A failure is recorded, not fatal: later
# steps still run.
run_logged() {
    local name="$1"
    shift
    local sampler=""
    if command -v nvidia-smi >/dev/null && [[ "$device" == cuda* ]]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$logs/$name.gpu-trace" 2>/dev/null &
        sampler=$!
    fi
    local start status
    start=$(date +%s.%N)
    "$@" 2>&1 | tee "$logs/$name.log"
    status=${PIPESTATUS[0]}
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", e - s }' >"$logs/$name.seconds"
    if [[ -n "$sampler" ]]; then
        kill "$sampler" 2>/dev/null
        wait "$sampler" 2>/dev/null
        sort -n "$logs/$name.gpu-trace" | tail -1 >"$logs/$name.gpu-mib"
        rm -f "$logs/$name.gpu-trace"
    fi
    if [[ "$status" != 0 ]]; then
        note "- FAILED (exit $status): $name: $*"
        failed=1
    fi
    pack
    return "$status"
}

# line NAME PATTERN: the first line of OUT/NAME.log matching PATTERN, or "missing".
line() { grep -m1 -- "$2" "$logs/$1.log" 2>/dev/null || echo "missing"; }
gpu_mib() { cat "$logs/$1.gpu-mib" 2>/dev/null || echo "n/a"; }

say "machine"
{
    date -u
    uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$trainer" env
    if [[ "$reference" == 1 ]]; then
        "$python" -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
    fi
} 2>&1 | tee "$logs/machine.log"

say "models: $student_arch with $towers_set towers, $teacher_arch (random weights)"
student="$work/$student_arch" teacher="$work/$teacher_arch"
if [[ ! -d "$student" ]]; then
    run_logged init-student "$trainer" init-tiny --architecture "$student_arch" --towers "$towers_set" \
        --tokenizer "$tokenizer" --out "$student" || exit 1
fi
if [[ ! -d "$teacher" ]]; then
    run_logged init-teacher "$trainer" init-tiny --architecture "$teacher_arch" --towers none \
        --seed 1 --tokenizer "$tokenizer" --out "$teacher" || exit 1
fi
towers="$student/towers"
common=(--student "$student" --teacher "$teacher" --towers "$towers" --images "$images"
    --resolution "$resolution" --batch 2 --iters "$iters" --device "$device" --dtype "$dtype")

# Alternating rounds: the two sides see the same machine state (clocks, other load) in turn.
for round in $(seq 1 "$rounds"); do
    say "round $round: trainer bench (--profile)"
    run_logged "trainer-bench-$round" "$trainer" bench "${common[@]}" --profile --compare-uploads
    if [[ "$reference" == 1 ]]; then
        say "round $round: eager PyTorch reference"
        run_logged "reference-$round" "$python" "$root/tests/scripts/bench_reference_iteration.py" \
            "${common[@]}" --profile
    fi
done

say "a short fit on the same models, then bench-eval on its run"
run="$work/run"
rm -rf "$run"
run_logged fit "$trainer" fit --images "$images" --token '<new1>' --class medal --init-word medal \
    --out "$run" --set "student=$student" --set "teacher=$teacher" --set "towers=$towers" \
    --set "resolution=$resolution" --set "device=$device" --set "dtype=$dtype" --set iterations=5 \
    --set echo.enabled=false --set 'samples.prompts=["a {} on the beach"]' --set 'samples.seeds=[0]' \
    --set 'samples.steps=[1]' --set samples.teacher_steps=0
run_logged bench-eval "$trainer" bench-eval --run "$run" --dataset "$root/trainer/assets/toy/dreambench" \
    --subject medal_06 \
    --clip "$towers/clip" --dino "$towers/dino-v1" --prompts 5 --seeds 0,1 --steps 1 \
    --device "$device" --dtype "$dtype"

say "trainer bench with the VAE decoder checkpointed (memory against time)"
run_logged trainer-bench-checkpointed "$trainer" bench "${common[@]}" --set checkpoint_decoder=true
say "trainer bench with the VAE decoder and the UNets checkpointed"
run_logged trainer-bench-checkpointed-unet "$trainer" bench "${common[@]}" \
    --set checkpoint_decoder=true --set checkpoint_unet=true

pack
say "summary"
cat "$summary"
exit "$failed"
