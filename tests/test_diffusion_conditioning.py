"""Conditioners: null class and empty caption for guidance, the jointly trained text encoder, and a
frozen OpenCLIP text tower loaded from a local safetensors file (a tiny architecture, random weights)."""

import subprocess
import sys

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from ldmcli import openclip
from ldmcli.diffusion.conditioning import ConditionerConfig, build_conditioner, context_dim
from ldmcli.errors import UserError


def test_class_conditioner_null_row_and_dropout():
    cond = build_conditioner(ConditionerConfig(kind="class", num_classes=3), time_embed_dim=16)
    labels = torch.tensor([0, 1, 2, 2])
    dropped = cond.drop(labels, torch.tensor([False, True, False, True]))
    assert dropped.tolist() == [0, 3, 2, 3] and cond.null(2).tolist() == [3, 3]
    out = cond(dropped)
    assert out["y"].shape == (4, 16) and torch.equal(out["y"][1], out["y"][3])
    ctx = build_conditioner(ConditionerConfig(kind="class", num_classes=3, class_target="context", width=8), 16)(labels)
    assert ctx["context"].shape == (4, 1, 8)


def test_text_encoder_tokens_depend_on_the_caption():
    cfg = ConditionerConfig(kind="text", width=16, layers=1, heads=2, head_dim=8, max_length=12)
    cond = build_conditioner(cfg, 64)
    out = cond(["a red circle", "a blue square", ""])["context"]
    assert out.shape == (3, 12, 16) and context_dim(cfg) == 16
    assert not torch.allclose(out[0], out[1])
    assert cond.drop(["a", "b"], torch.tensor([True, False])) == ["", "b"] and cond.null(1) == [""]


def test_frozen_clip_gives_penultimate_layer_tokens(tiny_clip):
    model, weights = tiny_clip
    cfg = ConditionerConfig(kind="clip", clip_arch="TinyCLIP-test", clip_weights=str(weights))
    cond = build_conditioner(cfg, 64)
    assert context_dim(cfg) == 32
    assert not any(p.requires_grad for p in cond.parameters()) and not cond.train().training
    text = ["a photo of a cat", ""]
    tokens = open_clip.get_tokenizer("TinyCLIP-test")(text)
    with torch.no_grad():
        x = model.token_embedding(tokens) + model.positional_embedding
        for block in model.transformer.resblocks[:-1]:
            x = block(x, attn_mask=model.attn_mask)
        expected = model.ln_final(x)
    assert torch.allclose(cond(text)["context"], expected, atol=1e-5)
    last = build_conditioner(ConditionerConfig(kind="clip", clip_arch="TinyCLIP-test", clip_weights=str(weights), clip_layer="last"), 64)
    assert not torch.allclose(last(text)["context"], expected, atol=1e-3)


def test_frozen_clip_missing_or_wrong_weights_are_user_errors(tiny_clip, tmp_path):
    _, weights = tiny_clip
    with pytest.raises(UserError, match="OpenCLIP weights not found: '.*nope.safetensors'"):
        build_conditioner(ConditionerConfig(kind="clip", clip_arch="TinyCLIP-test", clip_weights=str(tmp_path / "nope.safetensors")), 8)
    bad = tmp_path / "bad.safetensors"
    save_file({"token_embedding.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(UserError, match="lacks"):
        build_conditioner(ConditionerConfig(kind="clip", clip_arch="TinyCLIP-test", clip_weights=str(bad)), 8)
    with pytest.raises(UserError, match="unknown open_clip architecture"):
        build_conditioner(ConditionerConfig(kind="clip", clip_arch="ViT-Q-99", clip_weights=str(weights)), 8)


def test_pooled_text_gives_the_end_token_projected_to_the_time_embedding():
    cfg = ConditionerConfig(kind="text", width=16, layers=1, heads=2, head_dim=8, max_length=12, pooled=True)
    torch.manual_seed(0)
    cond = build_conditioner(cfg, 40)
    out = cond(["a red circle", "a blue square", ""])
    assert out["context"].shape == (3, 12, 16) and out["y"].shape == (3, 40)
    ids = cond._tokenize(["a red circle"], torch.device("cpu"))[0]
    end = int(ids.argmax())
    assert ids[end] == cond.tokenizer.eot_token_id
    assert torch.allclose(out["y"][0], cond.pool_proj(out["context"][0, end]))
    assert not torch.allclose(out["y"][0], out["y"][1])
    with pytest.raises(UserError, match="pooled"):
        build_conditioner(ConditionerConfig(kind="class", pooled=True), 8)


@pytest.mark.parametrize("arch", ["ViT-B-32", "RN50"])
def test_text_encoder_tokenizer_matches_open_clip(arch):
    texts = ["a large red circle in the center", "", "Café «naïve» 3 purple TRIANGLES!!", "word " * 40]
    ours, ref = openclip.tokenizer(arch), open_clip.get_tokenizer(arch)
    assert openclip._bpe_source(arch) is not None and ours.vocab_size == ref.vocab_size
    for length in (8, 24, 77):
        assert torch.equal(ours(texts, context_length=length), ref(texts, context_length=length))


@pytest.mark.parametrize("arch", ["ViT-B-16-SigLIP-256", "ViT-H-14-CLIPA", "TinyCLIP-test", "hf-hub:org/model", "../x"])
def test_other_tokenizers_go_through_open_clip(arch):
    assert openclip._bpe_source(arch) is None


def test_text_encoder_builds_without_importing_open_clip():
    """open_clip's package import (torchvision, torch._dynamo) is what the tokenizer-only path avoids."""
    code = ("import sys; from ldmcli.diffusion.conditioning import ConditionerConfig, build_conditioner; "
            "c = build_conditioner(ConditionerConfig(kind='text', width=16, layers=1, heads=2, head_dim=8), 64); "
            "c(['a red circle']); print(sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
