#!/usr/bin/env bash
# GPU check, for a machine with CUDA GPUs (not part of CI): generate the gpu and multi-gpu
# projects of every task in both styles, train each for 500 steps with mixed precision
# (bf16), and print the run time and throughput; then the engines' overhead against a
# hand-written loop on the GPU, with bf16 and torch.compile (benchmarks/train_overhead.py).
# Then the pretrained projects fine-tune the real default models (see below), and the
# fine-tuning overhead on tiny stand-ins (benchmarks/finetune_overhead.py).
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), 'x', torch.cuda.device_count())"
pip install -q -e "$repo"
printf '%-22s %-10s %-10s %8s %12s  %s\n' task framework hardware seconds samples/s final
for hardware in gpu multi-gpu; do
  for framework in raw lightning; do
    for task in image-classification text-classification tabular-regression language-modeling; do
      name="$task-$framework-$hardware"
      scaffold new "$out/$name" --defaults --task "$task" --framework "$framework" \
        --hardware "$hardware" --name "check-$name" >/dev/null
      pip install -q --no-deps -e "$out/$name"
      start=$(date +%s.%N)
      (cd "$out/$name" && "check-$name" train --max-steps 500 --precision bf16-mixed --name gpu \
        train.patience=0 > train.log 2>&1) || { echo "$name FAILED"; tail -20 "$out/$name/train.log"; continue; }
      end=$(date +%s.%N)
      python - "$out/$name" "$start" "$end" "$name" <<'PY'
import csv, sys, yaml
from pathlib import Path
run = Path(sys.argv[1]) / "runs" / "gpu"
seconds = float(sys.argv[3]) - float(sys.argv[2])
cfg = yaml.safe_load((run / "config.yaml").read_text())
rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/loss")]
steps = max(int(float(r["step"])) for r in rows)
import torch
world = torch.cuda.device_count() if "multi-gpu" in sys.argv[4] else 1
samples = steps * cfg["train"]["batch_size"] * world
task, framework, hardware = sys.argv[4].rsplit("-", 2)[0], *sys.argv[4].rsplit("-", 2)[1:]
print(f"{task:<22} {framework:<10} {hardware:<10} {seconds:8.1f} {samples / seconds:12.0f}  val/loss {float(rows[-1]['val/loss']):.4f}")
PY
    done
  done
done
# Pretrained projects: the real default models (ResNet-18, DistilBERT, SmolLM2-135M), which
# must be in the Hugging Face cache or downloadable (hf download ID, see the projects'
# READMEs); 300 fine-tuning steps each in both styles, SmolLM2 also with LoRA, and with
# two GPUs or more with DDP.
pretrained_run() {  # name task framework hardware [train arguments...]
  local name=$1 task=$2 framework=$3 hardware=$4
  shift 4
  if [ ! -d "$out/$name" ]; then
    scaffold new "$out/$name" --defaults --task "$task" --framework "$framework" \
      --hardware "$hardware" --backbone pretrained --name "check-$name" >/dev/null
    pip install -q -e "$out/$name"  # transformers, peft
  fi
  local start end
  start=$(date +%s.%N)
  (cd "$out/$name" && "check-$name" train --max-steps 300 --precision bf16-mixed \
    train.patience=0 "$@" > "train-$*.log" 2>&1) \
    || { echo "$name $* FAILED"; tail -20 "$out/$name/train-$*.log"; return; }
  end=$(date +%s.%N)
  echo "$name $* $(awk "BEGIN {print $end - $start}") s: $(grep '^best' "$out/$name/train-$*.log")"
}
echo
echo "fine-tuning the default pretrained models (300 steps, bf16 where supported):"
for framework in raw lightning; do
  for task in image-classification text-classification language-modeling; do
    pretrained_run "$task-$framework-pretrained" "$task" "$framework" gpu --name full
  done
  pretrained_run "language-modeling-$framework-pretrained" language-modeling "$framework" gpu \
    --name lora model.lora_rank=16 --lr 1e-3
  if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    # two processes (raw projects relaunch under torchrun)
    pretrained_run "language-modeling-$framework-multi-pretrained" language-modeling \
      "$framework" multi-gpu --name ddp --devices 2
  fi
done
python "$repo/benchmarks/finetune_overhead.py" --repeat 3 --accelerator gpu

echo "projects and logs in $out"
echo
echo "engine overhead against a hand-written loop, on the GPU with bf16 and torch.compile:"
python "$repo/benchmarks/train_overhead.py" --accelerator gpu \
  --set train.precision=bf16-mixed --set train.compile=true --repeat 3
