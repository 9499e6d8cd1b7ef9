#!/usr/bin/env bash
# One entry point for a fresh machine: `./run.sh demo` runs the main job on the embedded default,
# `./run.sh test` runs every check CI runs. Both call `setup` first, which installs what is missing
# into a cache outside the clone (ECHODISTILL_CACHE, default ~/.cache/echodistill) and skips what is
# there, so repeated runs cost seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${ECHODISTILL_CACHE:-$HOME/.cache/echodistill}"

# Versions are pinned together: tch 0.24.0 compiles only against libtorch 2.11.0.
TORCH_VERSION=2.11.0
CUDA_RUNTIME_VERSION=13.0.96
CUPTI_VERSION=13.0.85
OPEN_CLIP_VERSION=3.3.0
TRANSFORMERS_VERSION=5.17.0
TOKENIZERS_VERSION=0.23.3
DIFFUSERS_VERSION=0.42.1
PEFT_VERSION=0.18.0
ONNX_VERSION=1.23.2
ONNXRUNTIME_VERSION=1.31.1

LIBTORCH_ROOT="$CACHE/libtorch-$TORCH_VERSION"
PYENV="$CACHE/pyenv-transformers-$TRANSFORMERS_VERSION"
CLIP_TOKENIZER="$CACHE/clip-tokenizer"
GOLDENS_ENV="$CACHE/pyenv-goldens"
ORT_ROOT="$CACHE/onnxruntime-$ONNXRUNTIME_VERSION"
ORT_LIB="$ORT_ROOT/lib/libonnxruntime.so.$ONNXRUNTIME_VERSION"
# wasm-bindgen-cli must be the version of the wasm-bindgen crate in Cargo.lock.
WASM_BINDGEN_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$ROOT/Cargo.lock")"
WASM_BINDGEN_ROOT="$CACHE/wasm-bindgen-cli-$WASM_BINDGEN_VERSION"
# The page's npm packages (onnxruntime-web) and the browser driver (playwright-core), installed
# from web/package-lock.json into a folder named by the lockfile's hash.
WEB_NODE="$CACHE/web-node-$(sha256sum "$ROOT/web/package-lock.json" | cut -c1-12)"
WEB_SITE="$ROOT/target/web-site"

say() { printf '[setup] %s\n' "$*" >&2; }

pip_download() { # pip_download DEST SPEC...
    local dest="$1"
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" "$@"
}

# install_once DEST PRESENT INSTALLING FILL: installs into the cache folder DEST unless a finished
# install is there (its .complete marker), saying PRESENT or INSTALLING. FILL STAGE SCRATCH fills
# the empty folder STAGE, with SCRATCH for downloads; STAGE is renamed to DEST only once FILL has
# succeeded, so an interrupted install is started again rather than used half-done.
install_once() {
    local dest="$1" present="$2" installing="$3" fill="$4"
    if [[ -f "$dest/.complete" ]]; then
        say "$present"
        return
    fi
    say "$installing"
    local stage="$dest.tmp-stage" scratch="$dest.tmp-scratch"
    rm -rf "$stage" "$scratch" "$dest"
    mkdir -p "$stage" "$scratch"
    "$fill" "$stage" "$scratch"
    touch "$stage/.complete"
    mv "$stage" "$dest"
    rm -rf "$scratch"
    say "ready: $dest"
}

fill_libtorch() {
    local stage="$1" wheels="$2"
    pip_download "$wheels" "torch==$TORCH_VERSION" \
        "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION"
    # Only the C++ library and headers are needed; the nvidia trees satisfy libtorch_cpu.so's
    # link to libcudart/libcupti through the wheel's own relative rpaths.
    unzip -q "$wheels"/torch-*.whl 'torch/lib/*' 'torch/include/*' -d "$stage"
    for whl in "$wheels"/nvidia_*.whl; do
        unzip -q "$whl" 'nvidia/*' -d "$stage"
    done
}

setup_libtorch() {
    install_once "$LIBTORCH_ROOT" "libtorch $TORCH_VERSION present at $LIBTORCH_ROOT/torch" \
        "installing libtorch $TORCH_VERSION from the PyPI torch wheel into $LIBTORCH_ROOT (about 550 MB, a few minutes)" \
        fill_libtorch
}

# ensure_venv DIR WHAT WANT PIP_SPEC...: a Python venv at DIR holding PIP_SPEC. Its .complete file
# records WANT (the pinned versions), so a venv made for other versions is updated in place and
# an up-to-date one costs nothing.
ensure_venv() {
    local dir="$1" what="$2" want="$3"
    shift 3
    if [[ -f "$dir/.complete" && "$(cat "$dir/.complete")" == "$want" ]]; then
        say "$what present at $dir"
        return
    fi
    if [[ -x "$dir/bin/pip" ]]; then
        say "updating $what $dir to $want"
    else
        say "creating $what $dir ($want)"
        python3 -m venv "$dir"
    fi
    "$dir/bin/pip" install -q "$@"
    echo "$want" >"$dir/.complete"
}

setup_python() {
    # onnx + onnxruntime: the bake tests run every written model through onnx's full checker and
    # onnxruntime (tests/scripts/check_onnx_bake.py).
    ensure_venv "$PYENV" "python reference env (parity checks)" \
        "transformers $TRANSFORMERS_VERSION onnx $ONNX_VERSION onnxruntime $ONNXRUNTIME_VERSION" \
        "transformers==$TRANSFORMERS_VERSION" "tokenizers==$TOKENIZERS_VERSION" \
        "onnx==$ONNX_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" numpy safetensors
}

fill_onnxruntime() {
    local stage="$1" wheels="$2"
    pip_download "$wheels" "onnxruntime==$ONNXRUNTIME_VERSION"
    unzip -q -j "$wheels"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ONNXRUNTIME_VERSION" -d "$stage/lib"
}

setup_onnxruntime() {
    install_once "$ORT_ROOT" "onnxruntime $ONNXRUNTIME_VERSION library present at $ORT_LIB" \
        "extracting libonnxruntime.so $ONNXRUNTIME_VERSION from the PyPI onnxruntime wheel into $ORT_ROOT (about 30 MB)" \
        fill_onnxruntime
}

fill_clip_vocab() {
    local stage="$1" scratch="$2"
    python3 -m pip download -q --no-deps -d "$scratch" "open-clip-torch==$OPEN_CLIP_VERSION"
    unzip -q -o "$scratch"/open_clip_torch-*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d "$scratch"
    python3 "$ROOT/tests/scripts/openclip_vocab.py" "$scratch/open_clip/bpe_simple_vocab_16e6.txt.gz" "$stage"
}

setup_clip_vocab() {
    install_once "$CLIP_TOKENIZER" "CLIP tokenizer present at $CLIP_TOKENIZER" \
        "extracting the real CLIP BPE vocabulary from open-clip-torch $OPEN_CLIP_VERSION into $CLIP_TOKENIZER" \
        fill_clip_vocab
}

# Installs Debian packages (as root, or through sudo without a password).
apt_install() {
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo -n)
    if ! "${sudo[@]}" apt-get install -y -q "$@" >"$CACHE/apt.log" 2>&1; then
        "${sudo[@]}" apt-get update -q >>"$CACHE/apt.log" 2>&1 || true
        "${sudo[@]}" apt-get install -y -q "$@" >>"$CACHE/apt.log" 2>&1 || {
            say "apt-get install $* failed (log: $CACHE/apt.log); install them by hand, as root"
            return 1
        }
    fi
}

wasm_std_available() {
    rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}

setup_rust() {
    if wasm_std_available; then
        say "rust target wasm32-unknown-unknown present"
    elif say "adding rust target wasm32-unknown-unknown" && timeout 600 rustup target add wasm32-unknown-unknown; then
        :
    elif dpkg -s rustc-web cargo-web rust-web-src lld-22 >/dev/null 2>&1; then
        say "rustup has no wasm32 std; using Debian's rustc-web, building std from source"
    else
        # rustup's download is not a registry and can fail here; Debian's web toolchain can
        # build std for wasm32 from source instead.
        say "rustup target add failed: installing Debian's rustc-web cargo-web rust-web-src lld-22"
        apt_install rustc-web cargo-web rust-web-src lld-22
    fi
}

# cargo for wasm32: rustup's target when present, else Debian's toolchain building std itself.
wasm_cargo() {
    if wasm_std_available; then
        cargo "$@" --target wasm32-unknown-unknown
    else
        RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_UNSTABLE_BUILD_STD=std,panic_abort \
            CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-22 /usr/bin/cargo "$@" --target wasm32-unknown-unknown
    fi
}

fill_wasm_bindgen() {
    # Not --locked: the tool's own lockfile pins a crate the index no longer has.
    cargo install -q wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$1"
}

setup_wasm_bindgen() {
    install_once "$WASM_BINDGEN_ROOT" "wasm-bindgen-cli $WASM_BINDGEN_VERSION present at $WASM_BINDGEN_ROOT/bin" \
        "building wasm-bindgen-cli $WASM_BINDGEN_VERSION (Cargo.lock's) into $WASM_BINDGEN_ROOT (about 10 minutes, once)" \
        fill_wasm_bindgen
}

chromium_path() {
    command -v chromium || command -v chromium-browser || true
}

setup_chromium() {
    if [[ -n "$(chromium_path)" ]]; then
        say "chromium present at $(chromium_path)"
        return
    fi
    say "installing Debian's chromium (the browser tests drive it headless)"
    apt_install chromium
}

fill_web_node() {
    cp "$ROOT/web/package.json" "$ROOT/web/package-lock.json" "$1/"
    # No install scripts: the packages are used as files (the page) and as a library (the driver).
    (cd "$1" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
}

setup_web_node() {
    install_once "$WEB_NODE" "npm packages of web/package-lock.json present at $WEB_NODE" \
        "installing web/package-lock.json (onnxruntime-web, playwright-core) from npm into $WEB_NODE" \
        fill_web_node
}

setup() {
    mkdir -p "$CACHE"
    setup_libtorch
    setup_python
    setup_onnxruntime
    setup_clip_vocab
    setup_rust
    setup_wasm_bindgen
    setup_chromium
    setup_web_node
}

# The browser page as `runtime serve-web` serves it: web/static, the web crate compiled to wasm
# with its wasm-bindgen glue under pkg/, onnxruntime-web under ort/.
build_site() {
    cd "$ROOT"
    say "building the page into $WEB_SITE (web crate for wasm32, wasm-bindgen, onnxruntime-web)"
    wasm_cargo build -q --release -p web
    local tmp="$ROOT/target/web-site.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp/ort"
    "$WASM_BINDGEN_ROOT/bin/wasm-bindgen" --target web --no-typescript --out-dir "$tmp/pkg" \
        "$ROOT/target/wasm32-unknown-unknown/release/web.wasm"
    cp "$ROOT"/web/static/* "$tmp/"
    local dist="$WEB_NODE/node_modules/onnxruntime-web/dist"
    # ort.webgpu.min.mjs runs both the WebGPU and the WASM provider from its asyncify build.
    cp "$dist/ort.webgpu.min.mjs" "$dist/ort-wasm-simd-threaded.asyncify.mjs" \
        "$dist/ort-wasm-simd-threaded.asyncify.wasm" "$tmp/ort/"
    rm -rf "$WEB_SITE"
    mv "$tmp" "$WEB_SITE"
}

# Time to first image and per-image time of a model folder in headless Chromium, on WASM, on
# WebGPU over SwiftShader (webgpu: the CPU, a correctness check) or over the machine's GPU
# (webgpu-gpu).
bench_web() {
    local model="$1" ep="${2:-wasm}" driver_flags=()
    case "$ep" in
        wasm) ;;
        webgpu) driver_flags=(--webgpu) ;;
        webgpu-gpu) ep=webgpu driver_flags=(--gpu) ;;
        *) echo "bench-web: provider $ep: use wasm, webgpu (SwiftShader) or webgpu-gpu" >&2; return 2 ;;
    esac
    local ready
    ready="$(mktemp)"
    rm -f "$ready"
    "$ROOT/target/release/runtime" serve-web --model "$model" --addr 127.0.0.1:0 --ready-file "$ready" >/dev/null &
    local pid=$!
    for _ in $(seq 100); do [[ -s "$ready" ]] && break; sleep 0.1; done
    local status=0
    node "$ROOT/tests/scripts/web_page.mjs" bench --url "http://$(cat "$ready")/?ep=$ep" --runs 10 \
        "${driver_flags[@]}" || status=$?
    kill "$pid" 2>/dev/null || true
    rm -f "$ready"
    return "$status"
}

export_env() {
    export LIBTORCH="$LIBTORCH_ROOT/torch"
    export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export ECHODISTILL_CACHE="$CACHE"
    export ECHODISTILL_CLIP_TOKENIZER="$CLIP_TOKENIZER"
    export ECHODISTILL_PYTHON="$PYENV/bin/python"
    export ORT_DYLIB_PATH="$ORT_LIB"
    export ECHODISTILL_WEB_NODE="$WEB_NODE/node_modules"
    ECHODISTILL_CHROMIUM="$(chromium_path)"
    export ECHODISTILL_CHROMIUM
    export ECHODISTILL_DREAMBENCH="${ECHODISTILL_DREAMBENCH:-$ROOT/../shared/datasets/dreambooth}"
}

demo() {
    cd "$ROOT"
    say "building trainer, exporter and runtime (release)"
    cargo build --release -p trainer -p exporter -p runtime
    build_site
    local out="$ROOT/target/demo"
    rm -rf "$out"
    mkdir -p "$out"
    local trainer="$ROOT/target/release/trainer"
    echo "== the libtorch this trainer runs on"
    "$trainer" env
    echo
    echo "== a personalized prompt: <new1> is added to the real CLIP vocabulary and kept whole"
    "$trainer" tokenize --tokenizer "$CLIP_TOKENIZER" --add-token '<new1>' \
        --prompt 'a <new1> dog on the beach'
    echo
    echo "== the tokenizer of a runtime bundle, written with <new1> and read back"
    ./target/release/exporter tokenizer --from "$CLIP_TOKENIZER" --add-token '<new1>' \
        --out "$out/tokenizer"
    "$trainer" tokenize --tokenizer "$out/tokenizer" --json \
        --prompt 'A <NEW1> dog wearing a red hat!'
    echo
    local toy="$ROOT/trainer/assets/toy"
    local models="$toy/models"
    local subject=medal_06
    echo "== the embedded default: the toy world's models, pre-trained on this kind of machine by"
    echo "   trainer pretrain-toy (teacher in SD 2.1's layout, one-step student in SD-Turbo's, towers;"
    echo "   $models/report/report.html shows how they were made and how good they are)"
    "$trainer" sample --model "$models/student" --prompt 'a red star on a checkered background' --seed 0 \
        --out "$out/student-1step.png"
    "$trainer" sample --model "$models/teacher" --prompt 'a red star on a checkered background' --seed 0 \
        --steps 25 --guidance 4 --out "$out/teacher-25step.png"
    echo
    echo "== EchoDistill teaches the one-step student a held-out toy subject from its reference renders"
    echo "   ($toy/dreambench/$subject: a composite emblem no caption can describe; settings in $toy/fit.yaml)"
    "$trainer" fit --config "$toy/fit.yaml" --images "$toy/dreambench/$subject" --token '<new1>' --class medal \
        --init-word medal --out "$out/run" --set "student=$models/student" --set "teacher=$models/teacher" \
        --set "towers=$models/towers" --set iterations=300 --set echo.iterations=150 --set samples.every=100
    echo "== the run: weights with provenance, a diffusers export, sample grids and report.html"
    ls "$out/run" "$out/run/samples" "$out/run/diffusers"
    echo "== the subject in new scenes: the trained student, one step each"
    local i=0
    for prompt in 'a <new1> medal on a checkered background' 'a <new1> medal next to a red circle' \
        'a <new1> medal on a green floor under a cyan sky' 'a shiny <new1> medal on a purple background'; do
        "$trainer" sample --run "$out/run" --prompt "$prompt" --seed 0 --out "$out/subject-$i.png"
        i=$((i + 1))
    done
    "$trainer" sample --run "$out/run" --teacher --steps 25 --guidance 4 \
        --prompt 'a <new1> medal on a checkered background' --seed 0 --out "$out/subject-teacher-25step.png"
    echo
    echo "== the run baked into ONNX for the runtime and the web page: the student with its K/V and token"
    ./target/release/exporter bake --base "$models/student" --run "$out/run" --out "$out/model" --height 64 --width 64
    ./target/release/exporter inspect "$out/model"
    ./target/release/exporter bake --base "$models/student" --run "$out/run" --out "$out/model-fused" \
        --height 64 --width 64 --fused
    echo
    echo "== native one-step generation with ONNX Runtime: the split networks, then the fused pipeline"
    ./target/release/runtime generate --model "$out/model" --prompt 'a <new1> medal on a checkered background' \
        --seed 0 --batch 2 --out "$out/runtime/split.png"
    ./target/release/runtime generate --model "$out/model-fused" --prompt 'a <new1> medal on a checkered background' \
        --seed 0 --out "$out/runtime/fused.png"
    echo "   runtime images: $out/runtime/ (split-0.png is the same picture as subject-0.png)"
    echo
    echo "== the DreamBench protocol on the run, in the toy world: CLIP-T and CLIP-I with the toy CLIP,"
    echo "   DINO with the toy DINO; the subject's first 5 prompts x 2 seeds, 1/2/4 steps"
    "$trainer" eval --run "$out/run" --out "$out/eval" --dataset "$toy/dreambench" \
        --clip "$models/towers/clip" --dino "$models/towers/dino-v1" --prompts 5 --seeds 0,1
    echo
    echo "== benchmarks"
    ./target/release/runtime bench --model "$out/model" --runs 20
    ./target/release/runtime bench --model "$out/model-fused" --runs 20
    "$trainer" bench-tokenize --tokenizer "$out/tokenizer" --seconds 2
    "$trainer" bench-sample --model "$models/student" --iters 10
    "$trainer" bench --config "$toy/fit.yaml" --student "$models/student" --teacher "$models/teacher" \
        --towers "$models/towers" --images "$toy/dreambench/$subject" --iters 5 --profile
    "$trainer" bench-eval --run "$out/run" --dataset "$toy/dreambench" \
        --clip "$models/towers/clip" --dino "$models/towers/dino-v1" --prompts 5 --seeds 0,1 --steps 1
    echo "== the loss stack at SD-Turbo's architecture scaled down (random towers: only the time counts)"
    "$trainer" init-tiny --out "$out/tiny-student" --tokenizer "$CLIP_TOKENIZER"
    "$trainer" bench-losses --towers "$out/tiny-student/towers" --iters 5
    echo
    echo "== the browser page: time to first image and per image in headless Chromium (WASM)"
    bench_web "$out/model" wasm
    echo
    echo "demo outputs are in $out (open $out/run/report.html and $out/eval/gallery.html;"
    echo "the runtime's images are in $out/runtime)"
    echo
    echo "== generate in your browser with the model just baked (then open the printed URL):"
    echo "./target/release/runtime serve-web --model $out/model"
}

test_all() {
    cd "$ROOT"
    say "cargo fmt --check"
    cargo fmt --all --check
    say "cargo clippy --all-targets -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    # The page's wasm build is also the check that the web crate and the core build for wasm32.
    build_site
    say "cargo test (binaries first: the integration tests run them)"
    cargo build --workspace --bins
    cargo test --workspace
}

# The reference environment that regenerates the committed goldens: full PyTorch (2.7 GB of
# wheels) with diffusers and transformers. Only `./run.sh goldens` needs it; tests do not.
setup_goldens_env() {
    # peft: diffusers' load_lora_weights needs it (tests/scripts/check_diffusers_lora.py).
    ensure_venv "$GOLDENS_ENV" "goldens env (several GB)" \
        "torch $TORCH_VERSION diffusers $DIFFUSERS_VERSION transformers $TRANSFORMERS_VERSION peft $PEFT_VERSION" \
        "torch==$TORCH_VERSION" "diffusers==$DIFFUSERS_VERSION" "transformers==$TRANSFORMERS_VERSION" \
        "tokenizers==$TOKENIZERS_VERSION" "peft==$PEFT_VERSION" safetensors
}

goldens() {
    cd "$ROOT"
    setup_goldens_env
    local dreambench="$ECHODISTILL_DREAMBENCH"
    "$PYENV/bin/python" tests/scripts/make_tokenizer_goldens.py --tokenizer "$CLIP_TOKENIZER" \
        --dreambench "$dreambench" --out tests/fixtures/tokenizer_goldens.json
    "$GOLDENS_ENV/bin/python" tests/scripts/make_scheduler_goldens.py --out tests/fixtures/scheduler_goldens.json
    "$GOLDENS_ENV/bin/python" tests/scripts/make_model_goldens.py --out tests/fixtures/models
    "$GOLDENS_ENV/bin/python" tests/scripts/make_tower_goldens.py --out tests/fixtures/towers
    "$GOLDENS_ENV/bin/python" tests/scripts/make_full_size_layouts.py --out tests/fixtures/full_size_layouts.json
}

# What a lent GPU machine needs beside the working tree, in GPU_KIT (git-ignored, named in the
# device call's `carry`): the trainer built with the `cuda` feature (stripped, xz), the CLIP
# tokenizer, and diffusers (the GPU machines have torch and transformers, not diffusers). All
# xz-packed: a device call carries at most 64 MiB and the committed toy models take 51 of them.
GPU_KIT="$ROOT/.gpu-kit"
gpu_kit() {
    cd "$ROOT"
    say "building trainer with the cuda feature (release; the CPU binary is rebuilt after)"
    cargo build -q --release -p trainer --features cuda
    local stage="$GPU_KIT.tmp-stage" scratch
    scratch="$(mktemp -d)"
    rm -rf "$stage"
    mkdir -p "$stage" "$scratch/site"
    strip -o "$stage/trainer" "$ROOT/target/release/trainer"
    xz -T0 -6 "$stage/trainer"
    tar -C "$CLIP_TOKENIZER" --exclude .complete -cJf "$stage/tokenizer.tar.xz" .
    say "packing diffusers $DIFFUSERS_VERSION (pure Python) for the GPU machine's Python 3.12"
    pip_download "$scratch" "diffusers==$DIFFUSERS_VERSION" importlib_metadata
    for whl in "$scratch"/*.whl; do unzip -q -o "$whl" -d "$scratch/site"; done
    tar -C "$scratch/site" -cJf "$stage/python-site.tar.xz" .
    rm -rf "$scratch" "$GPU_KIT"
    mv "$stage" "$GPU_KIT"
    cargo build -q --release -p trainer
    local tracked
    tracked="$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)"
    say "ready: $GPU_KIT ($(du -sb "$GPU_KIT" | cut -f1) bytes; tracked files $tracked bytes; a call carries at most 67108864)"
    cat <<CALL
device run (carry [".gpu-kit"], timeout_s 600):
  tests/scripts/gpu_measurements.sh --kit .gpu-kit --out \$OUT --work /tmp/echodistill-gpu
CALL
}

usage() {
    cat <<USAGE
usage: ./run.sh <command>
  demo    set up, then run the main job on the embedded default
  test    set up, then run every check (fmt, clippy, wasm build, all tests)
  web     build the browser page into target/web-site (runtime serve-web serves it)
  bench-web MODEL_DIR [wasm|webgpu|webgpu-gpu]
          time to first image and per-image time of a model in headless Chromium
          (webgpu: SwiftShader, a correctness check; webgpu-gpu: the machine's GPU)
  setup   install what is missing into $CACHE and print what it did
  goldens regenerate the committed reference fixtures (installs PyTorch + diffusers once)
  gpu-kit pack the CUDA trainer, tokenizer and diffusers into .gpu-kit for a lent GPU machine
          (tests/scripts/gpu_measurements.sh runs there; see docs/performance.md)
  env     print the environment exports (eval "\$(./run.sh env)" to build by hand)
USAGE
}

case "${1:-}" in
    demo) setup; export_env; demo ;;
    web) setup; export_env; build_site ;;
    bench-web)
        setup
        export_env
        [[ $# -ge 2 ]] || { echo "usage: ./run.sh bench-web MODEL_DIR [wasm|webgpu|webgpu-gpu]" >&2; exit 2; }
        cargo build -q --release -p runtime
        build_site
        bench_web "$2" "${3:-wasm}"
        ;;
    test) setup; export_env; test_all ;;
    setup) setup ;;
    goldens) setup; export_env; goldens ;;
    gpu-kit) setup; export_env; gpu_kit ;;
    env)
        export_env
        for v in LIBTORCH LD_LIBRARY_PATH ECHODISTILL_CACHE ECHODISTILL_CLIP_TOKENIZER ECHODISTILL_PYTHON ECHODISTILL_DREAMBENCH ORT_DYLIB_PATH ECHODISTILL_WEB_NODE ECHODISTILL_CHROMIUM; do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        ;;
    *) usage; exit 2 ;;
esac
