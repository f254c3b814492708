#!/usr/bin/env bash
# The one script a GPU machine's call runs (benchmarks/README.md, "The device check"), in order:
#   1. nvidia-smi;
#   2. the tests marked `cuda` (tests/test_cuda.py);
#   3. `make gpu-smoke` in a fresh git copy of the project (it needs dvc, mlflow and optuna importable);
#   4. bench_gpu.py at its baseline (fused groups of 1, 5, 25, 115 models), then each lever:
#      NCHW against channels_last, larger fused groups (230 models), and bench_gpu_layout.py's
#      torch.compile of the fused networks (mode max-autotune, compile time printed) and CUDA graphs
#      (mode reduce-overhead).
# Each part runs under `timeout` with its own time box; a part that fails or runs over is recorded and
# the next one runs. Everything lands in $OUT (a new temporary folder when unset), at most 8 files:
# summary.txt (one line per part: ok, failed, timed out or skipped, with its seconds), env.txt and one
# log per part. Without CUDA (no nvidia-smi, or torch sees no device) the CUDA parts are skipped, each
# with a line saying so; DEVICE_CHECK_REHEARSE=1 runs them on the CPU at tiny sizes instead, which
# checks the commands themselves, not the device.
#
#   OUT=/some/folder bash benchmarks/device_check.sh
#
# Time boxes in seconds (the defaults add up to 9 min, for one 10-minute call): BOX_SMI, BOX_TESTS,
# BOX_SMOKE, BOX_BASELINE, BOX_LAYOUT, BOX_GROUPS, BOX_COMPILE, BOX_GRAPHS. BENCH_STEPS (50) is
# bench_gpu.py's --steps. PYTHON names the interpreter (python3 by default; its torch is the one measured).
# SKIP_PARTS leaves parts out, by any of: smi tests smoke bench levers (e.g. SKIP_PARTS="smoke" for a rerun).
set -u
cd "$(dirname "$0")/.." || exit 1
PROJECT=$PWD
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" || exit 1
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PROJECT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MPLBACKEND=Agg
REHEARSE=${DEVICE_CHECK_REHEARSE:-0}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# part NAME BOX LOG COMMAND...: run COMMAND under `timeout BOX`, appending its output to $OUT/LOG.
part() {
    local name=$1 box=$2 file=$3 log=$OUT/$3 start rc status
    shift 3
    echo "== $name: $* (time box ${box} s)" >>"$log"
    start=$(date +%s)
    timeout -k 10 "$box" "$@" >>"$log" 2>&1
    rc=$?
    case $rc in
        0) status="ok" ;;
        124 | 137) status="timed out after ${box} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    note "$(printf '%-28s %-26s %5d s  %s' "$name" "$status" "$(($(date +%s) - start))" "$file")"
    return 0
}

skip() { note "$(printf '%-28s skipped: %s' "$1" "$2")"; }

# wanted KEY: whether SKIP_PARTS leaves the part KEY in.
wanted() { case " ${SKIP_PARTS:-} " in *" $1 "*) return 1 ;; *) return 0 ;; esac; }

# What the device is, and what it lacks.
cuda=0
why_not=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
    why_not="no nvidia-smi on PATH (no NVIDIA driver)"
elif ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    why_not="$PYTHON's torch sees no CUDA device"
else
    cuda=1
fi
{
    date -u +"%FT%TZ"
    echo "project: $PROJECT ($(git -C "$PROJECT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
    echo "host: $(uname -srm); CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores"
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| CUDA', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" \
        2>&1
    for module in dvc mlflow optuna; do
        "$PYTHON" -c "import $module; print('$module', $module.__version__)" 2>/dev/null || echo "$module: not installed"
    done
} >"$OUT/env.txt"
note "device check $(date -u +%FT%TZ): $(sed -n 3,4p "$OUT/env.txt" | tr '\n' ' ')"
if [ "$cuda" = 1 ]; then
    bench=(--device cuda --steps "${BENCH_STEPS:-50}")
    models=1,5,25,115
    layout=(--models 115 --iters 10)
elif [ "$REHEARSE" = 1 ]; then
    note "no CUDA ($why_not): rehearsing every part on the CPU at tiny sizes (commands checked, nothing measured)"
    bench=(--device cpu --image-size 16 --batch 4 --images 64 --steps 2 --skip-check)
    models=1,2
    layout=(--cpu --models 2 --iters 1 --image-size 16 --batch 4)
else
    note "no CUDA ($why_not): the CUDA parts are skipped (DEVICE_CHECK_REHEARSE=1 rehearses them on the CPU)"
fi
run_parts=$([ "$cuda" = 1 ] || [ "$REHEARSE" = 1 ] && echo 1 || echo 0)

# 1. The GPU as the driver sees it.
if ! wanted smi; then
    skip nvidia-smi "in SKIP_PARTS"
elif [ "$cuda" = 1 ]; then
    part nvidia-smi "${BOX_SMI:-15}" nvidia-smi.txt nvidia-smi
else
    skip nvidia-smi "$why_not"
fi

# 2. The tests marked cuda. Without CUDA they collect and are skipped, which the rehearsal checks.
if ! wanted tests; then
    skip "pytest -m cuda" "in SKIP_PARTS"
elif [ "$run_parts" = 1 ]; then
    part "pytest -m cuda" "${BOX_TESTS:-75}" cuda-tests.log \
        "$PYTHON" -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_cuda.py
else
    skip "pytest -m cuda" "$why_not"
fi

# 3. make gpu-smoke, in a git copy of the project's files (dvc exp run needs a commit), its reports kept.
smoke_missing=$(for m in dvc mlflow optuna; do "$PYTHON" -c "import $m" 2>/dev/null || printf '%s ' "$m"; done)
if ! wanted smoke; then
    skip "make gpu-smoke" "in SKIP_PARTS"
elif [ "$run_parts" != 1 ]; then
    skip "make gpu-smoke" "$why_not"
elif [ -n "$smoke_missing" ]; then
    skip "make gpu-smoke" "$PYTHON lacks ${smoke_missing}(carry their wheels: benchmarks/README.md)"
else
    work=$(mktemp -d)
    copy=$work/project
    mkdir -p "$copy"
    (git ls-files -z --cached --others --exclude-standard 2>/dev/null || find . -path ./.git -prune -o -type f -print0) |
        (cd "$PROJECT" && xargs -0 cp -p --parents -t "$copy" 2>/dev/null)
    rm -f "$copy/dvc.lock"
    mkdir -p "$copy/.venv/bin" # the Makefile's commands: installed ones, else run as modules of $PYTHON
    for program in dvc:dvc mlflow:mlflow tubervae:tubervae.cli; do
        if command -v "${program%%:*}" >/dev/null 2>&1; then
            ln -sf "$(command -v "${program%%:*}")" "$copy/.venv/bin/${program%%:*}"
        else
            printf '#!/bin/sh\nexec %s -m %s "$@"\n' "$(command -v "$PYTHON")" "${program#*:}" >"$copy/.venv/bin/${program%%:*}"
            chmod +x "$copy/.venv/bin/${program%%:*}"
        fi
    done
    ln -sf "$(command -v "$PYTHON")" "$copy/.venv/bin/python"
    touch "$copy/.venv/.installed-stamp"
    smoke_target=gpu-smoke
    overrides=""
    if [ "$cuda" != 1 ]; then # the rehearsal: gpu-smoke-cpu at the slow test's tiny sizes
        smoke_target=gpu-smoke-cpu
        overrides="-S data.n_images=120 -S data.workers=1 -S preprocess.image_size=16 -S preprocess.probe_size=20 \
-S preprocess.labelled_per_class=10 -S train.steps=20 -S train.batch_size=8 -S train.checkpoint_every=10 \
-S train.log_every=10 -S train.snapshot_every=0 -S train.latent_dim=3 -S search.min_active=0 \
-S classify.cnn_steps=5 -S classify.n_draws=1 -S classify.label_sizes=[5,10] -S evaluate.set_size=60 \
-S evaluate.n_points=60 -S evaluate.n_train=20 -S evaluate.n_test=20 -S evaluate.n_bootstrap=20 \
-S evaluate.dci_method=lasso -S evaluate.sap_method=correlation"
    fi
    export GIT_AUTHOR_NAME=device-check GIT_AUTHOR_EMAIL=device-check@localhost
    export GIT_COMMITTER_NAME=device-check GIT_COMMITTER_EMAIL=device-check@localhost
    (cd "$copy" && git init -q -b main && printf '.venv\n' >>.git/info/exclude && git add -A &&
        git commit -q -m "device check") >>"$OUT/gpu-smoke.log" 2>&1
    project_path=$PYTHONPATH
    export PYTHONPATH="$copy/src:$PYTHONPATH" # the copy's own sources run its stages
    part "make $smoke_target" "${BOX_SMOKE:-150}" gpu-smoke.log \
        make -C "$copy" -o .venv/.installed-stamp "$smoke_target" OVERRIDES="$overrides"
    export PYTHONPATH=$project_path
    if [ -d "$copy/reports" ]; then
        tar -czf "$OUT/gpu-smoke-reports.tar.gz" -C "$copy" reports params.yaml 2>/dev/null
    fi
    rm -rf "$work"
fi

# 4. bench_gpu.py's baseline and its levers; bench_gpu_layout.py's compile and CUDA graphs.
if [ "$run_parts" != 1 ] || ! wanted bench; then
    for lever in "bench_gpu baseline" "lever: NCHW layout" "lever: 230 fused models"; do
        skip "$lever" "$([ "$run_parts" != 1 ] && echo "$why_not" || echo "in SKIP_PARTS")"
    done
else
    part "bench_gpu baseline" "${BOX_BASELINE:-75}" bench-gpu.log \
        "$PYTHON" benchmarks/bench_gpu.py "${bench[@]}" --models "$models"
    part "lever: NCHW layout" "${BOX_LAYOUT:-35}" bench-gpu.log \
        "$PYTHON" benchmarks/bench_gpu.py "${bench[@]}" --skip-check --models "${models##*,}" --layout contiguous
    part "lever: 230 fused models" "${BOX_GROUPS:-70}" bench-gpu.log \
        "$PYTHON" benchmarks/bench_gpu.py "${bench[@]}" --skip-check --models "${models##*,},$((2 * ${models##*,}))"
fi
if [ "$run_parts" != 1 ] || ! wanted levers; then
    for lever in "lever: torch.compile" "lever: CUDA graphs"; do
        skip "$lever" "$([ "$run_parts" != 1 ] && echo "$why_not" || echo "in SKIP_PARTS")"
    done
else
    part "lever: torch.compile" "${BOX_COMPILE:-75}" bench-levers.log \
        "$PYTHON" benchmarks/bench_gpu_layout.py "${layout[@]}" --only compiled --compile-mode max-autotune
    part "lever: CUDA graphs" "${BOX_GRAPHS:-45}" bench-levers.log \
        "$PYTHON" benchmarks/bench_gpu_layout.py "${layout[@]}" --only compiled --compile-mode reduce-overhead
fi

note "device check done $(date -u +%FT%TZ); files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
