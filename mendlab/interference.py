"""How much separately computed edits of the same weights share, and how fast their sum grows with k.

Summing k edits (paper §5.3) gives ‖Σ_b ΔW_b‖²_F = Σ_b ‖ΔW_b‖² + Σ_{b≠c} ⟨ΔW_b, ΔW_c⟩. Write the mean
squared size of one edit as s² and the mean inner product of two different edits as ρ s², so ρ is the edits'
*coherence* (1: all edits are the same matrix; 0: on average orthogonal; it can be slightly negative). Then

    ‖Σ_{b ≤ k} ΔW_b‖_F / s ≈ √(k (1 + (k − 1) ρ)),

which is √k for unrelated edits and k for identical ones. With ρ = 0.3 the sum of 25 edits is 2.9 times as large
as the sum of 25 unrelated edits of the same size: the part the edits share adds up in step, and it acts on
every input whose key points that way, not only on the edited prompts (chapter 06, "Why a sum interferes").

    edits = editor.edit_many(model, enc).detach()       # k requests edited apart (an EditSet)
    interference.coherence(edits)                       # one row per edited weight
    interference.sum_norms(edits, ks=(1, 5, 25))         # measured ‖Σ_{b<k} ΔW_b‖ / s against the formula
    interference.coherence(interference.gradient_edits(model, enc, editor.names))   # the same for plain gradients
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mendlab import rank1
from mendlab.edit import EditSet, Factors
from mendlab.families import edited_weights, is_conv1d, kind_of
from mendlab.losses import labelled_logits, nll_per_example


def sum_growth(rho: float, k: int) -> float:
    """The expected ‖sum of k edits‖ / (size of one edit) for edits of coherence ``rho``: √(k (1 + (k − 1) ρ)),
    floored at 0 inside the root (a strongly negative ρ cannot make a norm imaginary)."""
    if k < 1:
        raise ValueError(f"k must be a positive number of edits, got {k}")
    return math.sqrt(max(0.0, k * (1 + (k - 1) * rho)))


def _sizes(edits: EditSet, name: str) -> torch.Tensor:
    """‖ΔW_b‖²_F for each edit b [B] of one weight, from the factors, in float64.

    ‖deltaᵀ u‖²_F = Σ_{t,s} (delta_t · delta_s)(u_t · u_s): two [R, R] Gram matrices per edit, no dense ΔW_b."""
    delta, u = (x.detach().double() for x in edits.padded()[name])  # [B, R, out], [B, R, in]
    return ((delta @ delta.mT) * (u @ u.mT)).sum((1, 2))


def _summed(edits: EditSet, name: str, k: int | None = None) -> torch.Tensor:
    """Σ_{b < k} ΔW_b as [out, in] in float64 (all edits when ``k`` is None); the layout does not matter for norms."""
    f, owner = edits.factors[name], edits.owner[name]
    keep = owner < (edits.size if k is None else k)
    return f.delta.detach()[keep].double().T @ f.u.detach()[keep].double()


def _check(edits: EditSet) -> None:
    if not isinstance(edits, EditSet):
        raise TypeError(f"coherence needs an EditSet (editor.edit_many), got {type(edits).__name__}")
    if edits.size < 2:
        raise ValueError(f"coherence needs at least 2 edits, got {edits.size}")


def coherence(edits: EditSet):
    """One row per edited weight (factors only; an ENN-style shared part belongs to every edit and is left out):
    ``weight``, ``edits`` (B), ``size`` (s: the root mean square of ‖ΔW_b‖_F), ``coherence`` (ρ, see the module),
    ``common`` (the share of an edit's squared size in the mean edit, ‖mean_b ΔW_b‖² / s² = ρ + (1 − ρ)/B), and
    ``growth_25`` (:func:`sum_growth` at k = 25). A DataFrame."""
    import pandas as pd

    _check(edits)
    rows = []
    for name in edits.factors:
        sq = _sizes(edits, name)
        total, b = float(sq.sum()), edits.size
        if total == 0:
            raise ValueError(f"every edit of {name} is zero: coherence is undefined")
        summed = float(_summed(edits, name).pow(2).sum())
        rho = (summed - total) / ((b - 1) * total)
        rows.append({"weight": name, "edits": b, "size": math.sqrt(total / b), "coherence": rho,
                     "common": summed / (b * total), "growth_25": sum_growth(rho, 25)})
    return pd.DataFrame(rows)


def sum_norms(edits: EditSet, ks: Sequence[int] = (1, 5, 25)):
    """For each weight and k in ``ks``: the measured ‖Σ_{b < k} ΔW_b‖_F / s (the sum of the first k edits, s as in
    :func:`coherence`, over all B edits) beside the formula's √(k (1 + (k − 1) ρ)) and the √k of unrelated edits.
    Columns ``weight``, ``k``, ``measured``, ``predicted``, ``unrelated``. Each k must be at most B."""
    import pandas as pd

    _check(edits)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > edits.size:
        raise ValueError(f"ks must lie in 1..{edits.size} (the number of edits), got {ks}")
    table = coherence(edits).set_index("weight")
    rows = []
    for name in edits.factors:
        s, rho = table.loc[name, "size"], table.loc[name, "coherence"]
        for k in ks:
            rows.append({"weight": name, "k": k, "measured": float(_summed(edits, name, k).norm()) / s,
                         "predicted": sum_growth(rho, k), "unrelated": math.sqrt(k)})
    return pd.DataFrame(rows)


def gradient_edits(model: torch.nn.Module, enc: dict, names: Sequence[str] | None = None) -> EditSet:
    """Each request of ``enc`` edited apart by one plain gradient step: ΔW_b = −∇_W NLL_b (learning rate 1), as
    rank-1 factors (δ = −∂NLL_b/∂(layer output), u = layer input, one row per token) of the weights ``names``
    (the family's edited weights by default). What fine-tuning's first step on each request alone would add,
    without any editor network: the reference against which :func:`coherence` shows what an editor adds."""
    names = edited_weights(model, names)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.enable_grad(), rank1.capture(model, names) as cap:
        logits, labels, kind = labelled_logits(model, kind_of(model), enc)
        rows = cap.rows(nll_per_example(kind, logits, labels).sum())
    factors = {n: Factors(-r.delta, r.u, is_conv1d(model, n)) for n, r in rows.items()}
    return EditSet(factors, {n: r.owner for n, r in rows.items()}, int(enc["input_ids"].shape[0]),
                   {"editor": "gradient"})
