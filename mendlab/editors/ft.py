"""FT and FT+KL: edit by fine-tuning a residual on the edited weights (paper §5; official ``algs/ft.py``).

Each edited weight W gets a trainable residual R (a full-size zero tensor, or U·V with U ~ N(0, init_std²) and
V = 0 when ``rank`` is set). RMSprop at ``lr`` with global grad-norm clipping runs at most ``max_steps`` steps on

    FT:     L = L_e                      L_e = NLL(y_e | x_e; W + R)
    FT+KL:  L = L_loc + c_edit · L_e     L_loc = KL(p_W(·|x_loc) ‖ p_{W+R}(·|x_loc)), one fresh training pair per step

and stops as soon as every label token of x_e is argmax-correct (checked before each step, so a request the
model already gets right takes 0 steps). The model is never modified: every forward goes through
``torch.func.functional_call`` with ``{name: W + R}``.

    editor = FT.for_model(model, FTConfig(lr=1e-3))
    edit = editor.edit(model, tokenizer, EditExample("Where was Zorbo born?", "Kelvane"))
    editor = FTKL.for_model(model, tokenizer=tokenizer, locality=world.qa_pairs(split="train"))
    # pick lr on validation edits: mendlab.experiments.editors.sweep_lr and best_lr

Departures from the official code: the default ``lr`` is 1e-4 (ft.yaml: 5e-6; paper C.1: 1e-6 for the small
models, 1e-4 for T5), since the toy models of this course need larger steps; the harness sweeps it
(:func:`mendlab.experiments.editors.sweep_lr`). Residuals are
kept in at least float32 and cast to the weight's dtype when added. A decoder's locality KL is taken on the answer
positions of a question-answer pair (see :func:`mendlab.losses.kl_loc`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from mendlab import losses
from mendlab.data import Collator
from mendlab.edit import Edit, Factors
from mendlab.editors.base import Editor, as_batch, fingerprint
from mendlab.families import edited_weights, is_conv1d, kind_of


@dataclass(frozen=True)
class FTConfig:
    """Fine-tuning editor settings (``algs/ft.py``). ``locality=True`` is FT+KL; ``rank=None`` trains a full-size
    residual, an int a rank-``rank`` product U·V; ``time_limit`` (seconds) can cut the steps short."""

    lr: float = 1e-4
    max_steps: int = 100
    grad_clip: float = 100.0
    locality: bool = False
    c_edit: float = 1e-2
    rank: int | None = None
    init_std: float = 0.01
    seed: int = 0
    time_limit: float | None = None

    def __post_init__(self):
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 0:
            problems.append(f"max_steps must be an int >= 0, got {self.max_steps!r}")
        if not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0, got {self.grad_clip}")
        if not self.c_edit > 0:
            problems.append(f"c_edit must be > 0, got {self.c_edit}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            problems.append(f"rank must be None (full-size residual) or an int >= 1, got {self.rank!r}")
        if not self.init_std > 0:
            problems.append(f"init_std must be > 0, got {self.init_std}")
        if self.time_limit is not None and not self.time_limit > 0:
            problems.append(f"time_limit must be None or > 0 seconds, got {self.time_limit}")
        if problems:
            raise ValueError("invalid FTConfig: " + "; ".join(problems))


class FT(Editor):
    """Fine-tuning editor for one base model's edited weights (``names``); nothing is trained ahead of time.

    ``edit`` returns the residuals as the edit: dense [weight layout] deltas, or for ``rank=r`` the exact
    rank-r :class:`~mendlab.edit.Factors` (``delta`` [r, out], ``u`` [r, in]) of U·V.
    """

    alg = "ft"
    config_class = FTConfig

    def __init__(self, config: FTConfig, names: list[str], conv1d: dict[str, bool], kind: str, base: dict,
                 locality: Sequence[tuple[str, str]] | None = None, collator: Collator | None = None):
        self.config, self.names, self.conv1d, self.kind, self.base = config, list(names), dict(conv1d), kind, base
        self.locality = None if locality is None else list(locality)
        self.collator = collator
        self.rng = random.Random(config.seed)  # locality draws continue across edits, like the official loader
        self.generator = torch.Generator().manual_seed(config.seed)  # U of low-rank residuals

    @classmethod
    def for_model(cls, model: nn.Module, config: FTConfig | None = None, names: Sequence[str] | None = None,
                  tokenizer=None, locality: Sequence[tuple[str, str]] | None = None) -> FT:
        """A fresh editor for ``model``'s edited weights (the family's defaults unless ``names``).

        FT+KL (``config.locality``, or :class:`FTKL`) needs ``locality``, (prompt, answer) pairs from the
        *training* split (not the evaluation panel), and the ``tokenizer`` to encode them. A config with
        ``locality=True`` is refused by ``FT.for_model``: FT+KL is :class:`FTKL`.
        """
        config = config or FTConfig()
        if cls is FTKL:
            config = replace(config, locality=True)
        elif config.locality:
            raise ValueError("FTConfig(locality=True) is FT+KL: build it with FTKL.for_model")
        names = edited_weights(model, names)
        collator = None
        if config.locality:
            if not locality:
                raise ValueError("FT+KL draws a locality example at every step: pass locality=[(prompt, answer), ...] "
                                 "from the training split (e.g. world.qa_pairs(split='train'))")
            if tokenizer is None:
                raise ValueError("FT+KL needs tokenizer= to encode its locality pairs")
            collator = Collator.for_model(model, tokenizer)
            locality = list(locality)
            collator.encode([locality[0]])  # a pair of the wrong kind fails here, not in the middle of an edit
        elif locality is not None:
            raise ValueError("plain FT uses no locality pool; for FT+KL use FTKL.for_model or FTConfig(locality=True)")
        return cls(config, names, {n: is_conv1d(model, n) for n in names}, kind_of(model),
                   fingerprint(model, names), locality, collator)

    # -- editing ------------------------------------------------------------------------------------------
    @classmethod
    def default_config(cls, task: str | None = None, variant: str = "mend", **overrides) -> FTConfig:
        super().default_config(task, variant, **overrides)  # refuses MEND's variants
        return FTConfig(locality=cls is FTKL)

    def edit(self, model: nn.Module, tokenizer_or_batch, examples=None) -> Edit:
        """An :class:`Edit` for one or many ``EditExample``s (with a tokenizer) or a prepared ``EditBatch``/tensors.

        Several requests are fine-tuned together (mean NLL over all their label tokens) until all are correct.
        ``meta``: ``editor``, ``n_requests``, ``steps`` (optimiser steps taken), ``converged`` (every label token
        argmax-correct at the end). The model's weights are untouched; its modules run in eval mode meanwhile
        (as in the official code) and get their own train/eval flags back.
        """
        cfg = self.config
        batch = as_batch(model, tokenizer_or_batch, examples)
        enc = batch.edit_inner if hasattr(batch, "edit_inner") else batch
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        weights = dict(model.named_parameters())
        residuals = {n: self._init_residual(weights[n]) for n in self.names}
        trained = [t for r in residuals.values() for t in r]
        opt = torch.optim.RMSprop(trained, lr=cfg.lr)
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        steps, converged, start = 0, False, time.perf_counter()
        try:
            with torch.enable_grad():  # metrics.evaluate calls edit under no_grad
                while True:
                    params = {n: weights[n].detach() + _product(r).to(weights[n].dtype) for n, r in residuals.items()}
                    # a decoder's LM head runs on the labelled positions only; the scores are unchanged
                    logits, labels, kind = losses.labelled_logits(model, self.kind, enc, params)
                    if losses.correct(kind, logits.detach(), labels).all():
                        converged = True
                        break
                    if steps >= cfg.max_steps or (cfg.time_limit is not None
                                                  and time.perf_counter() - start > cfg.time_limit):
                        break
                    loss = losses.nll(kind, logits, labels)
                    if cfg.locality:
                        loss = self._kl(model, params, device) + cfg.c_edit * loss
                    for t, g in zip(trained, torch.autograd.grad(loss, trained), strict=True):
                        t.grad = g
                    torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    steps += 1
        finally:
            for module, mode in modes:
                module.training = mode
        meta = {"editor": self.alg, "n_requests": int(enc["input_ids"].shape[0]), "steps": steps,
                "converged": converged}
        if cfg.rank is None:
            return Edit(dense={n: r[0].detach() for n, r in residuals.items()}, meta=meta)
        factors = {}
        for n, (u_, v_) in residuals.items():  # W-layout R = U V: Linear [out, in], Conv1D [in, out]
            u_, v_ = u_.detach(), v_.detach()
            factors[n] = Factors(v_, u_.T, True) if self.conv1d[n] else Factors(u_.T, v_, False)
        return Edit(factors, meta=meta)

    def _init_residual(self, w: torch.Tensor) -> list[torch.Tensor]:
        """[R] (zeros, W's shape) or [U [rows, rank] ~ N(0, init_std²), V [rank, cols] = 0], in ≥ float32."""
        dtype = torch.promote_types(w.dtype, torch.float32)
        if self.config.rank is None:
            return [torch.zeros(w.shape, dtype=dtype, device=w.device, requires_grad=True)]
        u = torch.randn(w.shape[0], self.config.rank, generator=self.generator, dtype=dtype) * self.config.init_std
        v = torch.zeros(self.config.rank, w.shape[1], dtype=dtype, device=w.device)
        return [u.to(w.device).requires_grad_(True), v.requires_grad_(True)]

    def _kl(self, model: nn.Module, params: dict[str, torch.Tensor], device) -> torch.Tensor:
        """KL(unedited ‖ edited) on one freshly drawn locality pair."""
        pair = self.rng.choice(self.locality)
        enc = {k: v.to(device) for k, v in self.collator.encode([pair]).items()}
        with torch.no_grad():
            pre = losses.forward(model, enc)
        return losses.kl_loc(self.kind, pre, losses.forward(model, enc, params), enc)

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}(base={self.base['name']!r}, weights={len(self.names)}, lr={c.lr}, "
                f"max_steps={c.max_steps}, rank={c.rank}" + (f", c_edit={c.c_edit})" if c.locality else ")"))


class FTKL(FT):
    """FT+KL: :class:`FT` with ``locality=True`` (the loss L_loc + c_edit·L_e on fresh training pairs)."""

    alg = "ft_kl"


def _product(r: list[torch.Tensor]) -> torch.Tensor:
    return r[0] if len(r) == 1 else r[0] @ r[1]
