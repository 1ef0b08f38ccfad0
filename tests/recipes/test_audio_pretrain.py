"""recipes.audio_pretrain end to end on a few real FSDD clips, then fine-tuning from its checkpoint."""

from __future__ import annotations

import shutil

import soundfile as sf

from recipes import audio_classify, audio_pretrain


def test_pretrain_then_finetune(tmp_path, data_dir):
    clips = tmp_path / "clips"
    clips.mkdir()
    for digit in (2, 5):
        for speaker in ("george", "lucas"):
            for index in (0, 11, 22):
                shutil.copy(data_dir / "audio" / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav", clips)
    data = ["data.source=folder", f"data.path={clips}", "data.test_speakers=[lucas]", "data.val_fraction=0.34"]
    run = tmp_path / "pretrain"
    metrics = audio_pretrain.main(["--config", "tiny", f"run_dir={run}", *data])
    assert 4.0 < metrics["val/bps"] < 9.0  # an untrained model is near 8 bits (uniform over 256 levels)
    sample, rate = sf.read(metrics["samples"][0])
    assert rate == 8000 and len(sample) == 128 + 256
    assert (run / "pretrained" / "model.safetensors").is_file() and (run / "loss_curve.png").is_file()

    tuned = audio_classify.main(["--config", "tiny", f"run_dir={tmp_path / 'tuned'}", f"init_from={run / 'pretrained'}",
                                 *data])  # fmt: skip
    assert tuned["test/num_examples"] == 6
