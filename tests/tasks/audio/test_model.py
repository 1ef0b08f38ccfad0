"""Audio front-end and models: causality, step decoding == full forward, pretrained transfer, shapes."""

from __future__ import annotations

import pytest
import torch

from backbone import MambaConfig
from tasks.audio.embedding import AudioFrontEnd
from tasks.audio.model import AudioClassifier, AudioLM, AudioModelConfig
from tasks.audio.tokenizer import MuLawTokenizer


def _config(strides):
    return AudioModelConfig(MambaConfig(d_model=16, n_layer=2), embed_dim=8, strides=strides)


def test_front_end_is_causal_per_frame():
    front = AudioFrontEnd(16, embed_dim=8, strides=(4, 2))
    tokens = torch.randint(0, 256, (2, 64))
    out = front(tokens)
    assert out.shape == (2, 8, 16)
    changed = tokens.clone()
    changed[:, 40:] = (changed[:, 40:] + 7) % 256  # samples of frame 5 onwards
    assert torch.equal(front(changed)[:, :5], out[:, :5])
    with pytest.raises(ValueError, match="multiple of the frame"):
        front(tokens[:, :60])


@pytest.mark.parametrize("strides", [[4, 4], [], [2, 3]])
def test_step_decoding_matches_forward(strides):
    lm = AudioLM(_config(strides)).eval()
    frame = lm.config.frame
    tokens = torch.randint(0, 256, (2, frame * 8))
    full_hidden = lm.encoder(tokens)  # [B, 8, D]
    full_logits = lm(tokens)  # [B, 7, frame, 256]
    backbone, front = lm.encoder.backbone, lm.encoder.front_end
    cache = backbone.allocate_cache(2)
    hidden = backbone(front(tokens[:, : 3 * frame]), cache)[:, -1]  # prefill frames 0-2
    for j in range(2, 8):
        if j > 2:
            hidden = backbone.step(front(tokens[:, : (j + 1) * frame][:, -front.receptive_field :])[:, -1], cache)
        assert torch.allclose(hidden, full_hidden[:, j], atol=1e-4)
        if j < 7:  # the decoder's per-sample steps equal its batched forward, teacher-forced
            context = lm.decoder.context(hidden)
            for t in range(frame):
                previous = tokens[:, (j + 1) * frame + t - 1]
                assert torch.allclose(lm.decoder.step(context, previous, t), full_logits[:, j, t], atol=1e-4)
    generated = lm.generate(tokens[:, :frame], 3 * frame, temperature=0.8)
    assert generated.shape == (2, 4 * frame) and torch.equal(generated[:, :frame], tokens[:, :frame])


def test_lm_is_causal():
    lm = AudioLM(_config([4, 2])).eval()
    tokens = torch.randint(0, 256, (1, 64))
    changed = tokens.clone()
    changed[:, 37] = (changed[:, 37] + 100) % 256
    # logits row j covers samples 8(j+1) ... 8(j+1)+7; sample 37 is input to targets 38.. only
    flat, flat_changed = lm(tokens).flatten(1, 2), lm(changed).flatten(1, 2)  # [1, 56, 256], target i = sample i + 8
    assert torch.allclose(flat[:, : 37 - 8 + 1], flat_changed[:, : 37 - 8 + 1], atol=1e-5)
    assert not torch.allclose(flat[:, 38 - 8], flat_changed[:, 38 - 8])


def test_loss_masks_padding_and_is_near_uniform_at_init():
    lm = AudioLM(_config([4, 4]))
    tokens = torch.randint(0, 256, (2, 128))
    mask = torch.ones(2, 128, dtype=torch.bool)
    mask[1, 64:] = False
    loss, count = lm.loss(tokens, mask)
    assert int(count) == 112 + 48 and abs(loss.item() - torch.log(torch.tensor(256.0))) < 0.5


@pytest.mark.parametrize(("bidirectional", "pooling"), [(None, "last"), ("add", "mean"), ("concat", "mean")])
def test_classifier_from_pretrained_encoder(tmp_path, bidirectional, pooling):
    lm = AudioLM(_config([4, 4]))
    lm.save_pretrained(tmp_path / "pre")
    clf = AudioClassifier.from_pretrained_encoder(tmp_path / "pre", 10, pooling=pooling, bidirectional=bidirectional)
    assert clf(torch.randint(0, 256, (3, 64))).shape == (3, 10)
    for name, value in lm.encoder.backbone.state_dict().items():
        assert torch.equal(clf.backbone.state_dict()[name], value)
        if bidirectional:
            assert torch.equal(clf.sequence_model.reverse_backbone.state_dict()[name], value)
    assert torch.equal(clf.front_end.embedding.weight, lm.encoder.front_end.embedding.weight)
    reloaded = AudioLM.from_pretrained(tmp_path / "pre")
    tokens = torch.randint(0, 256, (1, 32))
    assert torch.allclose(reloaded(tokens), lm(tokens))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        AudioLM.from_pretrained(tmp_path)


def test_embedding_starts_with_amplitude_channels():
    front = AudioFrontEnd(16, embed_dim=8, strides=(4,))
    weight = front.embedding.weight
    assert torch.allclose(weight[:, 0], MuLawTokenizer().decode(torch.arange(256)))
    assert weight[0, 1] == -1 and weight[255, 1] == 1
