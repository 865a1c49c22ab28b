"""PinCLIP losses against a direct double loop over eq. 7, chunked (2 gloo ranks) against unchunked,
and Matryoshka terms that see only their own prefix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from pinclip.losses import MATRYOSHKA_WEIGHTS, AnnotationLoss, PinCLIPLoss, SigmoidLoss, chunked_sigmoid_loss, sigmoid_loss

# Kept free of pinclip.models at import time: the 2-rank test re-imports this module in each child process.

DIMS = tuple(MATRYOSHKA_WEIGHTS)


def eq7_reference(x, y, logit_scale, logit_bias):
    """(1/n) sum_ij log(1 + exp(z_ij (-t x_i.y_j - b))), one pair at a time (the paper's c is -b)."""
    t = logit_scale.exp()
    n = x.shape[0]
    total = x.new_zeros(())
    for i in range(n):
        for j in range(y.shape[0]):
            z = 1.0 if i == j else -1.0
            total = total + torch.log1p(torch.exp(z * (-t * torch.dot(x[i], y[j]) - logit_bias)))
    return total / n


def unit(n, d, generator):
    return F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=-1)


def prefixes(emb):
    return {k: F.normalize(emb[:, :k], dim=-1) for k in DIMS}


def test_sigmoid_loss_matches_eq7_in_value_and_gradients():
    g = torch.Generator().manual_seed(0)
    x, y = unit(6, 8, g).requires_grad_(), unit(6, 8, g).requires_grad_()
    scale = torch.tensor(math.log(4.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)

    loss = sigmoid_loss(x, y, scale, bias)
    grads = torch.autograd.grad(loss, (x, y, scale, bias))
    ref = eq7_reference(x, y, scale, bias)
    ref_grads = torch.autograd.grad(ref, (x, y, scale, bias))

    torch.testing.assert_close(loss, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def masked_reference(x, y, logit_scale, logit_bias, present):
    """Eq. 7 over the cells whose text is present, divided by the batch size: pin j without text has no
    pair and its text is nobody's negative, but its image x_j is still a negative of every present text."""
    t = logit_scale.exp()
    total = x.new_zeros(())
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            if present[j]:
                z = 1.0 if i == j else -1.0
                total = total + torch.log1p(torch.exp(z * (-t * torch.dot(x[i], y[j]) - logit_bias)))
    return total / x.shape[0]


def test_masked_pairs_are_dropped_and_their_images_stay_negatives():
    g = torch.Generator().manual_seed(3)
    x, y = unit(6, 8, g).requires_grad_(), unit(6, 8, g).requires_grad_()
    scale = torch.tensor(math.log(4.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    present = torch.tensor([True, False, True, True, False, True])

    loss = sigmoid_loss(x, y, scale, bias, mask=present)
    ref = masked_reference(x, y, scale, bias, present)
    torch.testing.assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(loss, (x, y, scale, bias)), torch.autograd.grad(ref, (x, y, scale, bias))):
        torch.testing.assert_close(got, want)
    # a missing text's embedding changes nothing; the image of its pin does (it is a negative)
    y_other = y.detach().clone()
    y_other[1] = unit(1, 8, g)[0]
    torch.testing.assert_close(sigmoid_loss(x, y_other, scale, bias, mask=present), loss)
    x_other = x.detach().clone()
    x_other[1] = unit(1, 8, g)[0]
    assert abs(sigmoid_loss(x_other, y, scale, bias, mask=present) - loss) > 1e-4
    # all present: exactly the unmasked loss
    assert torch.equal(sigmoid_loss(x, y, scale, bias, mask=torch.ones(6, dtype=torch.bool)),
                       sigmoid_loss(x, y, scale, bias))


def test_sigmoid_loss_refuses_fewer_or_more_texts_than_images():
    g = torch.Generator().manual_seed(4)
    x, scale, bias = unit(5, 8, g), torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for n_texts in (4, 6):
        with pytest.raises(ValueError, match="expected one text per image"):
            sigmoid_loss(x, unit(n_texts, 8, g), scale, bias)
        with pytest.raises(ValueError, match="expected one text per image"):
            SigmoidLoss().double()(x, unit(n_texts, 8, g))
    with pytest.raises(ValueError, match="expected one text per image"):
        PinCLIPLoss().double()(prefixes(torch.randn(5, 256, generator=g, dtype=torch.float64)),
                               prefixes(torch.randn(4, 256, generator=g, dtype=torch.float64)))
    with pytest.raises(ValueError, match="expected a mask of 5 texts"):
        sigmoid_loss(x, x, scale, bias, mask=torch.ones(4, dtype=torch.bool))


def test_sigmoid_loss_starts_at_t10_b_minus10():
    loss = SigmoidLoss()
    assert loss.logit_scale.exp().item() == pytest.approx(10.0)
    assert loss.logit_bias.item() == -10.0
    # At init an identical pair scores t - 10 = 0 (loss log 2) and a near-orthogonal one about -10 (~0).
    g = torch.Generator().manual_seed(1)
    x = unit(4, 64, g).float()
    assert loss(x, x).item() == pytest.approx(math.log(2.0), abs=0.01)


def test_pinclip_loss_terms_match_eq7_with_their_own_temperature_and_bias():
    g = torch.Generator().manual_seed(2)
    image, desc, kw, query, pos = (prefixes(unit(5, 256, g)) for _ in range(5))
    loss_fn = PinCLIPLoss().double()
    with torch.no_grad():  # distinct (t, b) per (term, prefix), so a shared or swapped one would show
        for i, param in enumerate(loss_fn.parameters()):
            param.add_(0.05 * (i + 1))

    total, parts = loss_fn(image, desc, kw, query, pos)

    pairs = {"image_descriptive": (image, desc), "image_keyword": (image, kw), "pin_pin": (query, pos)}
    assert set(parts) == {f"{term}/{k}" for term in pairs for k in DIMS}
    expected_total = 0.0
    for term, (x, y) in pairs.items():
        for k in DIMS:
            own = loss_fn.terms[term].prefix_losses[str(k)]
            ref = eq7_reference(x[k], y[k], own.logit_scale, own.logit_bias)
            torch.testing.assert_close(parts[f"{term}/{k}"], ref)
            expected_total += MATRYOSHKA_WEIGHTS[k] * ref
    torch.testing.assert_close(total, expected_total)


def test_pinclip_loss_optional_terms():
    g = torch.Generator().manual_seed(3)
    image, desc = prefixes(unit(4, 256, g)), prefixes(unit(4, 256, g))
    loss_fn = PinCLIPLoss().double()
    total, parts = loss_fn(image, desc)
    assert set(parts) == {f"image_descriptive/{k}" for k in DIMS}
    torch.testing.assert_close(total, sum(MATRYOSHKA_WEIGHTS[k] * parts[f"image_descriptive/{k}"] for k in DIMS))
    with pytest.raises(ValueError, match="query and positive"):
        loss_fn(image, desc, query=image)


def test_corpus_negatives_are_negatives_of_every_query():
    g = torch.Generator().manual_seed(7)
    image, desc, query, pos = (prefixes(unit(4, 256, g)) for _ in range(4))
    neg = prefixes(unit(3, 256, g))
    loss_fn = PinCLIPLoss().double()
    with torch.no_grad():
        for param in loss_fn.parameters():
            param.mul_(0.3)   # t and b where the negatives' scores matter

    _, parts = loss_fn(image, desc, query=query, positive=pos, negative=neg)
    _, without = loss_fn(image, desc, query=query, positive=pos)
    for k in DIMS:
        own = loss_fn.terms["pin_pin"].prefix_losses[str(k)]
        ref = eq7_reference(query[k], torch.cat([pos[k], neg[k]]), own.logit_scale, own.logit_bias)
        torch.testing.assert_close(parts[f"pin_pin/{k}"], ref)
        assert parts[f"pin_pin/{k}"] > without[f"pin_pin/{k}"]
        torch.testing.assert_close(parts[f"image_descriptive/{k}"], without[f"image_descriptive/{k}"])
    with pytest.raises(ValueError, match="negatives need"):
        loss_fn(image, desc, negative=neg)


def test_annotation_loss_is_bce_summed_over_labels_from_the_prior():
    torch.manual_seed(0)
    prior = torch.tensor([0.2, 0.05, 0.5])
    loss = AnnotationLoss(4, prior)
    emb = F.normalize(torch.randn(5, 4), dim=-1).requires_grad_()
    targets = torch.tensor([[1.0, 0.0, 0.7], [0.0, 0.0, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.0, 0.5]])
    # at init the head predicts each label's prior for every pin
    torch.testing.assert_close(torch.sigmoid(loss.head(emb * 2.0)), prior.expand(5, 3))
    with torch.no_grad():
        loss.head.weight.normal_()
    p = torch.sigmoid(emb.detach() * 2.0 @ loss.head.weight.T + loss.head.bias)      # sqrt(dim) = 2
    expect = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum() / 5
    value = loss(emb, targets)
    torch.testing.assert_close(value, expect.detach())
    value.backward()
    assert emb.grad.abs().sum() > 0


def test_each_matryoshka_term_uses_only_its_renormalised_prefix():
    from pinclip.models.factory import MatryoshkaHeads  # see the note at the top of this file

    torch.manual_seed(4)
    heads = MatryoshkaHeads(DIMS).double()
    with torch.no_grad():
        for head in heads.heads.values():
            head.weight.add_(0.1 * torch.randn_like(head.weight))
    loss_fn = PinCLIPLoss().double()
    g = torch.Generator().manual_seed(4)
    raw_image = torch.randn(6, 256, generator=g, dtype=torch.float64, requires_grad=True)
    raw_text = torch.randn(6, 256, generator=g, dtype=torch.float64, requires_grad=True)

    def parts(image, text):
        # eq. 6 normalises over all 256 dims before the heads; the k-term must not depend on dims > k anyway
        return loss_fn(heads(F.normalize(image, dim=-1)), heads(F.normalize(text, dim=-1)))[1]

    base = parts(raw_image, raw_text)
    noise = torch.zeros_like(raw_image)
    noise[:, 64:] = 3.0 * torch.randn(6, 192, generator=g, dtype=torch.float64)
    perturbed = parts(raw_image + noise, raw_text - noise)
    torch.testing.assert_close(perturbed["image_descriptive/64"], base["image_descriptive/64"])
    assert abs(perturbed["image_descriptive/256"] - base["image_descriptive/256"]) > 1e-3

    grad_64 = torch.autograd.grad(base["image_descriptive/64"], (raw_image, raw_text), retain_graph=True)
    for grad in grad_64:
        assert grad[:, :64].abs().max() > 1e-4
        torch.testing.assert_close(grad[:, 64:], torch.zeros_like(grad[:, 64:]))
    grad_128 = torch.autograd.grad(base["image_descriptive/128"], raw_image, retain_graph=True)[0]
    torch.testing.assert_close(grad_128[:, 128:], torch.zeros_like(grad_128[:, 128:]))
    grad_256 = torch.autograd.grad(base["image_descriptive/256"], raw_image)[0]
    assert grad_256[:, 128:].abs().max() > 1e-4


WORLD, LOCAL, NEG, IN_DIM = 2, 3, 2, 10
MASK = torch.tensor([True, False, True, True, True, False])   # texts present, across both ranks


def global_batch():
    """The same inputs on every process: the concatenation of all ranks' local batches."""
    g = torch.Generator().manual_seed(5)
    features = [unit(WORLD * LOCAL, 8, g) for _ in range(2)]
    inputs = [torch.randn(WORLD * LOCAL, IN_DIM, generator=g, dtype=torch.float64) for _ in range(5)]
    negatives = torch.randn(WORLD * NEG, IN_DIM, generator=g, dtype=torch.float64)
    return features, inputs + [negatives]


class Towers(nn.Module):
    """A stand-in model: per-prefix embeddings from linear maps, image/text/fusion sharing nothing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.image, self.text, self.fusion = (nn.Linear(IN_DIM, 256).double() for _ in range(3))

    def forward(self, image, desc, kw, query, pos, neg):
        return tuple(prefixes(tower(x)) for tower, x in zip((self.image, self.text, self.text, *[self.fusion] * 3),
                                                            (image, desc, kw, query, pos, neg)))


def rank_inputs(inputs, rank):
    """A rank's share of the global batch: its pairs and its corpus negatives."""
    pairs = slice(rank * LOCAL, (rank + 1) * LOCAL)
    return [inp[pairs] for inp in inputs[:-1]] + [inputs[-1][rank * NEG:(rank + 1) * NEG]]


def chunked_worker(rank, init_file, outs):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = slice(rank * LOCAL, (rank + 1) * LOCAL)
        (x, y), inputs = global_batch()
        x, y = x[local].clone().requires_grad_(), y[local].clone().requires_grad_()
        scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
        loss = chunked_sigmoid_loss(x, y, scale, bias)
        loss.backward()
        masked = chunked_sigmoid_loss(x.detach(), y.detach(), scale.detach(), bias.detach(), mask=MASK[local])

        towers, loss_fn = Towers(), PinCLIPLoss().double()
        total, parts = loss_fn(*towers(*rank_inputs(inputs, rank)))
        total.backward()
        for param in [*towers.parameters(), *loss_fn.parameters()]:  # what DDP does to replicated parameters
            dist.all_reduce(param.grad)
            param.grad /= WORLD
        torch.save({
            "loss": loss.detach(), "masked": masked, "x": x.grad, "y": y.grad, "scale": scale.grad, "bias": bias.grad,
            "total": total.detach(), "parts": {k: v.detach() for k, v in parts.items()},
            "model_grads": [p.grad for p in towers.parameters()],
            "loss_grads": [p.grad for p in loss_fn.parameters()],
        }, outs[rank])
    finally:
        dist.destroy_process_group()


def test_chunked_loss_on_two_gloo_ranks_equals_unchunked(tmp_path):
    outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    mp.spawn(chunked_worker, args=(tmp_path / "init", outs), nprocs=WORLD, join=True)
    ranks = [torch.load(out) for out in outs]

    (x, y), inputs = global_batch()
    x.requires_grad_(), y.requires_grad_()
    scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    ref = sigmoid_loss(x, y, scale, bias)
    ref.backward()

    # Each rank normalises by its local batch: the mean over ranks is the global loss, the parameter
    # gradients average to the global ones, and each rank's features get WORLD x their global gradient
    # (which DDP's averaging of the model's gradients divides back out, checked below).
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, ref.detach())
    torch.testing.assert_close(sum(r["masked"] for r in ranks) / WORLD,
                               sigmoid_loss(x.detach(), y.detach(), scale.detach(), bias.detach(), mask=MASK))
    torch.testing.assert_close(sum(r["scale"] for r in ranks) / WORLD, scale.grad)
    torch.testing.assert_close(sum(r["bias"] for r in ranks) / WORLD, bias.grad)
    for rank, r in enumerate(ranks):
        local = slice(rank * LOCAL, (rank + 1) * LOCAL)
        torch.testing.assert_close(r["x"], WORLD * x.grad[local])
        torch.testing.assert_close(r["y"], WORLD * y.grad[local])

    towers, loss_fn = Towers(), PinCLIPLoss().double()
    total, parts = loss_fn(*towers(*inputs))
    total.backward()
    torch.testing.assert_close(sum(r["total"] for r in ranks) / WORLD, total.detach())
    for name, value in parts.items():
        torch.testing.assert_close(sum(r["parts"][name] for r in ranks) / WORLD, value.detach())
    for rank_result in ranks:
        for got, param in zip(rank_result["model_grads"], towers.parameters()):
            torch.testing.assert_close(got, param.grad)
        for got, param in zip(rank_result["loss_grads"], loss_fn.parameters()):
            torch.testing.assert_close(got, param.grad)
