"""MEND: the editor that turns an edit's fine-tuning gradient into a weight update (paper §3, Algorithm 2).

    editor = MEND.for_model(model)                       # identity-initialised, untrained
    train.train(editor, model, tokenizer, train_set, val_set)
    edit = editor.edit(model, tokenizer, EditExample("Where was Zorbo born?", "Kelvane"))
    with edit.applied(model): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from mendlab import rank1
from mendlab.edit import Edit, EditSet, Factors
from mendlab.editors.base import TrainableEditor, as_batch, fingerprint
from mendlab.families import edited_weights, is_conv1d, kind_of, shape_key
from mendlab.losses import labelled_logits, nll, nll_per_example
from mendlab.nets import EditorNet, NetConfig


class MEND(TrainableEditor):
    """Editor networks for one base model's edited weights (``names``), with their layouts and fingerprint.

    The update of weight ℓ is ``W + α_ℓ Σ_t δ̃_t ũ_tᵀ`` as in the official code (α₀ = +1e-4, learned; the paper
    writes a minus, §3.1; official ``algs/mend.py`` adds); ``descent=True`` subtracts instead.
    """

    alg = "mend"
    config_class = NetConfig
    config_field = "net"

    def __init__(self, config: NetConfig, shapes: dict[str, tuple[int, int]], conv1d: dict[str, bool],
                 kind: str, base: dict, descent: bool = False):
        super().__init__()
        self.config, self.kind, self.base, self.descent = config, kind, base, descent
        self.names = list(shapes)
        self.conv1d = dict(conv1d)
        self.net = EditorNet(shapes, config)

    @classmethod
    def for_model(cls, model: nn.Module, config: NetConfig | None = None, names: Sequence[str] | None = None,
                  descent: bool = False) -> MEND:
        """A fresh editor for ``model``'s edited weights (the family's defaults unless ``names``)."""
        names = edited_weights(model, names)
        shapes = {n: shape_key(model, n) for n in names}
        return cls(config or NetConfig(), shapes, {n: is_conv1d(model, n) for n in names},
                   kind_of(model), fingerprint(model, names), descent)

    @classmethod
    def default_config(cls, task: str | None = None, variant: str = "mend", **overrides) -> NetConfig:
        """The network of a Table-6 ``variant`` (``NetConfig.variant``) with ``overrides``; the same for every task."""
        return NetConfig.variant(variant, **overrides)

    # -- editing ------------------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer_or_batch, examples=None) -> Edit:
        """An :class:`Edit` for one or many ``EditExample``s (with a tokenizer) or a prepared ``EditBatch``.

        One forward and one backward of the base model (down to the earliest edited layer only), then the
        editor networks on the token rows. Several requests are edited together: their rows are pooled and the
        update is their sum (paper §5.3). The graph to the editor is kept.
        """
        return self._edit(model, tokenizer_or_batch, examples, separate=False)

    def edit_many(self, model: nn.Module, tokenizer_or_batch, examples=None) -> EditSet:
        """Each request its own edit (an :class:`EditSet`), in the same single pass: the loss is the sum of
        per-request mean NLLs, so each request's rows are exactly those of editing it alone."""
        return self._edit(model, tokenizer_or_batch, examples, separate=True)

    def _edit(self, model: nn.Module, tokenizer_or_batch, examples, separate: bool) -> Edit | EditSet:
        batch = as_batch(model, tokenizer_or_batch, examples)
        enc = batch.edit_inner if hasattr(batch, "edit_inner") else batch
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.enable_grad(), rank1.capture(model, self.names) as cap:
            logits, labels, kind = labelled_logits(model, self.kind, enc)
            loss = nll_per_example(kind, logits, labels).sum() if separate else nll(kind, logits, labels)
            rows = cap.rows(loss)
        pseudo = self.net.forward_all({n: (r.u, r.delta) for n, r in rows.items()})
        factors = {}
        alphas = dict(zip(self.net.names, self.net.edit_lrs.unbind(), strict=True))
        for name in self.names:
            u, delta = pseudo[name]
            alpha = alphas[name].to(delta.device)
            factors[name] = Factors((-alpha if self.descent else alpha) * delta, u, self.conv1d[name])
        n = int(enc["input_ids"].shape[0])
        meta = {"editor": self.alg, "n_requests": n}
        if separate:
            return EditSet(factors, {k: r.owner for k, r in rows.items()}, n, meta,
                           keys={k: (r.u.detach(), r.owner) for k, r in rows.items()})
        return Edit(factors, meta=meta)

    def param_groups(self, lr: float, lr_lr: float) -> list[dict]:
        return self.net.param_groups(lr, lr_lr)

    # -- saving -------------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"net": asdict(self.config), "kind": self.kind, "descent": self.descent,
                "shapes": {n: list(s) for n, s in self.net.shapes.items()}, "conv1d": self.conv1d}

    @classmethod
    def from_config_dict(cls, cfg: dict) -> MEND:
        return cls(NetConfig(**cfg["net"]), {n: tuple(s) for n, s in cfg["shapes"].items()}, cfg["conv1d"],
                   cfg["kind"], cfg["base_model"], cfg.get("descent", False))

    def num_parameters(self) -> int:
        """The editor networks' parameters, without the step sizes α (as the paper counts)."""
        return self.net.count_parameters()

    def extra_repr(self) -> str:
        return f"base={self.base['name']!r}, weights={len(self.names)}, params={self.net.count_parameters():,}"
