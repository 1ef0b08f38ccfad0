"""recipes.audio_classify end to end on a few real FSDD clips: train, report, resume, predict, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from recipes import audio_classify
from tasks.audio.io import AudioFileError


@pytest.fixture
def clips(tmp_path, data_dir):
    """Three digits x two speakers x four takes of FSDD, in a folder of their own (24 WAVs)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for digit in (1, 4, 8):
        for speaker in ("jackson", "theo"):
            for index in (0, 10, 20, 30):
                shutil.copy(data_dir / "audio" / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav", folder)
    return folder


def _args(clips, run_dir, *extra):
    return ["--config", "tiny", f"run_dir={run_dir}", "data.source=folder", f"data.path={clips}",
            "data.test_speakers=[theo]", "data.val_fraction=0.25", *extra]  # fmt: skip


def test_train_report_resume_predict(clips, tmp_path, capsys):
    (clips / "9_jackson_99.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    run_dir = tmp_path / "run"
    metrics = audio_classify.main(_args(clips, run_dir, "data.skip_bad_files=true"))
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and metrics["test/num_examples"] == 12
    assert metrics["skipped_bad_files"] == 1
    for name in ("config.yaml", "metrics.json", "classification_report.txt", "confusion_matrix.png", "labels.json",
                 "checkpoints/last.ckpt"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "labels.json").read_text()) == ["1", "4", "8", "9"]
    assert "macro_f1" in (run_dir / "metrics.json").read_text()

    resumed = audio_classify.main(_args(clips, run_dir, "data.skip_bad_files=true", "ckpt_path=last",
                                        "trainer.max_steps=5"))  # fmt: skip
    assert resumed["test/num_examples"] == 12

    capsys.readouterr()
    results = audio_classify.predict(str(run_dir), str(clips))
    out, err = capsys.readouterr()
    assert len(results) == 24 and "1_theo_0.wav\t" in out
    assert all(label in {"1", "4", "8", "9"} for _, label, _ in results)
    assert "skipped 1 bad file" in err and "9_jackson_99.wav" in err


def test_bad_file_stops_with_its_name(clips, tmp_path):
    (clips / "4_jackson_77.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match="4_jackson_77.wav: the file is empty"):
        audio_classify.main(_args(clips, tmp_path / "run"))


def test_config_typo_names_the_key(tmp_path):
    with pytest.raises(Exception, match="optim.lrr"):
        audio_classify.main(["--config", "tiny", f"run_dir={tmp_path}", "optim.lrr=1"])
