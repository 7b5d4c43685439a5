#!/usr/bin/env bash
# The main job, offline on the embedded default (Fashion-MNIST): set up, train the
# teacher unless saved_models/ has one, distil a small student with KD and train the
# same student alone on the same budget (the teacher's outputs read from a cache),
# then print the three accuracies.
# Extra flags are passed to recipes/distill.py (e.g. --epochs=2 --seed=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
TEACHER=saved_models/fashion_mnist_resnet20/model.keras
if [ ! -f "$TEACHER" ]; then
  echo "[main] no saved teacher at $TEACHER: training one (resnet20, 4 epochs)"
  .venv/bin/python recipes/train_teacher.py --model=resnet20 --dataset=fashion_mnist \
    --epochs=4 --batch_size=128 --lr=0.1 --output_dir=saved_models/fashion_mnist_resnet20
fi
# The teacher's outputs are cached (runs/teacher_cache): built once, reused by later runs,
# rebuilt when the teacher or the data flags change.
.venv/bin/python recipes/distill.py --teacher="$TEACHER" --student=resnet8 --method=kd \
  --dataset=fashion_mnist --train_limit=10000 --epochs=5 --batch_size=64 --lr=0.05 \
  --teacher_cache=runs/teacher_cache/main_job --rebuild_teacher_cache \
  --baseline --output_dir=runs/main_job "$@"
.venv/bin/python - <<'PY'
import json
m = json.load(open("runs/main_job/metrics.json"))
print("\n=== kdkeras main job: Fashion-MNIST test top-1 ===")
print(f"teacher  ({m['teacher']}): {m['teacher_top1']:.4f}")
print(f"baseline ({m['student']} alone):   {m['baseline_top1']:.4f}")
print(f"student  ({m['student']} + {m['method']}):    {m['student_top1']:.4f}")
PY
