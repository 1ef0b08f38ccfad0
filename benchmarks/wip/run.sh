# Session 14's branch on the device, GPU only (drop at the merge). Stage "ab" (~8 min): GPU tests, the conv A/B,
# the one-pass tile sweep, 370M training steps head vs one-pass vs lanes. Stage "results" (~6 min): the committed
# benchmark scripts. Carry .whl (omegaconf, biopython, soundfile wheels) and .data. main's conv comes from git; where
# the device copy has no .git, write it first (`git show main:kernels/causal_conv1d/conv.py > scratch/conv_head.py`)
# and carry scratch too.
[ -f scratch/conv_head.py ] && export CONV_HEAD=$PWD/scratch/conv_head.py
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD MAMBALAB_DATA=$PWD/.data PYTHONUNBUFFERED=1
L=$OUT/all.log
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a $L
git log --oneline -1 >> $L
if [ "$1" = ab ]; then
  timeout 60 python benchmarks/wip/ab_conv.py conv >> $L 2>&1
  echo "conv done $SECONDS s" >> $L
  timeout 170 python -m pytest -q -m gpu tests/backbone tests/tasks/test_cuda_graph_step.py \
    tests/tasks/test_cuda_graph_lightning.py tests/tasks/language/test_generation.py tests/kernels 2>&1 \
    | grep -E "passed|failed|^E |FAILED" | tail -15 >> $L
  echo "tests done $SECONDS s" >> $L
  timeout 60 python benchmarks/wip/ab_conv.py tiles >> $L 2>&1
  echo "tiles done $SECONDS s" >> $L
  left=$((500 - SECONDS))
  timeout $left python benchmarks/wip/ab_conv.py step $((left - 30)) one-pass,head,lanes 2 >> $L 2>&1
else
  timeout 120 python benchmarks/kernels.py --only conv >> $L 2>&1
  timeout 240 python benchmarks/train_throughput.py --quick 2>&1 | grep -E "^\{|Error" >> $L
  timeout 150 python benchmarks/profile_train_step.py --size 370M --fused-loss >> $L 2>&1
  cp benchmarks/results/* $OUT/ 2>/dev/null
fi
echo "elapsed $SECONDS s" >> $L
