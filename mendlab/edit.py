"""``Edit``: the result of editing, independent of how it was computed (DESIGN "The flow of data").

Per edited weight an edit holds either low-rank factors — ``delta`` [rows, out] (pseudo-deltas already scaled
by the step size α) and ``u`` [rows, in] (pseudo-activations), ΔW = Σ_t delta_t u_tᵀ — or a dense ΔW in the
weight's own layout. Factors keep their autograd graph, so an editor can be trained through an edit.

    with edit.applied(model):             # in place, restored bit for bit on exit (also on exceptions)
        model.generate(...)
    logits = edit.forward(model, enc)     # functional view, the model is never touched
    (edit_a + edit_b).save("both.safetensors")   # batch editing = sum (paper §5.3)
    edits.aggregate("least_squares")      # or one least-squares ΔW for a batch (MALMEN), see EditSet.aggregate
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mendlab import rank1
from mendlab.edit_guard import check_model, combine, load_edit, save_edit, shapes_of
from mendlab.losses import MODEL_KEYS
from mendlab.losses import forward as _forward


@dataclass
class Factors:
    """ΔW = deltaᵀ u ([out, in]); stored transposed ([in, out]) for ``Conv1D`` weights."""

    delta: torch.Tensor
    u: torch.Tensor
    conv1d: bool = False

    def dense(self) -> torch.Tensor:
        return self.u.T @ self.delta if self.conv1d else self.delta.T @ self.u

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of ΔW in the weight's layout, without forming it."""
        out, n_in = self.delta.shape[-1], self.u.shape[-1]
        return (n_in, out) if self.conv1d else (out, n_in)


@dataclass
class Edit:
    """Per-weight updates ``W ← W + ΔW``; ``factors`` and ``dense`` never share a name.

    ``base``: the fingerprint of the model it was made for (:func:`mendlab.edit_guard.base_of`, set by every
    editor; None for a hand-made edit). Using the edit with a model that lacks an edited weight, has it in
    another shape or is of another recorded type raises :class:`~mendlab.edit_guard.MismatchedModelError`.
    """

    factors: dict[str, Factors] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    base: dict | None = None

    def __post_init__(self):
        both = set(self.factors) & set(self.dense)
        if both:
            raise ValueError(f"weights {sorted(both)} have both factors and a dense delta")

    # -- what it changes ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.factors) + list(self.dense)

    def delta(self, name: str) -> torch.Tensor:
        """ΔW for ``name`` in the weight's layout."""
        return self.factors[name].dense() if name in self.factors else self.dense[name]

    def deltas(self) -> dict[str, torch.Tensor]:
        return {n: self.delta(n) for n in self.names}

    def shapes(self) -> dict[str, tuple]:
        """Each edited weight's shape (the weight's layout)."""
        return shapes_of(self.factors, self.dense)

    def check(self, model: torch.nn.Module) -> None:
        """Raise :class:`~mendlab.edit_guard.MismatchedModelError`, naming both models, unless ``model`` has every
        edited weight in this edit's shape (and the recorded model type)."""
        check_model(self.shapes(), self.base, model)

    def __add__(self, other: Edit) -> Edit:
        """The sum of two edits: factors are concatenated row-wise (rank adds up), dense deltas added. Edits made
        for models of different types or shapes do not add up (:class:`~mendlab.edit_guard.MismatchedModelError`)."""
        if not isinstance(other, Edit):
            return NotImplemented
        base = combine(self.base, other.base, self.shapes(), other.shapes())
        factors, dense = dict(self.factors), dict(self.dense)
        for name, f in other.factors.items():
            if name in factors and factors[name].conv1d == f.conv1d:
                g = factors[name]
                factors[name] = Factors(torch.cat([g.delta, f.delta]), torch.cat([g.u, f.u]), f.conv1d)
            elif name in factors or name in dense:
                dense[name] = self.delta(name) + f.dense()
                factors.pop(name, None)
            else:
                factors[name] = f
        for name, d in other.dense.items():
            dense[name] = (self.delta(name) + d) if name in factors or name in dense else d
            factors.pop(name, None)
        return Edit(factors, dense, {"parts": [self.meta, other.meta]}, base)

    def __radd__(self, other):  # sum([...]) starts from 0
        return self if other == 0 else NotImplemented

    def detach(self) -> Edit:
        return Edit({n: Factors(f.delta.detach(), f.u.detach(), f.conv1d) for n, f in self.factors.items()},
                    {n: d.detach() for n, d in self.dense.items()}, dict(self.meta), self.base)

    # -- using it -----------------------------------------------------------------------------------------
    def params(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``{name: W + ΔW}`` for ``torch.func.functional_call`` (keeps the graph to ΔW)."""
        self.check(model)
        weights = dict(model.named_parameters())
        return {n: weights[n] + self.delta(n).to(weights[n].dtype) for n in self.names}

    def forward(self, model: torch.nn.Module, enc: dict) -> torch.Tensor:
        """Logits of the edited model on ``enc`` without modifying ``model``."""
        return _forward(model, enc, self.params(model))

    def apply_(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Add ΔW to the weights in place and return copies of the edited weights as they were, for
        :func:`restore` (only the edited weights, never the whole model). Stacked edits revert bit for bit when
        restored in reverse order. If adding fails part way, what was changed is restored before raising."""
        self.check(model)
        weights = dict(model.named_parameters())
        saved = {}
        try:
            with torch.no_grad():
                for name in self.names:
                    w = weights[name]
                    saved[name] = w.detach().clone()
                    w.add_(self.delta(name).detach().to(w.dtype))
        except BaseException:
            restore(model, saved)
            raise
        return saved

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Add ΔW to the weights in place; on exit (normal or exception) copy the saved originals back, so every
        weight is restored bit for bit. Only the edited weights are saved, never the whole model."""
        saved = self.apply_(model)
        try:
            yield model
        finally:
            restore(model, saved)

    # -- inspecting it -------------------------------------------------------------------------------------
    def summary(self, model: torch.nn.Module | None = None):
        """A pandas table per weight: rank, ‖ΔW‖_F and, given the model, ‖ΔW‖_F / ‖W‖_F."""
        import pandas as pd

        weights = dict(model.named_parameters()) if model is not None else {}
        rows = []
        for name in self.names:
            d = self.delta(name).detach().float()
            row = {"weight": name, "shape": tuple(d.shape), "rows": (self.factors[name].u.shape[0]
                                                                     if name in self.factors else None),
                   "rank": int(torch.linalg.matrix_rank(d)), "norm": float(d.norm())}
            if name in weights:
                row["relative_norm"] = float(d.norm() / weights[name].detach().float().norm())
            rows.append(row)
        return pd.DataFrame(rows).set_index("weight")

    # -- saving it -----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensors ``{name}.delta``/``{name}.u`` or ``{name}.dense``; layouts, ``meta`` and
        ``base`` in metadata (:func:`mendlab.edit_guard.save_edit`). ``Edit.load`` gives it back exactly."""
        return save_edit(self, path)

    @classmethod
    def load(cls, path: str | Path, device=None) -> Edit:
        return load_edit(path, device)


def restore(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy weights saved by :meth:`Edit.apply_` back into ``model``, bit for bit."""
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for name, original in saved.items():
            weights[name].copy_(original)


@dataclass
class EditSet:
    """B independent edits of the same weights, one per request of a batch (what editor training needs).

    ``factors[name]`` holds the rows of all B edits (``delta`` [N, out] scaled by α, ``u`` [N, in]) and
    ``owner`` [N] the request each row belongs to. ``forward(model, enc)`` runs row b of ``enc`` through the model
    edited by edit b only, in one batched pass (:func:`mendlab.rank1.per_example`). ``shared`` holds dense
    deltas (weight layout) that belong to every one of the B edits (ENN: its trained change of the base weights).
    ``keys[name]`` = (``k`` [M, in], ``k_owner`` [M]): the raw layer inputs of the edit batch's token rows
    (detached) and the request each belongs to, which :meth:`aggregate` needs for ``"least_squares"``.
    ``base``: the model's fingerprint, as :attr:`Edit.base`; every edit taken from the set carries it.
    """

    factors: dict[str, Factors]
    owner: dict[str, torch.Tensor]
    size: int
    meta: dict = field(default_factory=dict)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    base: dict | None = None

    @property
    def names(self) -> list[str]:
        return list(self.factors) + [n for n in self.shared if n not in self.factors]

    def _with_shared(self, edit: Edit) -> Edit:
        edit.base = self.base
        return edit + Edit(dense=dict(self.shared)) if self.shared else edit

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, b: int) -> Edit:
        """Edit b alone (with the shared part); an :class:`Edit` carries no keys."""
        out = {}
        for n, f in self.factors.items():
            keep = self.owner[n] == b
            out[n] = Factors(f.delta[keep], f.u[keep], f.conv1d)
        edit = self._with_shared(Edit(out, meta=dict(self.meta, index=b)))
        edit.meta = dict(self.meta, index=b)
        return edit

    @classmethod
    def concat(cls, parts: list[EditSet]) -> EditSet:
        """One set from the sets of consecutive chunks of a batch: request b of chunk i becomes request
        (size of the chunks before i) + b. The shared part and the fingerprint are the first chunk's."""
        first, offsets = parts[0], [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + p.size)
        shifted = list(zip(parts, offsets, strict=True))
        factors = {n: Factors(torch.cat([p.factors[n].delta for p in parts]),
                              torch.cat([p.factors[n].u for p in parts]), f.conv1d) for n, f in first.factors.items()}
        owner = {n: torch.cat([p.owner[n] + o for p, o in shifted]) for n in first.owner}
        keys = {n: (torch.cat([p.keys[n][0] for p in parts]), torch.cat([p.keys[n][1] + o for p, o in shifted]))
                for n in first.keys}
        size = sum(p.size for p in parts)
        meta = dict(first.meta, **({"n_requests": size} if "n_requests" in first.meta else {}))
        return cls(factors, owner, size, meta, dict(first.shared), keys, first.base)

    def detach(self) -> EditSet:
        return EditSet({n: Factors(f.delta.detach(), f.u.detach(), f.conv1d) for n, f in self.factors.items()},
                       self.owner, self.size, dict(self.meta), {n: d.detach() for n, d in self.shared.items()},
                       {n: (k.detach(), o) for n, (k, o) in self.keys.items()}, self.base)

    def merged(self) -> Edit:
        """All B edits summed into one (batch editing); a shared part counts once."""
        edit = self._with_shared(Edit(dict(self.factors), meta=dict(self.meta)))
        edit.meta = dict(self.meta)
        return edit

    def aggregate(self, method: str = "sum", *, ridge: float = 1e-2) -> Edit:
        """The B edits as ONE edit of the weights, by ``method`` (one of :data:`AGGREGATIONS`).

        ``"sum"``: ΔW = Σ_b ΔW_b, exactly :meth:`merged` (paper §5.3). Edits that pull a weight in different
        directions on the same inputs interfere: each edit's change is felt by every other edit's inputs.

        ``"least_squares"`` (MALMEN, Tan et al., ICLR 2024): the one ΔW [out, in] that best reproduces, on every
        edit's own layer inputs, the change that edit alone would make. Per weight, with M key rows
        (:attr:`keys`) put as columns K [in, M], and values V [out, M] whose column m is v_m = ΔW_b k_m for the
        edit b = k_owner[m] that key belongs to,

            ΔW = argmin_X ‖X K − V‖²_F + λ ‖X‖²_F = V Kᵀ (K Kᵀ + λ I)⁻¹.

        K Kᵀ is only [in, in] (no [M, M] matrix is formed, so M may be tens of thousands); V is never formed
        either: V Kᵀ = Σ_b ΔW_b K_b K_bᵀ = Σ_b deltaᵀ_b (U_b K_bᵀ) K_b from each edit's factors. We solve the
        symmetric system (K Kᵀ + λ I) ΔWᵀ = (V Kᵀ)ᵀ with ``torch.linalg.solve`` in float64.

        Why a ridge: with fewer linearly independent keys than input dimensions (few tokens, or keys that lie in
        a low-dimensional subspace, as a layer's inputs often do) K Kᵀ is singular and the least-squares ΔW is
        not unique; λ > 0 picks the smallest-norm one (ΔW is zero on directions no key visits) and keeps the
        solve well conditioned. λ = ``ridge`` · trace(K Kᵀ) / in, i.e. ``ridge`` times the keys' mean squared
        size per input dimension, so the same ``ridge`` means the same thing for any layer and any scale of its
        inputs. Larger ridges shrink ΔW towards 0.

        A check of the maths: with one edit whose keys are linearly independent and ridge → 0, ΔW K = ΔW_b K:
        the edit's own effect on its keys is reproduced exactly, though not its full ΔW_b (ΔW = ΔW_b Π, Π the
        projection onto the keys' span; only keys spanning all ``in`` dimensions give back ΔW_b itself).

        The result has ``dense`` ΔW in each weight's layout ([in, out] for ``Conv1D``) plus the ``shared``
        part once, and keeps the graph to the factors. Raises ``ValueError`` for an unknown method or, for
        least squares, when a weight has no keys.
        """
        if method == "sum":
            return self.merged()
        if method != "least_squares":
            raise ValueError(f"unknown aggregation {method!r}; choose one of {AGGREGATIONS}")
        missing = [n for n in self.factors if n not in self.keys]
        if missing:
            raise ValueError(f"least squares needs the edits' keys; this EditSet was made without them "
                             f"(no keys for {missing})")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        padded = self.padded()
        dense = {n: _least_squares(*padded[n], *self.keys[n], ridge, f.conv1d).to(f.delta.dtype)
                 for n, f in self.factors.items()}
        meta = dict(self.meta, aggregate=method, ridge=ridge)
        edit = self._with_shared(Edit(dense=dense))
        edit.meta = meta
        return edit

    def padded(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per weight ``(delta [B, R, out], u [B, R, in])``, zero-padded to the longest edit's R rows."""
        return {n: _pad_rows(self.owner[n], self.size, f.delta, f.u) for n, f in self.factors.items()}

    def forward(self, model: torch.nn.Module, enc: dict, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits where row b is computed with edit b applied, or with edit ``index[b]`` when given
        (e.g. several rephrases per request). The model is not modified."""
        check_model(shapes_of(self.factors, self.shared), self.base, model, "this EditSet")
        updates = self.padded()
        if index is not None:
            updates = {n: (d[index], u[index]) for n, (d, u) in updates.items()}
        params = Edit(dense=dict(self.shared)).params(model) if self.shared else None
        with rank1.per_example(model, updates):
            return _forward(model, enc, params)

    def forward_many(self, model: torch.nn.Module, encs: list[dict]) -> list[torch.Tensor]:
        """``[self.forward(model, e) for e in encs]`` in one batched pass: each input's B rows are padded on
        the right to common widths (ids and masks 0, so padding is masked out) and stacked, row b of every input
        sees edit b, and each result is cut back to its own rows and width. One pass instead of several saves
        the per-layer overhead that dominates a small model's forward."""
        keys = [k for k in MODEL_KEYS if k in encs[0]]
        if any(int(e["input_ids"].shape[0]) != self.size for e in encs):
            raise ValueError(f"every input needs {self.size} rows, one per edit; got "
                             f"{[int(e['input_ids'].shape[0]) for e in encs]}")
        stacked = {}
        for k in keys:
            width = max(e[k].shape[1] for e in encs)
            stacked[k] = torch.cat([F.pad(e[k], (0, width - e[k].shape[1])) for e in encs])
        index = torch.arange(self.size, device=stacked["input_ids"].device).repeat(len(encs))
        logits = self.forward(model, stacked, index)
        out = []
        for i, e in enumerate(encs):
            part = logits[i * self.size:(i + 1) * self.size]
            if part.dim() >= 3:  # [B, T, V]: T follows the decoder input for encoder-decoders
                part = part[:, :e.get("decoder_input_ids", e["input_ids"]).shape[1]]
            out.append(part)
        return out


AGGREGATIONS = ("sum", "least_squares")
_CHUNK = 1 << 24  # float64 entries of one chunk's intermediate in _least_squares (128 MiB)


def _pad_rows(owner: torch.Tensor, size: int, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows grouped by ``owner`` (each request's rows together, in request order) → [size, R, dim] each,
    zero-padded to the longest group's R rows."""
    counts = torch.bincount(owner, minlength=size)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(owner.numel(), device=owner.device) - starts[owner]
    r = int(counts.max()) if owner.numel() else 0
    return tuple(x.new_zeros(size, r, x.shape[-1]).index_put((owner, pos), x) for x in rows)


def _least_squares(delta: torch.Tensor, u: torch.Tensor, k: torch.Tensor, k_owner: torch.Tensor, ridge: float,
                   conv1d: bool) -> torch.Tensor:
    """ΔW = V Kᵀ (K Kᵀ + λI)⁻¹ (see :meth:`EditSet.aggregate`) in the weight's layout, float64.

    ``delta`` [B, R, out] and ``u`` [B, R, in]: the padded factors, ΔW_b = delta_bᵀ u_b; ``k`` [M, in] the keys
    and ``k_owner`` [M] their edits. (V Kᵀ)ᵀ = Σ_b P_bᵀ delta_b with P_b = u_b K_bᵀ K_b [R, in], computed per chunk
    of edits through (u_b K_bᵀ) K_b ([M_b, R] per edit) or u_b (K_bᵀ K_b) ([in, in] per edit), whichever is
    smaller, so no [M, M] matrix is formed."""
    size, r, n_in = u.shape
    if k.shape[-1] != n_in:
        raise ValueError(f"keys have {k.shape[-1]} input dimensions, the edits' factors {n_in}")
    d, u = delta.double(), u.double()
    k, k_owner = k.to(u.device, torch.float64), k_owner.to(u.device)
    order = torch.argsort(k_owner, stable=True)
    k, k_owner = k[order], k_owner[order]
    (kp,) = _pad_rows(k_owner, size, k)  # [B, M_b, in]
    m = kp.shape[1]
    through_coeff = m * r <= n_in * n_in
    step = max(1, _CHUNK // max(1, min(m * r, n_in * n_in)))
    rhs = d.new_zeros(n_in, d.shape[-1])  # (V Kᵀ)ᵀ [in, out]
    for s in range(0, size, step):
        ub, db, kb = u[s:s + step], d[s:s + step], kp[s:s + step]
        p = (kb @ ub.mT).mT @ kb if through_coeff else ub @ (kb.mT @ kb)  # [b, R, in]
        rhs = rhs + p.reshape(-1, n_in).T @ db.reshape(-1, d.shape[-1])
    gram = k.T @ k  # K Kᵀ [in, in]
    trace = float(gram.diagonal().sum())
    lam = ridge * trace / n_in if trace > 0 else 1.0  # no key (or all zero): V = 0, any λ > 0 gives ΔW = 0
    eye = torch.eye(n_in, dtype=gram.dtype, device=gram.device)
    x = torch.linalg.solve(gram + lam * eye, rhs)  # ΔWᵀ [in, out]; singular only for ridge 0 and too few keys
    return x if conv1d else x.T
