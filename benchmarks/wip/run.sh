# Session 12: GPU tests (incl. the Lightning CUDA-graph step, conv pass 2 aligned); the 130M recipe eager vs graphed;
# conv pass-2 A/B (reverted on the device if it loses); committed results: train_throughput --quick, generation, 370M
# profile. Ordered by priority. Needs, carried: .whl (../shared/tools/gpu-wheels.sh) and .data/text/ with
# tinyshakespeare.txt and tokenizers/gpt-neox-20b/tokenizer.json copied from ../shared/data/text. ~9 min on an H100:
#   run: bash benchmarks/wip/run.sh > $OUT/stdout.log 2>&1; tail -c 11500 $OUT/all.log   (carry .whl, .data)
# benchmarks/wip is for this A/B only: drop it (conv_main.py is conv.py before the pass-2 change, for the A/B) before merging.
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MAMBALAB_DATA=$PWD/.data MAMBALAB_RUN_DIR=/tmp/runs
L=$OUT/all.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a $L
timeout 200 python -m pytest -q -m gpu tests/backbone tests/tasks/test_cuda_graph_step.py tests/tasks/test_cuda_graph_lightning.py tests/tasks/language/test_generation.py tests/kernels 2>&1 | grep -v Warning > $OUT/gpu_tests.log; grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -15 >> $L
for G in false true; do
  timeout 100 python benchmarks/wip/recipe_profile.py trainer.max_steps=50 trainer.val_check_interval=50 trainer.cuda_graph=$G run_dir=/tmp/runs/lm_$G > $OUT/recipe_$G.log 2>&1
  echo "recipe cuda_graph=$G rc=$?" >> $L; cat /tmp/runs/lm_$G/throughput.json >> $L 2>/dev/null; grep -i "error\|captur" $OUT/recipe_$G.log | tail -5 >> $L
  grep -E "run_training_batch|training_step|optimizer_step|backward|zero_grad|Total|train_dataloader_next|on_train_batch" $OUT/recipe_$G.log | cut -c1-160 | head -16 >> $L
done
[ $SECONDS -lt 330 ] && timeout 80 python benchmarks/wip/conv_ab.py 2>&1 | grep -v Warning >> $L
grep -q "VERDICT head" $L && cp benchmarks/wip/conv_main.py kernels/causal_conv1d/conv.py && echo "reverted conv.py to HEAD for the results below" >> $L
mkdir -p $OUT/results
[ $SECONDS -lt 370 ] && timeout 150 python benchmarks/train_throughput.py --quick 2>&1 | grep -v Warning | tail -12 >> $L; cp benchmarks/results/train_throughput_* $OUT/results/
[ $SECONDS -lt 455 ] && timeout 60 python benchmarks/generation.py 2>&1 | grep -v Warning | tail -6 >> $L; cp benchmarks/results/generation_* $OUT/results/
[ $SECONDS -lt 470 ] && timeout 60 python benchmarks/profile_train_step.py --size 370M --fused-loss 2>&1 | grep -v Warning | tail -30 >> $L; cp benchmarks/results/profile_train_step_370M_fused* $OUT/results/
echo "elapsed $SECONDS s" >> $L
