"""Where does the eager Lightning 130M recipe step spend its time? lm_pretrain --config 130m with SimpleProfiler."""
import sys
import pytorch_lightning as pl

_Trainer = pl.Trainer


class ProfiledTrainer(_Trainer):
    def __init__(self, *a, **k):
        k["profiler"] = "simple"
        super().__init__(*a, **k)


pl.Trainer = ProfiledTrainer
from recipes import lm_pretrain  # noqa: E402

m = lm_pretrain.main(["--config", "130m", *sys.argv[1:]])
print({k: v for k, v in m.items() if "throughput" in k or "tokens" in k or "memory" in k or "GiB" in k})
