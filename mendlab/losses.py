"""Losses and per-example scores on model outputs, for every model kind (paper §3.1 and §5).

Tensors come from :class:`mendlab.data.Collator`: labels are aligned with the tokens they label (−100
elsewhere), so a decoder's logits at position t are scored against the label at t + 1; encoder-decoders are
scored position by position (the decoder input is already shifted); classifiers have one logit per example.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch.func import functional_call

MODEL_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def forward(model, enc: dict, params: dict | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``enc`` (labels ignored); with ``params``, through ``functional_call``.

    ``params`` maps parameter names to replacement tensors (an edited view); the model is not modified.
    """
    inputs = {k: v for k, v in enc.items() if k in MODEL_KEYS}
    if params:
        return functional_call(model, params, args=(), kwargs=inputs, strict=False).logits
    return model(**inputs).logits


@functools.cache
def _keeps_logits(cls) -> bool:
    """Whether a model class's forward takes ``logits_to_keep`` (looked up once per class, not per edit)."""
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def labelled_logits(model, kind: str, enc: dict, params: dict | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(logits, labels, kind to score them as) with a decoder's LM head run only at the positions whose next token
    is labelled (in any row), through the model's ``logits_to_keep``: an edit of a short answer then projects a
    few positions onto the vocabulary instead of all of them. Scores (``nll``, ``correct`` …) are unchanged; the
    returned pair is already aligned, so it is scored as ``"seq2seq"`` (position by position). Other kinds, and
    models without ``logits_to_keep``, return ``forward(model, enc, params)`` as it is."""
    labels = enc["labels"]
    if kind != "decoder" or not _keeps_logits(type(model)):
        return forward(model, enc, params), labels, kind
    keep = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)
    inputs = {k: v for k, v in enc.items() if k in MODEL_KEYS}
    inputs["logits_to_keep"] = keep
    if params:
        logits = functional_call(model, params, args=(), kwargs=inputs, strict=False).logits
    else:
        logits = model(**inputs).logits
    return logits, labels[:, keep + 1], "seq2seq"


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def aligned(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels paired position by position: [B, T', V] and [B, T'] (decoder: shifted by one)."""
    if kind == "decoder":
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def nll(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labels: token-weighted mean over labelled positions, or binary NLL.

    Computed in at least float32 (half-precision logits are upcast; float64 stays float64).
    """
    logits = _up(logits)
    if kind == "classifier":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.float())
    logits, labels = aligned(kind, logits, labels)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def token_nll(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed NLL over labelled tokens and the token counts: ([B], [B])."""
    logits, labels = aligned(kind, _up(logits), labels)
    mask = labels != -100
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(lp * mask).sum(-1), mask.sum(-1)


def correct(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example exact match [B] (bool): every label token is the argmax (teacher forcing), or the logit's
    sign matches a binary label."""
    if kind == "classifier":
        return (logits.reshape(-1) > 0).float() == labels.float()
    logits, labels = aligned(kind, logits, labels)
    mask = labels != -100
    return ((logits.argmax(-1) == labels) | ~mask).all(-1)


def kl_loc(kind: str, pre: torch.Tensor, post: torch.Tensor, enc: dict) -> torch.Tensor:
    """KL(pre ‖ post) on the locality input (paper Appendix C.2).

    Sequences: full-vocabulary KL per position, averaged over the positions the mask keeps
    (``decoder_attention_mask`` for encoder-decoders; for decoders the positions that predict a label).
    Classifier: the Bernoulli KL averaged over the batch. Float32.
    """
    pre, post = _up(pre), _up(post)
    if kind == "classifier":
        p, lq, lp = torch.sigmoid(pre), F.logsigmoid(post), F.logsigmoid(pre)
        lq0, lp0 = F.logsigmoid(-post), F.logsigmoid(-pre)
        return (p * (lp - lq) + (1 - p) * (lp0 - lq0)).mean()
    if kind == "decoder" and "labels" in enc:
        # Departure: a decoder's question-answer x_loc is scored on its answer positions (the paper's seq2seq
        # definition, KL on y_loc given x_loc); language-modelling x_loc is labelled everywhere, so it keeps the
        # autoregressive definition over all its tokens. The official code averages over every prompt token
        # too, which dilutes the positions where an answer can flip.
        pre, post = pre[:, :-1], post[:, :-1]
        mask = (enc["labels"][:, 1:] != -100).float()
    else:
        mask = enc.get("decoder_attention_mask", enc["attention_mask"]).float()
    lp, lq = torch.log_softmax(pre, -1), torch.log_softmax(post, -1)
    per_pos = (lp.exp() * (lp - lq)).sum(-1)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1)


def nll_per_example(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] mean NLL of each example's own labels (the loss a single edit of that example would see)."""
    if kind == "classifier":
        return F.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels.float(), reduction="none")
    total, count = token_nll(kind, logits, labels)
    return total / count.clamp(min=1)
