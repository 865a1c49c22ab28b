"""PinCLIP model library: tower shapes, the paper's base widths, freezing, activation checkpointing,
missing text, the offline MiniLM tower and the multilingual tiny tokenizer."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from pinclip.models import (PinCLIPConfig, TextTowerConfig, create_model, list_configs, load_config, load_tokenizer,
                            tokenize, train_tokenizer)
from pinclip.models.text import TextTower

MULTILINGUAL = [
    "Handmade vintage lamp ideas for a cozy bedroom",
    "the best minimalist kitchen: budget picks",
    "Ideas de cocina minimalista hecho a mano, guárdala para después",
    "Une idée écologique autour de la cuisine : à garder pour plus tard",
    "Eine kinderfreundliche Idee rund um Gärten. Für später merken.",
    "Un'idea di lusso su gioielli fatti a mano, salvala per dopo",
    "Uma ideia econômica de decoração feita à mão para crianças",
    "手作りの ヴィンテージ ランプ 北欧 インテリア",
    "简约 厨房 装饰 灵感",
    "#aesthetic ✨ link in bio lol",
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny").eval()


def batch(n=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 64, 64, generator=g)
    input_ids = torch.randint(5, 500, (n, length), generator=g)
    attention_mask = torch.ones(n, length, dtype=torch.long)
    attention_mask[1, 4:] = 0
    return images, input_ids, attention_mask


def test_tiny_forward_shapes_and_unit_norms(tiny):
    images, input_ids, attention_mask = batch()
    with torch.no_grad():
        assert tiny.image(images).shape == (3, 4, 128)  # 8x8 grid funneled twice: 8x8 -> 4x4 -> 2x2
        assert tiny.image_tokens(images).shape == (3, 4, tiny.cfg.width)
        embeddings = [tiny.encode_image(images), tiny.encode_text(input_ids, attention_mask),
                      tiny.encode_fusion(images, input_ids, attention_mask), tiny.encode_fusion(images)]
        out = tiny(("image", "text", "fusion"), images, input_ids, attention_mask)
    for emb in embeddings:
        assert emb.shape == (3, 256)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert set(out) == {"image", "text", "fusion"}
    for kind, per_prefix in out.items():
        assert sorted(per_prefix) == [64, 128, 256]
        for k, emb in per_prefix.items():
            assert emb.shape == (3, k)
            torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # forward shares towers but gives the same vectors as the encode_* methods
    torch.testing.assert_close(out["fusion"][256], tiny.matryoshka(embeddings[2])[256])
    torch.testing.assert_close(out["text"][64], tiny.matryoshka(embeddings[1])[64])


def test_matryoshka_heads_start_as_renormalised_prefixes(tiny):
    emb = F.normalize(torch.randn(4, 256), dim=-1)
    for k, vec in tiny.matryoshka(emb).items():
        torch.testing.assert_close(vec, F.normalize(emb[:, :k], dim=-1))


def test_text_padding_is_masked(tiny):
    images, input_ids, attention_mask = batch()
    padded_ids = torch.cat([input_ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([attention_mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_text(input_ids, attention_mask),
                                   tiny.encode_text(padded_ids, padded_mask))
        torch.testing.assert_close(tiny.encode_fusion(images, input_ids, attention_mask),
                                   tiny.encode_fusion(images, padded_ids, padded_mask))


def test_pin_without_text_gets_the_image_only_fusion_embedding(tiny):
    images, input_ids, attention_mask = batch()
    attention_mask[2] = 0  # pin 2 has no text
    with torch.no_grad():
        mixed = tiny.encode_fusion(images, input_ids, attention_mask)
        image_only = tiny.encode_fusion(images)
        text = tiny.encode_text(input_ids, attention_mask)
    assert torch.isfinite(mixed).all() and torch.isfinite(text).all()
    torch.testing.assert_close(mixed[2], image_only[2])
    assert (mixed[0] - image_only[0]).abs().max() > 1e-3  # text does change a pin that has it


def test_base_has_the_papers_hybrid_vit_b_shape():
    torch.manual_seed(0)
    model = create_model("base").eval()
    image = model.image
    blocks = image.blocks
    assert (image.width, len(image.stages), len(blocks)) == (768, 3, 18)
    assert all(len(stage) == 6 for stage in image.stages)
    assert {b.mlp.fc1.out_features for b in blocks} == {3072}
    assert {b.attn.num_heads for b in blocks} == {12}
    n_image = sum(p.numel() for p in image.parameters())
    assert 120e6 < n_image < 140e6  # "Hybrid-ViT-B (130M)"
    assert model.text.width == 384 and len(model.fusion.blocks) == 2
    images = torch.randn(1, 3, 32, 32)  # a small input; the position embedding is resampled to the 2x2 grid
    input_ids, attention_mask = tokenize(load_tokenizer(model.cfg.text), ["a cozy reading nook"])
    with torch.no_grad():
        out = model(("image", "text", "fusion"), images, input_ids, attention_mask)
    assert {kind: v[256].shape for kind, v in out.items()} == {k: (1, 256) for k in ("image", "text", "fusion")}


def test_layer_scale_starts_the_tiny_trunk_near_identity():
    tiny_blocks = create_model("tiny").image.blocks
    assert all(torch.allclose(b.ls1.gamma, torch.full_like(b.ls1.gamma, 1e-4)) for b in tiny_blocks)
    # the base (paper-shape) tower keeps plain ViT blocks
    assert isinstance(create_model("base").image.blocks[0].ls1, torch.nn.Identity)


def test_freezing_leaves_only_the_last_n_image_blocks_trainable():
    model = create_model("tiny")
    model.freeze_image_tower(2)
    blocks = model.image.blocks
    trainable = {id(p) for p in model.image.parameters() if p.requires_grad}
    expected = {id(p) for m in (*blocks[-2:], model.image.norm) for p in m.parameters()}
    assert trainable == expected
    assert all(p.requires_grad for name, p in model.named_parameters() if not name.startswith("image."))

    images, input_ids, attention_mask = batch()
    out = model(("image", "fusion"), images, input_ids, attention_mask)
    (out["image"][256].sum() + out["fusion"][64].sum()).backward()
    assert all(p.grad is None for p in model.image.stem.parameters())
    assert all(p.grad is None for p in blocks[0].parameters())
    assert all(p.grad is not None for p in blocks[-1].parameters())

    model.freeze_image_tower(len(blocks))  # every block unlocked again, the stem stays locked
    assert all(p.requires_grad for b in blocks for p in b.parameters())
    assert not any(p.requires_grad for p in model.image.stem.parameters())
    with pytest.raises(ValueError, match="trainable_last_n"):
        model.freeze_image_tower(len(blocks) + 1)


def test_activation_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    plain = create_model("tiny").train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    calls = {"image": 0, "text": 0, "fusion": 0}
    watched = {"image": checkpointed.image.blocks[0], "fusion": checkpointed.fusion.blocks[0],
               "text": checkpointed.text.encoder.encoder.layer[0].intermediate}
    for name, module in watched.items():
        # pre-hooks: the non-reentrant recompute stops early, before a block's forward hooks would run
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))

    images, input_ids, attention_mask = batch()
    results = []
    for model in (plain, checkpointed):
        out = model(("image", "text", "fusion"), images, input_ids, attention_mask)
        loss = sum((emb[k] * torch.arange(k)).sum() for emb in out.values() for k in emb)
        loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))

    assert calls == {"image": 2, "text": 2, "fusion": 2}  # each block ran again in backward
    (out_a, grads_a), (out_b, grads_b) = results
    for kind in out_a:
        torch.testing.assert_close(out_a[kind][256], out_b[kind][256], rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_minilm_tower_loads_offline_and_embeds_by_meaning():
    cfg = TextTowerConfig(pretrained="minilm")
    tower, tokenizer = TextTower(cfg).eval(), load_tokenizer(cfg)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    sentences = ["A cat is sleeping on the sofa.", "A kitten naps on the couch.",
                 "Quarterly revenue rose by ten percent."]
    input_ids, attention_mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        tokens = tower(input_ids, attention_mask)
    assert tokens.shape == (3, input_ids.shape[1], 384)
    mask = attention_mask[..., None].float()
    emb = F.normalize((tokens * mask).sum(1) / mask.sum(1), dim=-1)  # MiniLM's own mean pooling
    similar, dissimilar = emb[0] @ emb[1], emb[0] @ emb[2]
    assert similar > dissimilar + 0.3


def test_tiny_tokenizer_trains_on_a_multilingual_corpus(tmp_path):
    path = tmp_path / "tokenizer.json"
    train_tokenizer(MULTILINGUAL * 3, vocab_size=400, path=path)
    cfg = TextTowerConfig(tokenizer=str(path), vocab_size=400, max_length=16)
    tokenizer = load_tokenizer(cfg)
    assert len(tokenizer) <= 400

    texts = ["Une idée écologique", "简约 厨房", "Gärten für später", None]
    input_ids, attention_mask = tokenize(tokenizer, texts)
    assert input_ids.shape[1] <= 16 and attention_mask[3].sum() == 0 and attention_mask[:3].all(dim=1).any()
    unk = tokenizer.unk_token_id
    for text in texts[:3]:
        ids = tokenizer(text)["input_ids"]
        assert unk not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")

    torch.manual_seed(0)
    model = create_model("tiny", text={"tokenizer": str(path), "vocab_size": 400, "max_length": 16})
    with torch.no_grad():
        assert model.encode_text(input_ids, attention_mask).shape == (4, 256)
    with pytest.raises(ValueError, match="vocab_size"):
        load_tokenizer(TextTowerConfig(tokenizer=str(path), vocab_size=10))


def test_configs_round_trip_and_overrides():
    assert {"tiny", "base"} <= set(list_configs())
    cfg = load_config("tiny")
    assert PinCLIPConfig.from_dict(cfg.to_dict()) == cfg
    model = create_model(cfg, image={"depth": 1}, embed_dim=128, matryoshka_dims=(64, 128))
    assert len(model.image.blocks) == 3 and model.cfg.text == cfg.text
    with pytest.raises(ValueError, match="unknown field 'widht'"):
        create_model("tiny", image={"widht": 64})
    with pytest.raises(ValueError, match="matryoshka_dims"):
        create_model("tiny", matryoshka_dims=(64, 128))
