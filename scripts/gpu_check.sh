#!/usr/bin/env bash
# One prepared GPU check (issue 30): on a machine with one CUDA GPU and what `make test` installs, in <= 10 minutes,
# writes OUT/report.md naming the device, with
#   parity         NF4 on CUDA against the CPU path on a tiny model: log-probs and LoRA gradients (tolerances stated)
#   validate_demo  scripts/validate_plan.py --device cuda on the demo model (max_memory_allocated / reserved vs plan)
#   validate_8b    the same on an 8B-shaped random NF4 model at the 8B recipe's sizes
#   ppo_8b         every phase of the 8B recipe at its own sizes (PPO generate, score, train = one iteration),
#                  peak and seconds per phase (scripts/real_shapes.py --device cuda)
#   dequant_*      scripts/bench_ppo.py --dequantized-decoding true and false on the demo model
#   serve16        scripts/bench_serve.py at 16 clients
# Every piece runs under its own time limit; one that fails or times out is marked FAILED in the report and the
# script exits 1. Without CUDA it stops at once with exit status 2. Nothing is skipped silently.
#
#   bash scripts/gpu_check.sh [--out DIR] [--python PY] [--model-config CONFIG.json] [--only piece,piece]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="runs/gpu_check"
PY="$ROOT/.venv/bin/python"
MODEL_CONFIG="$ROOT/scripts/model_configs/llama-3.1-8b.json"
ONLY=""
ALL="device parity validate_demo validate_8b ppo_8b dequant_true dequant_false serve16"

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }
die() { echo "gpu_check: $1" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY="$2"; shift 2 ;;
    --model-config) [ $# -ge 2 ] || die "--model-config needs a config.json"; MODEL_CONFIG="$2"; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs piece names"; ONLY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument '$1'" ;;
  esac
done
[ -f "$MODEL_CONFIG" ] || die "--model-config '$MODEL_CONFIG' does not exist"
for piece in ${ONLY//,/ }; do
  case " $ALL " in *" $piece "*) ;; *) die "unknown piece '$piece' (pieces: $ALL)" ;; esac
done

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: FAILED: CUDA is not available to $PY (torch.cuda.is_available() is False); nothing was measured" >&2
  exit 2
fi

mkdir -p "$OUT"
cd "$ROOT"
wanted() { [ -z "$ONLY" ] || [ "$1" = device ] || case ",$ONLY," in *",$1,"*) true ;; *) false ;; esac; }

# run PIECE SECONDS CMD...: the command's output in OUT/PIECE.log, its exit status (124: timed out) in OUT/PIECE.rc
run() {
  local piece="$1" limit="$2"; shift 2
  wanted "$piece" || return 0
  echo "gpu_check: $piece (limit ${limit}s)" >&2
  timeout --signal=KILL "$limit" "$@" >"$OUT/$piece.log" 2>&1
  local rc=$?
  echo "$rc" >"$OUT/$piece.rc"
  [ "$rc" -eq 0 ] || echo "gpu_check: $piece FAILED (exit status $rc): see $OUT/$piece.log" >&2
}

run device 30 "$PY" scripts/gpu_check_report.py device --out "$OUT"
run parity 60 "$PY" scripts/gpu_check_report.py parity --out "$OUT"
run validate_demo 80 "$PY" scripts/validate_plan.py --device cuda --models demo
run validate_8b 140 "$PY" scripts/validate_plan.py --device cuda --models 8b --model-config "$MODEL_CONFIG"
run ppo_8b 150 "$PY" scripts/real_shapes.py --device cuda --sizes recipe --model-config "$MODEL_CONFIG" \
  --json "$OUT/ppo_8b.rows.json"
run dequant_true 40 "$PY" scripts/bench_ppo.py --device cuda --dequantized-decoding true --iterations 2
run dequant_false 40 "$PY" scripts/bench_ppo.py --device cuda --dequantized-decoding false --iterations 2
run serve16 40 "$PY" scripts/bench_serve.py --device cuda --quantization nf4 --clients 16

"$PY" scripts/gpu_check_report.py assemble "$OUT" >/dev/null
status=$?
echo "gpu_check: report in $OUT/report.md" >&2
exit "$status"
