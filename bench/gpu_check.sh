#!/usr/bin/env bash
# One H200 (or any CUDA GPU), <= 8 minutes: install, throughput side by side (compiled and not), a cache
# build at the GPU's rate, and a 1-GPU torchrun (NCCL) run with train.local_loss=true. One JSON out.
#
#   bash bench/gpu_check.sh                  # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --cpu-smoke      # every part on the CPU with tiny models (checks the script)
#   bash bench/gpu_check.sh --dry-run        # print the plan (commands and time limits), run nothing
#
# Writes $OUT/gpu_check.json (OUT defaults to ./gpu_check_out): for each part its command, exit status,
# seconds, the JSON it produced and the tail of its log; the parts' logs lie next to it. A part that fails
# or runs past its time limit is recorded and the next one still runs; the script exits 1 if any failed.
# Install: a venv at $VENV (default ./.venv-gpu-check) that sees the system's packages (a torch already
# there is reused), then `pip install -e .[dev,bench]` (PyPI only). --cpu-smoke and --no-install use the
# python on PATH as it is (clipdistill and open_clip_train must import). Set PYTHON to choose another.
set -u -o pipefail

MODE=gpu INSTALL=1 DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) MODE=cpu INSTALL=0 ;;
    --no-install) INSTALL=0 ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-./gpu_check_out}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # relative to where the script was started
VENV="${VENV:-$ROOT/.venv-gpu-check}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

# Each part: a name, a time limit in seconds (they add up to < 8 minutes on the GPU), a command.
if [ "$MODE" = gpu ]; then
  THROUGHPUT=(bench/throughput.py --gpu --compile --repeats 2 --steps 24 --out "$OUT/throughput.json"
              --plot "$OUT/throughput.png" --work "$OUT/work_throughput")
  CACHE=(bench/cache_build.py --synthetic 2048 --image-px 128 --teacher ViT-L-14 --precision bf16 --device cuda
         --workers 8 --batch 256 --rounds 2 --prefetch 64 --out "$OUT/cache_build.json")
  DDP_SETTINGS=(student.model=ViT-B-16 teacher.model=ViT-L-14 teacher.precision=bf16 train.precision=bf16
                train.batch_size=256 train.steps=30 data.num_samples=8192 data.workers=8 eval.num_images=256)
  LIMITS=(110 250 60 60)
else
  THROUGHPUT=(bench/throughput.py --quick --steps 6 --repeats 1 --workers 0 --threads 1 --out "$OUT/throughput.json"
              --work "$OUT/work_throughput")
  CACHE=(bench/cache_build.py --synthetic 64 --image-px 64 --teacher tiny-teacher --workers 1 --batch 32 --rounds 1
         --prefetch 8 --threads 1 --out "$OUT/cache_build.json")
  DDP_SETTINGS=(train.batch_size=16 train.steps=4 data.num_samples=128 eval.num_images=32)
  LIMITS=(60 400 120 180)
fi
DDP=(-m torch.distributed.run --standalone --nproc_per_node 1 -m clipdistill.cli train configs/smoke.yaml
     --out "$OUT/ddp_local_loss" --overwrite train.local_loss=true train.progress=false train.log_every=1
     train.save_every=1000000 "${DDP_SETTINGS[@]}")

plan() {
  echo "mode=$MODE install=$INSTALL out=$OUT"
  [ "$INSTALL" = 1 ] && echo "[${LIMITS[0]} s] install: $PYTHON -m venv --system-site-packages $VENV; pip install -e .[dev,bench]"
  echo "[${LIMITS[1]} s] throughput: python ${THROUGHPUT[*]}"
  echo "[${LIMITS[2]} s] cache_build: python ${CACHE[*]}"
  echo "[${LIMITS[3]} s] ddp_local_loss: python ${DDP[*]}"
}
if [ "$DRY" = 1 ]; then plan; exit 0; fi
mkdir -p "$OUT" || exit 2
plan | tee "$OUT/plan.txt"

STATUS="$OUT/parts.tsv"  # name, exit status, seconds, command: gathered into the JSON at the end
: > "$STATUS"
run_part() {  # run_part NAME LIMIT COMMAND...
  local name=$1 limit=$2; shift 2
  local started=$SECONDS rc
  echo "== $name (limit ${limit} s)" >&2
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" "$*" >> "$STATUS"
  echo "   exit $rc after $((SECONDS - started)) s" >&2
}

if [ "$INSTALL" = 1 ]; then
  run_part install "${LIMITS[0]}" bash -c "'$PYTHON' -m venv --system-site-packages '$VENV' &&
    '$VENV/bin/python' -m pip install --quiet --upgrade pip &&
    '$VENV/bin/python' -m pip install --quiet -e '.[dev,bench]'"
  PYTHON="$VENV/bin/python"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$([ "$MODE" = cpu ] && echo 1 || nproc)}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else '')" > "$OUT/environment.txt" 2>&1
run_part throughput "${LIMITS[1]}" "$PYTHON" "${THROUGHPUT[@]}"
run_part cache_build "${LIMITS[2]}" "$PYTHON" "${CACHE[@]}"
run_part ddp_local_loss "${LIMITS[3]}" "$PYTHON" "${DDP[@]}"

"$PYTHON" - "$OUT" "$MODE" <<'PY'
"""Gather the parts into one JSON: status, seconds, command, each part's own JSON, the tail of its log."""
import json
import sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
partial = out / "throughput.json.partial"  # what a throughput run stopped by its time limit had measured
results = {"throughput": out / "throughput.json" if (out / "throughput.json").exists() else partial, "cache_build": out / "cache_build.json",
           "ddp_local_loss": out / "ddp_local_loss" / "results.json"}
parts = {}
for line in (out / "parts.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t", 3)
    log = out / f"{name}.log"
    part = {"ok": rc == "0", "exit": int(rc), "timed_out": rc in ("124", "137"), "seconds": int(seconds),
            "command": command, "log_tail": log.read_text(errors="replace")[-1500:] if log.exists() else ""}
    if name in results and results[name].exists():
        part["result"] = json.loads(results[name].read_text())
    if name == "ddp_local_loss":
        metrics = out / "ddp_local_loss" / "metrics.jsonl"
        rows = [json.loads(r) for r in metrics.read_text().splitlines()] if metrics.exists() else []
        part["losses"] = [r["loss"] for r in rows if "loss" in r]
        part["samples_per_s"] = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    parts[name] = part
environment = out / "environment.txt"
summary = {"mode": mode, "ok": all(p["ok"] for p in parts.values()), "seconds": sum(p["seconds"] for p in parts.values()),
           "environment": environment.read_text().strip() if environment.exists() else "", "parts": parts}
tp = parts.get("throughput", {}).get("result")
if tp:
    summary["throughput_targets"] = tp.get("targets")
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({"ok": summary["ok"], "seconds": summary["seconds"],
                  "parts": {n: {"ok": p["ok"], "exit": p["exit"], "seconds": p["seconds"]} for n, p in parts.items()},
                  "throughput_targets": summary.get("throughput_targets")}, indent=2))
sys.exit(0 if summary["ok"] else 1)
PY
