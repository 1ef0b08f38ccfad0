# Session 13: GPU tests (Lightning CUDA-graph step with grads re-bound after validation; conv pass 1 holding its taps);
# the 130M recipe eager vs graphed; conv pass-1 A/B + tiles (applied on the device if they win); committed results:
# train_throughput --quick and the 370M profile. Needs, carried: .whl and .data (see session 12's header). ~7 min.
#   run: bash benchmarks/wip/run.sh > $OUT/stdout.log 2>&1; tail -c 11500 $OUT/all.log   (carry .whl, .data)
# benchmarks/wip is for this A/B only: drop it before merging.
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MAMBALAB_DATA=$PWD/.data MAMBALAB_RUN_DIR=/tmp/runs
L=$OUT/all.log
mkdir -p /tmp/keep
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a $L
timeout 150 python -m pytest -q -m gpu tests/tasks/test_cuda_graph_lightning.py tests/tasks/test_cuda_graph_step.py tests/backbone "tests/kernels" -k "conv or graph or Graph or mixer or backbone or lightning" 2>&1 | grep -v Warning > /tmp/keep/gpu_tests.log; grep -E "passed|failed|Error|assert" /tmp/keep/gpu_tests.log | tail -15 >> $L
for G in false true; do
  timeout 110 python benchmarks/wip/recipe_profile.py trainer.max_steps=50 trainer.val_check_interval=50 trainer.cuda_graph=$G run_dir=/tmp/runs/lm_$G > /tmp/keep/recipe_$G.log 2>&1
  echo "recipe cuda_graph=$G rc=$?" >> $L; cat /tmp/runs/lm_$G/throughput.json >> $L 2>/dev/null; grep -i "error\|captur\|throughput\|tokens" /tmp/keep/recipe_$G.log | tail -6 >> $L
  grep -E "run_training_batch|training_step|optimizer_step|backward|zero_grad|Total|train_dataloader_next|on_train_batch|validation" /tmp/keep/recipe_$G.log | cut -c1-160 | head -18 >> $L
done
[ $SECONDS -lt 330 ] && timeout 90 python benchmarks/wip/conv_ab.py 2>&1 | grep -v Warning >> $L
grep -q "VERDICT head" $L && cp benchmarks/wip/conv_main.py kernels/causal_conv1d/conv.py && echo "reverted conv.py to HEAD for the results below" >> $L
cp kernels/causal_conv1d/conv.py $OUT/conv.py
[ $SECONDS -lt 400 ] && timeout 150 python benchmarks/train_throughput.py --quick 2>&1 | grep -v Warning | tail -12 >> $L
[ $SECONDS -lt 520 ] && timeout 60 python benchmarks/profile_train_step.py --size 370M --fused-loss 2>&1 | grep -v Warning | tail -5 >> $L
cp /tmp/runs/lm_*/throughput.json /tmp/keep/ 2>/dev/null
tar czf $OUT/results.tgz benchmarks/results /tmp/keep 2>/dev/null
echo "elapsed $SECONDS s" >> $L
