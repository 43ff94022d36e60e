#!/usr/bin/env bash
# virkit's GPU campaign: one command, at most 7 minutes on one H100/H200, no network.
#
#   bash benchmarks/gpu_campaign.sh              # on the GPU machine (results under --out, $OUT or benchmarks/out/)
#   bash benchmarks/gpu_campaign.sh --smoke      # every phase on the CPU, tiny budgets (also: SMOKE=1)
#   bash benchmarks/gpu_campaign.sh --prepare    # before the run, online: fill data/ (copied along with the checkout)
#
# Phases, in this order, each in its own process with a soft budget (the phase plans its work to
# fit) and a hard cap (`timeout`; a killed phase keeps what it wrote); the caps fit in a 415 s
# total, which no phase can take from the others:
#   prep           environment, versions; decode the CIFAR-10 stand-in once into virkit's cache
#   a_train        ResNet-18 AT, VIR-AT, TRADES, VIR-TRADES: virkit (bf16, channels_last, compile) vs reference loop
#   a_wrn          WideResNet-34-10 VIR-AT: img/s and peak memory (eager, then compiled if time is left)
#   d_concurrency  aggregate img/s of 1, 2 and 4 training processes sharing the GPU
#   c_fidelity     ResNet-18 AT vs VIR-AT (+ vir-at-flat if virkit has it) on the stand-in, scaled paper schedule
#   b_autoattack   standard AutoAttack on 1,000 test images of c's AT model: virkit vs torchattacks
# Results: $OUT/campaign.json (everything, rewritten after every phase), $OUT/BENCHMARKS-rows.md
# (rows to paste into BENCHMARKS.md), $OUT/campaign.log. Without $OUT: benchmarks/out/campaign-*.
#
# Options: --out DIR, --data-root DIR (else $VIRKIT_DATA, data/, ../shared/datasets), --only a,b
# (phase names, comma-separated), --budget PHASE=S and --cap PHASE=S (repeatable), --total S.
# Environment: PYTHON (default .venv/bin/python if present, else python3), CAMPAIGN_WORK (work
# folder: phase files, logs, run directories; default a new folder under /tmp, removed at the end
# unless CAMPAIGN_KEEP_WORK=1).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
ORIG_ARGS="$*"

PHASES=(prep a_train a_wrn d_concurrency c_fidelity b_autoattack)
declare -A GPU_SOFT=([prep]=30 [a_train]=95 [a_wrn]=25 [d_concurrency]=32 [c_fidelity]=90 [b_autoattack]=80)
declare -A GPU_CAP=([prep]=38 [a_train]=104 [a_wrn]=33 [d_concurrency]=40 [c_fidelity]=100 [b_autoattack]=90)
# smoke: fixed tiny work that ends long before these; they are generous so that a loaded CI machine
# never cuts a smoke phase short
declare -A SMOKE_SOFT=([prep]=40 [a_train]=60 [a_wrn]=40 [d_concurrency]=40 [c_fidelity]=80 [b_autoattack]=60)
declare -A SMOKE_CAP=([prep]=70 [a_train]=90 [a_wrn]=70 [d_concurrency]=70 [c_fidelity]=110 [b_autoattack]=90)
GPU_TOTAL=415     # seconds for all phases together (7 minutes = 420 s, less the reports)
SMOKE_TOTAL=600

MODE=gpu
[[ "${SMOKE:-0}" == 1 ]] && MODE=smoke
OUT_DIR="${OUT:-}"
DATA_ARG=""
ONLY=""
ONLY_RAW=""
TOTAL=""
PREPARE=0
declare -A SOFT_OVR=() CAP_OVR=()

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --smoke) MODE=smoke ;;
    --prepare) PREPARE=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --data-root) DATA_ARG="$2"; shift ;;
    --only) ONLY=",$2,"; ONLY_RAW="$2"; shift ;;
    --total) TOTAL="$2"; shift ;;
    --budget) SOFT_OVR[${2%%=*}]="${2#*=}"; shift ;;
    --cap) CAP_OVR[${2%%=*}]="${2#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_campaign.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || command -v python)"; fi

has_cifar() { [[ -n "$1" && ( -f "$1/cifar10-jpeg.tar.gz" || -d "$1/cifar-10-batches-py" ) ]]; }

# ---------------------------------------------------------------------------------------------------
if ((PREPARE)); then
  # Here, before the run: data/ gets the stand-in, its order file and the torchattacks wheel
  # (pure Python, put on sys.path there as a zip: nothing is installed on the GPU machine).
  mkdir -p "$ROOT/data"
  SRC="${DATA_ARG:-${VIRKIT_DATA:-$ROOT/../shared/datasets}}"
  for f in cifar10-jpeg.tar.gz cifar10-original-order.json; do
    if [[ -f "$SRC/$f" ]]; then cp -fp "$SRC/$f" "$ROOT/data/" && echo "copied $SRC/$f -> data/"
    elif [[ -f "$ROOT/data/$f" ]]; then echo "data/$f already there"
    else echo "gpu_campaign.sh --prepare: $SRC/$f not found (pass --data-root DIR)" >&2; fi
  done
  if ! ls "$ROOT"/data/torchattacks-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download --no-deps --only-binary=:all: torchattacks==3.5.1 -d "$ROOT/data" \
      || echo "could not download the torchattacks wheel: phase b will skip the comparison" >&2
  fi
  if [[ -e "$ROOT/data/decoded" ]]; then
    echo "WARNING: data/decoded exists (VIRKIT_DATA pointed at data/?); remove it: it would travel with data/" >&2
  fi
  du -sh "$ROOT/data"; ls -la "$ROOT/data"
  echo "copy the checkout with data/ to the GPU machine, then run there: bash benchmarks/gpu_campaign.sh"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------
DATA_ROOT=""
for cand in "$DATA_ARG" "${VIRKIT_DATA:-}" "$ROOT/data" "$ROOT/../shared/datasets"; do
  if has_cifar "$cand"; then DATA_ROOT="$(cd "$cand" && pwd)"; break; fi
done
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT_DIR="${OUT_DIR:-$ROOT/benchmarks/out/campaign-$MODE-$STAMP}"
OWN_WORK=0
if [[ -n "${CAMPAIGN_WORK:-}" ]]; then WORK="$CAMPAIGN_WORK"
else WORK="$(mktemp -d "${TMPDIR:-/tmp}/virkit-campaign.XXXXXX")"; OWN_WORK=1; fi
mkdir -p "$OUT_DIR" "$WORK" || exit 1
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/campaign.log"

# pure-Python wheels in the data folders (torchattacks) are importable as zips: nothing is installed
WHEELS=""
for w in "$ROOT"/data/*-py3-none-any.whl ${DATA_ROOT:+"$DATA_ROOT"/*-py3-none-any.whl}; do
  [[ -f "$w" && ":$WHEELS:" != *":$w:"* ]] && WHEELS="${WHEELS:+$WHEELS:}$w"
done
export PYTHONPATH="$ROOT:$ROOT/benchmarks${WHEELS:+:$WHEELS}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ "$MODE" == smoke ]]; then
  # the CPU, one thread per process, caches in the work folder (synthetic images: nothing is decoded)
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 XDG_CACHE_HOME="$WORK/xdg-cache" CUDA_VISIBLE_DEVICES=""
  unset VIRKIT_DATA
  TOTAL="${TOTAL:-$SMOKE_TOTAL}"
else
  TOTAL="${TOTAL:-$GPU_TOTAL}"
fi

GIT_COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
GIT_DIRTY="$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)"
COMMAND="bash benchmarks/gpu_campaign.sh${ORIG_ARGS:+ $ORIG_ARGS}"
[[ "$MODE" == smoke && "$ORIG_ARGS" != *--smoke* ]] && COMMAND="SMOKE=1 $COMMAND"
BUDGETS=""
for p in "${PHASES[@]}"; do
  if [[ "$MODE" == smoke ]]; then s=${SMOKE_SOFT[$p]}; c=${SMOKE_CAP[$p]}; else s=${GPU_SOFT[$p]}; c=${GPU_CAP[$p]}; fi
  BUDGETS+="${BUDGETS:+,}$p=${SOFT_OVR[$p]:-$s}:${CAP_OVR[$p]:-$c}"
done
# the report's top-level fields (campaign_report.py reads CAMPAIGN_META_*)
export CAMPAIGN_META_MODE="$MODE" CAMPAIGN_META_DATE="$(date -Iseconds)" CAMPAIGN_META_COMMAND="$COMMAND" \
  CAMPAIGN_META_PYTHON="$PY" CAMPAIGN_META_ROOT="$ROOT" CAMPAIGN_META_OUT="$OUT_DIR" CAMPAIGN_META_WORK="$WORK" \
  CAMPAIGN_META_DATA_ROOT="$DATA_ROOT" CAMPAIGN_META_WHEELS="$WHEELS" CAMPAIGN_META_GIT_COMMIT="$GIT_COMMIT" \
  CAMPAIGN_META_GIT_DIRTY="${GIT_DIRTY:+yes}" CAMPAIGN_META_TOTAL_BUDGET_S="$TOTAL" CAMPAIGN_META_BUDGETS="$BUDGETS"
report() {
  CAMPAIGN_META_ELAPSED_S=$SECONDS "$PY" "$ROOT/benchmarks/campaign_report.py" --work "$WORK" --out "$OUT_DIR" "$@"
}

{
  echo "virkit GPU campaign ($MODE) $CAMPAIGN_META_DATE"
  echo "command: $COMMAND"
  echo "root $ROOT; out $OUT_DIR; work $WORK; python $PY"
  echo "data root: ${DATA_ROOT:-NOT FOUND (phase c is skipped; copy the stand-in into data/)}"
  echo "wheels on sys.path: ${WHEELS:-none}"
  echo "total budget ${TOTAL} s"
} 2>&1 | tee -a "$LOG"
for p in "${PHASES[@]}"; do rm -f "$WORK/$p.json" "$WORK/$p.rc.json"; done   # no stale results in a reused work folder
SECONDS=0
for p in "${PHASES[@]}"; do
  if [[ "$MODE" == smoke ]]; then soft=${SMOKE_SOFT[$p]}; cap=${SMOKE_CAP[$p]}; else soft=${GPU_SOFT[$p]}; cap=${GPU_CAP[$p]}; fi
  soft=${SOFT_OVR[$p]:-$soft}; cap=${CAP_OVR[$p]:-$cap}
  if [[ -n "$ONLY" && "$ONLY" != *",$p,"* ]]; then
    printf '{"rc": null, "skipped": "not selected (--only %s)"}\n' "$ONLY_RAW" > "$WORK/$p.rc.json"
    continue
  fi
  left=$((TOTAL - SECONDS))
  if ((left < 8)); then
    printf '{"rc": null, "skipped": "the campaign total of %s s is spent"}\n' "$TOTAL" > "$WORK/$p.rc.json"
    echo "=== phase $p: not run (total budget spent) ===" | tee -a "$LOG"
    report
    continue
  fi
  ((cap > left - 2)) && cap=$((left - 2))
  ((soft > cap - 4)) && soft=$((cap - 4))
  ((soft < 1)) && soft=1
  echo "=== phase $p: budget ${soft} s, hard cap ${cap} s (campaign at ${SECONDS} s of ${TOTAL}) ===" | tee -a "$LOG"
  t0=$SECONDS
  timeout -k 2 "$cap" "$PY" -u "$ROOT/benchmarks/campaign.py" "$p" --work "$WORK" --mode "$MODE" \
    --budget "$soft" --cap "$cap" ${DATA_ROOT:+--data-root "$DATA_ROOT"} 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  printf '{"rc": %s, "wall_s": %s, "budget_s": %s, "cap_s": %s}\n' "$rc" "$((SECONDS - t0))" "$soft" "$cap" \
    > "$WORK/$p.rc.json"
  ((rc == 124 || rc == 137)) && echo "=== phase $p: KILLED at its hard cap of ${cap} s (partial results kept) ===" \
    | tee -a "$LOG"
  report
done
echo "=== campaign done in ${SECONDS} s; results in $OUT_DIR (campaign.json, BENCHMARKS-rows.md, campaign.log) ===" \
  | tee -a "$LOG"
report --final 2>&1 | tee -a "$LOG"
# a work folder of our own (run directories, checkpoints, logs) goes unless CAMPAIGN_KEEP_WORK=1
if ((OWN_WORK)) && [[ "${CAMPAIGN_KEEP_WORK:-0}" != 1 ]]; then rm -rf "$WORK"; fi
exit 0
