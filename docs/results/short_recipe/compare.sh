#!/usr/bin/env bash
# The short-budget recipe comparison of docs/results/short_recipe/README.md: ResNet-20, L = 4 at
# the end, 2 epochs on the JPEG CIFAR-10, seed 0, one run per variant, each against today's recipe
# (configs/cifar10_resnet20_cpu.py). Runs resume (train.py), finished ones are skipped; the table
# of final test accuracies is printed at the end.
#   bash docs/results/short_recipe/compare.sh ../shared/data/cifar10-jpeg ~/runs/short_recipe
set -euo pipefail
data_dir=${1:?usage: compare.sh DATA_DIR RUNS_DIR}
runs=${2:?usage: compare.sh DATA_DIR RUNS_DIR}
python=${PYTHON:-python}
common=(--config=configs/cifar10_resnet20_cpu.py --config.data_dir="$data_dir"
        --config.num_epochs=2 --config.eval_every_epochs=0 --config.conversion.enabled=False)
schedule='0:32,0.6:4'
declare -A variants=(
  [a_baseline]=''
  [b_threshold_init]='--config.threshold_init=percentile'
  [c_levels_schedule]="--config.levels_schedule=$schedule"
  [d_thresholds_and_levels]="--config.threshold_init=percentile --config.levels_schedule=$schedule"
  [e_d_warmup_linear]="--config.threshold_init=percentile --config.levels_schedule=$schedule --config.warmup_epochs=0.2 --config.lr_schedule=linear"
  [f_d_smoothing_nesterov_no_bn_decay]="--config.threshold_init=percentile --config.levels_schedule=$schedule --config.label_smoothing=0.1 --config.nesterov=True --config.weight_decay_on=kernels"
  [g_thresholds_gradual_levels]="--config.threshold_init=percentile --config.levels_schedule=0:32,0.3:16,0.5:8,0.7:4"
)
for name in $(printf '%s\n' "${!variants[@]}" | sort); do
  workdir="$runs/$name"
  if grep -qs final_test_accuracy "$workdir/metrics.jsonl"; then continue; fi
  # shellcheck disable=SC2086
  "$python" train.py "${common[@]}" ${variants[$name]} --workdir="$workdir" \
      >> "$runs/$name.log" 2>&1
done
echo '| variant | overrides | final test accuracy |'
echo '|---|---|---|'
for name in $(printf '%s\n' "${!variants[@]}" | sort); do
  accuracy=$(grep -s final_test_accuracy "$runs/$name/metrics.jsonl" | tail -1 |
             sed 's/.*"final_test_accuracy": \([0-9.]*\).*/\1/')
  echo "| $name | ${variants[$name]:-(today's recipe)} | ${accuracy:-not run} |"
done
