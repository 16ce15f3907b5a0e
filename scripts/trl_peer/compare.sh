#!/usr/bin/env bash
# PPO peak memory and time per iteration: TRL 0.25.1's PPOTrainer (four fp32 models) against lora_rlhf
# (one fp32 base, four LoRA roles), on the same work, one after the other in one window (issue 14, item 3).
#
#   bash scripts/trl_peer/setup.sh        # once: .venv-trl (trl 0.25.1, transformers 4.x) and the demo model
#   bash scripts/trl_peer/compare.sh      # from the repo root; ~10-15 minutes on 2 free cores
#
# Work: 8 prompts per rollout, one PPO epoch, one minibatch of 8, micro batch 8, 48 new tokens, the demo's
# prompts (bench_ppo.py's). Ours: `scripts/bench_ppo.py --quantization none --rollout 8 --mini 8 --micro 8
# --max-new-tokens 48 --iterations 5` (one warm-up + 5 timed); the peer: 4 iterations (1 warm-up + 3 timed).
# Both are run under /usr/bin/time -v too, for each process's lifetime max RSS (loading included).
# Environment: PEER_ITERATIONS, OUR_ITERATIONS, OUR_EXTRA (extra bench_ppo.py flags), OUT (folder, default
# runs/trl_peer). Timings depend on what else runs: the load average is printed before and after.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-runs/trl_peer}
PEER_ITERATIONS=${PEER_ITERATIONS:-4}
OUR_ITERATIONS=${OUR_ITERATIONS:-5}
OUR_EXTRA=${OUR_EXTRA:-}
NICE=(nice -n "${NICENESS:-19}")
mkdir -p "$OUT"
for venv in .venv .venv-trl; do
    [ -x "$venv/bin/python" ] || { echo "missing $venv: run scripts/trl_peer/setup.sh (and the project's install)" >&2; exit 1; }
done

echo "== $(date -u +%FT%TZ) $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/python scripts/trl_peer/export_prompts.py --count $((8 * (OUR_ITERATIONS + 1))) --out "$OUT/prompts.jsonl"

echo "== peer: TRL PPOTrainer, $PEER_ITERATIONS iterations"
"${NICE[@]}" /usr/bin/time -v -o "$OUT/trl.time" \
    .venv-trl/bin/python scripts/trl_peer/trl_ppo_peak.py --prompts "$OUT/prompts.jsonl" \
    --iterations "$PEER_ITERATIONS" --out "$OUT/trl.json" > "$OUT/trl.log" 2>&1 \
    || { tail -30 "$OUT/trl.log"; exit 1; }
echo "   load after peer: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== ours: bench_ppo.py, $OUR_ITERATIONS timed iterations ${OUR_EXTRA}"
# shellcheck disable=SC2086
"${NICE[@]}" /usr/bin/time -v -o "$OUT/ours.time" \
    .venv/bin/python scripts/bench_ppo.py --quantization none --rollout 8 --mini 8 --micro 8 \
    --max-new-tokens 48 --iterations "$OUR_ITERATIONS" $OUR_EXTRA > "$OUT/ours.log" 2>&1 \
    || { tail -30 "$OUT/ours.log"; exit 1; }
echo "   load after ours: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" <<'PY'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])

def maxrss(name):  # /usr/bin/time -v: "Maximum resident set size (kbytes): N"
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", (out / name).read_text())
    return int(match.group(1)) / 1024

trl = json.loads((out / "trl.json").read_text())
log = (out / "ours.log").read_text()
ours = json.loads(log[log.index("\n{") + 1 : log.rindex("}") + 1])
rows = [
    ("peak RSS during PPO (sampled, MiB)", trl["peak_train_mib"], ours["peak_mib"]),
    ("process max RSS, loading incl. (MiB)", maxrss("trl.time"), maxrss("ours.time")),
    ("RSS added by PPO (MiB)", trl["added_by_train_mib"], ours["added_mib"]),
    ("seconds per iteration (median)", trl["s_per_iteration"], ours["time_total"]),
]
print(f"{'':40s} {'TRL 0.25.1':>12s} {'lora_rlhf':>12s} {'ours/TRL':>9s}")
for name, a, b in rows:
    print(f"{name:40s} {a:12.1f} {b:12.1f} {b / a:9.3f}")
print(f"TRL per iteration: {trl['s_per_iteration_all']} s; peaks per iteration {trl['peak_per_iteration_mib']} MiB")
print(
    f"ours: generate {ours['time_generate']:.1f} s, score {ours['time_score']:.1f} s, train {ours['time_train']:.1f} s; "
    f"{ours['response_tokens']:.0f} response tokens per rollout; threads {ours['threads']}"
)
summary = {"trl": trl, "ours": ours, "trl_maxrss_mib": maxrss("trl.time"), "ours_maxrss_mib": maxrss("ours.time")}
summary["peak_ratio_ours_over_trl"] = ours["peak_mib"] / trl["peak_train_mib"]
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"written: {out / 'summary.json'}")
PY
