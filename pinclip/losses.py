"""PinCLIP losses (paper §3.1.3, eqs. 7–10, and §3.4, eq. 12), all in one file as in open_clip.

Every term is the SigLIP pairwise sigmoid loss over a batch of n aligned pairs (x_i, y_i), L2-normalised:

    L = (1/n) sum_ij log(1 + exp(-z_ij (t x_i.y_j + b))),   z_ij = +1 if i == j else -1,   t = exp(t')

with a learnable log-temperature t' (init log 10, so t = 10: the paper's "t = log 10" is t') and bias b
(init -10). This is eq. 7 with the paper's c written as -b: with c = -10 as printed, eq. 7 would start
every negative pair at a loss of about 10 and every positive near 0, the reverse of the SigLIP
initialisation (t = 10, b = -10) that the paper adopts. Eq. 8's leading minus sign is dropped for the same
reason (log(1 + e^.) is already a loss).

Normalisation. Image–text (eq. 8) divides by the batch size. Pin-to-Pin (eq. 10) is printed as a bare sum;
it is divided by its number of query pins too, so both terms keep their scale as batches grow.

Chunked across ranks (``chunked_sigmoid_loss``). Each rank scores its own b x b block (positives on the
diagonal), then passes the y features around the ring, scoring b x b negative-only blocks against every
other rank's y, so the global (Db) x (Db) matrix never exists. Written by hand because torch.distributed has
no differentiable neighbour exchange: ``_NeighbourExchange`` sends forward with isend/irecv and sends the
gradient back to the rank that owns the features. Each rank's value is normalised by its *local* batch size
(as in open_clip), so the mean over ranks equals the single-process loss on the concatenated batch and,
under DDP's gradient averaging, every parameter gradient equals the single-process one.

Missing texts. A pin may lack one kind of text; its text row is then masked out (``mask``): that pair is
dropped and the empty text is nobody's negative, while the pin's image still serves as a negative of every
other pin's text. The loss stays a sum over the remaining (image, text) cells divided by the batch size, so
a present pair weighs the same whatever else is missing, every rank's batch keeps its size, and an all-True
mask gives exactly the unmasked loss.

Corpus negatives (Pin-to-Pin only, optional). In-batch negatives are other queries' positives: pins the walks
reach, as saved as the positives themselves, so nothing every saved pin shares (how appealing it looks) tells a
neighbor from a non-neighbor. Pins drawn uniformly from the whole corpus, saved or not, are added as negatives
of every query, as in mixed negative sampling (Yang et al., WWW 2020): they are extra columns of y, past the
diagonal, and travel the ring with the positives.

Annotation loss (optional, not in the paper; ``AnnotationLoss``). The contrastive terms only keep what tells a
pin's pairs apart, and what every engaging pin shares (how good its photo looks) tells nothing apart, so it
fades from the fusion embedding even though the pretrained image tower reads it. The towers' pretraining
objective — multi-label classification of a pin's annotations — is kept as an auxiliary term on the
published 64-d fusion prefix: a linear head on it, binary cross-entropy against the annotation scores,
summed over labels and averaged over pins.

Matryoshka (eq. 12). Every contrastive term is scored once per prefix k on the head output
``model.matryoshka(emb)[k]`` and weighted by c_k; the k = 256 term *is* the full-width loss of eq. 11, so
nothing is counted twice. Each (term, prefix) has its own temperature and bias: a k-dim prefix has a
different spread of cosine similarities than the full vector, and sharing one (t, b) would couple the
calibration of the 64-d and 256-d embeddings. That is 2 scalars per (term, prefix), 18 in all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MATRYOSHKA_WEIGHTS = {64: 0.1, 128: 0.1, 256: 1.0}
TERMS = ("image_descriptive", "image_keyword", "pin_pin")


def _block_loss(x: torch.Tensor, y: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                positives_on_diagonal: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    logits = logit_scale.exp() * x @ y.T + logit_bias
    labels = -torch.ones_like(logits)
    if positives_on_diagonal:
        labels.fill_diagonal_(1.0)
    cells = -F.logsigmoid(labels * logits)
    if mask is not None:
        cells = cells * mask
    return cells.sum() / x.shape[0]


def _columns(x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor | None,
             mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The columns every x is scored against: ``y`` then the ``negatives``, and their 0/1 weights (or None)."""
    if x.ndim != 2 or y.shape != x.shape:
        raise ValueError(f"pinclip: sigmoid loss: expected one text per image, both (n, d); found images "
                         f"{tuple(x.shape)} and texts {tuple(y.shape)}")
    if negatives is not None and (negatives.ndim != 2 or negatives.shape[1] != x.shape[1]):
        raise ValueError(f"pinclip: sigmoid loss: expected negatives (m, {x.shape[1]}), found {tuple(negatives.shape)}")
    if mask is not None:
        if mask.shape != (len(y),):
            raise ValueError(f"pinclip: sigmoid loss: expected a mask of {len(y)} texts, found {tuple(mask.shape)}")
        mask = mask.to(x.dtype)
        if negatives is not None:
            mask = torch.cat([mask, mask.new_ones(len(negatives))])
    return (y if negatives is None else torch.cat([y, negatives])), mask


def sigmoid_loss(x: torch.Tensor, y: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                 negatives: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid loss of aligned pairs (x_i, y_i) against all in-batch negatives, divided by the batch size.

    ``negatives`` (m, d) are negatives of every x; ``mask`` (n,) bool drops y_i where False (see the module
    docstring). A ``y`` of another shape than ``x`` is a ValueError."""
    y, mask = _columns(x, y, negatives, mask)
    return _block_loss(x, y, logit_scale, logit_bias, True, mask)


def _exchange(tensor: torch.Tensor, send_to: int, recv_from: int) -> torch.Tensor:
    received = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), send_to), dist.P2POp(dist.irecv, received, recv_from)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _NeighbourExchange(torch.autograd.Function):
    """Send a tensor to ``send_to`` and return the one from ``recv_from``; the gradient travels back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, send_to: int, recv_from: int) -> torch.Tensor:
        ctx.send_to, ctx.recv_from = send_to, recv_from
        return _exchange(tensor, send_to, recv_from)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.recv_from, ctx.send_to), None, None


def chunked_sigmoid_loss(x: torch.Tensor, y: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                         negatives: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's share of the sigmoid loss over all ranks' pairs, ring by ring (default process group).

    Every rank must call it with the same local batch size and the same optional arguments, in the same
    order as the other ranks; a rank's ``negatives`` and ``mask`` travel the ring with its ``y``.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    right, left = (rank + 1) % world, (rank - 1) % world
    y, mask = _columns(x, y, negatives, mask)
    loss = _block_loss(x, y, logit_scale, logit_bias, True, mask)
    y_other, mask_other = y, mask
    for _ in range(world - 1):
        y_other = _NeighbourExchange.apply(y_other, right, left)
        if mask is not None:
            mask_other = _exchange(mask_other, right, left)
        loss = loss + _block_loss(x, y_other, logit_scale, logit_bias, False, mask_other)
    return loss


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SigmoidLoss(nn.Module):
    """Sigmoid loss with its own learnable log-temperature and bias; chunked across ranks when distributed.

    The parameters are replicated on every rank; average their gradients across ranks like any DDP parameter.
    """

    def __init__(self, temperature: float = 10.0, bias: float = -10.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(bias))

    def forward(self, x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = chunked_sigmoid_loss if _distributed() else sigmoid_loss
        return loss(x, y, self.logit_scale, self.logit_bias, negatives, mask)


class MatryoshkaSigmoidLoss(nn.Module):
    """One contrastive term at every Matryoshka prefix: ``forward(x, y, negatives, mask)`` -> {k: unweighted loss}."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = tuple(dims)
        self.prefix_losses = nn.ModuleDict({str(k): SigmoidLoss() for k in self.dims})

    def forward(self, x: Mapping[int, torch.Tensor], y: Mapping[int, torch.Tensor],
                negatives: Mapping[int, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        missing = [k for k in self.dims if k not in x or k not in y or (negatives is not None and k not in negatives)]
        if missing:
            raise ValueError(f"pinclip: loss: prefixes {missing} missing from the embeddings; expected {self.dims}")
        return {k: self.prefix_losses[str(k)](x[k], y[k], None if negatives is None else negatives[k], mask)
                for k in self.dims}


class PinCLIPLoss(nn.Module):
    """Total PinCLIP loss: image–descriptive text, image–keyword text and Pin-to-Pin, each Matryoshka-weighted.

    ``forward`` takes per-prefix embeddings ``{k: (B, k)}`` (from ``PinCLIP.forward`` / ``matryoshka``) and
    returns ``(total, components)``, where ``components["<term>/<k>"]`` is the unweighted loss of a term at
    prefix k and ``total = sum_k c_k * components[term/k]`` over the terms given. The keyword and the
    Pin-to-Pin terms are optional (pass None); across ranks, every rank must pass the same terms. ``negative``
    ``{k: (m, k)}`` adds m Pin-to-Pin negatives of every query (pins drawn from the corpus), as many per rank.
    ``descriptive_mask`` / ``keyword_mask`` (B,) bool drop the pairs of pins without that text.
    """

    def __init__(self, prefix_weights: Mapping[int, float] = MATRYOSHKA_WEIGHTS):
        super().__init__()
        self.prefix_weights = dict(sorted(prefix_weights.items()))
        dims = tuple(self.prefix_weights)
        self.terms = nn.ModuleDict({term: MatryoshkaSigmoidLoss(dims) for term in TERMS})

    def forward(self, image: Mapping[int, torch.Tensor], descriptive: Mapping[int, torch.Tensor],
                keyword: Mapping[int, torch.Tensor] | None = None,
                query: Mapping[int, torch.Tensor] | None = None,
                positive: Mapping[int, torch.Tensor] | None = None,
                negative: Mapping[int, torch.Tensor] | None = None, *,
                descriptive_mask: torch.Tensor | None = None,
                keyword_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if (query is None) != (positive is None):
            raise ValueError("pinclip: loss: Pin-to-Pin needs both query and positive fusion embeddings")
        if negative is not None and positive is None:
            raise ValueError("pinclip: loss: Pin-to-Pin negatives need query and positive fusion embeddings")
        pairs = {"image_descriptive": (image, descriptive, None, descriptive_mask),
                 "image_keyword": (image, keyword, None, keyword_mask),
                 "pin_pin": (query, positive, negative, None)}
        components: dict[str, torch.Tensor] = {}
        weighted = []
        for term, (x, y, negatives, mask) in pairs.items():
            if y is None:
                continue
            for k, value in self.terms[term](x, y, negatives, mask).items():
                components[f"{term}/{k}"] = value
                weighted.append(self.prefix_weights[k] * value)
        return torch.stack(weighted).sum(), components


class AnnotationLoss(nn.Module):
    """Multi-label BCE of a linear head on a unit-norm embedding against annotation scores in [0, 1].

    The embedding is scaled by sqrt(dim) (unit RMS entries) so the head's logits need no large weights,
    and the head's bias starts at the labels' log-odds ``prior`` so the first steps are not spent learning it.
    """

    def __init__(self, dim: int, prior: torch.Tensor):
        super().__init__()
        self.dim, self.scale = dim, math.sqrt(dim)
        self.head = nn.Linear(dim, len(prior))
        nn.init.zeros_(self.head.weight)
        p = prior.float().clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            self.head.bias.copy_(torch.log(p / (1 - p)))

    def forward(self, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(emb * self.scale)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / emb.shape[0]
