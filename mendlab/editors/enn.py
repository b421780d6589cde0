"""ENN, Editable Neural Networks (Sinitsin et al., 2020) as the MEND repo runs it (``algs/enn.py``).

The edit is one SGD step on the edited matrices, each with its own learned step size lr_ℓ (init 1e-2):

    W'_ℓ = θ_ℓ − lr_ℓ · ∇_{W_ℓ} NLL(y_e | x_e; θ)

where θ is ENN's *own* copy of the base weights, trained in the outer loop (``train_base``) together with the
lrs, through the inner step (second-order meta-gradients unless ``first_order``), plus a distillation term
c_base · KL(original ‖ θ-model) on x_loc that keeps the pre-edit θ-model close to the original (``aux_loss``).

    editor = ENN.for_model(model)                       # θ = the model's edited weights, lr_ℓ = 1e-2
    train.train(editor, model, tokenizer, train_set, val_set, TrainConfig(lr=1e-5, lr_lr=1e-3))
    edit = editor.edit(model, tokenizer, EditExample("Where was Zorbo born?", "Kelvane"))

The caller's model is never modified: the inner loss runs through ``torch.func.functional_call`` with θ, and
the result is an :class:`~mendlab.edit.Edit` for the *caller's* weights W: ΔW = (θ − W) − lr_ℓ Σ_t δ_t u_tᵀ.
The gradient at θ comes from :func:`mendlab.rank1.capture` (token rows u, δ; no dense weight gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mendlab import rank1
from mendlab.edit import Edit, EditSet, Factors
from mendlab.editors.base import TrainableEditor, as_batch, fingerprint
from mendlab.families import edited_weights, is_conv1d, kind_of
from mendlab.losses import forward, kl_loc, nll, nll_per_example


@dataclass(frozen=True)
class ENNConfig:
    """ENN settings (official defaults, ``config/alg/enn.yaml``).

    ``edit_lr``: initial inner step size of every edited matrix (learned; train it with ``lr_lr`` = 1e-3).
    ``c_base``: weight of the distillation KL on x_loc (1.0 for QA and fact-checking, 10.0 for generation).
    ``train_base``: train ENN's own copy θ of base weights (else only the step sizes are learned and the inner
    step starts from the model's weights). ``base_weights``: which parameters θ copies. ``None`` (our default)
    = the edited matrices only, the least that ENN must train; the official code trains *all* base parameters
    (those of layers from ``no_grad_layers`` on when that is set), i.e. pass
    ``[n for n, _ in model.named_parameters()]`` to reproduce it, at the cost of a float32 copy of the model.
    ``first_order``: drop the second-order term of the meta-gradient (the gradient through ∇W).
    """

    edit_lr: float = 1e-2
    c_base: float = 1.0
    train_base: bool = True
    base_weights: tuple[str, ...] | None = None
    first_order: bool = False

    def __post_init__(self):
        if not (isinstance(self.edit_lr, (int, float)) and self.edit_lr > 0):
            raise ValueError(f"ENNConfig.edit_lr must be a positive number, got {self.edit_lr!r}")
        if not (isinstance(self.c_base, (int, float)) and self.c_base >= 0):
            raise ValueError(f"ENNConfig.c_base must be a non-negative number, got {self.c_base!r}")
        if self.base_weights is not None:
            if isinstance(self.base_weights, str):
                raise ValueError("ENNConfig.base_weights must be a sequence of parameter names, not one string")
            names = tuple(self.base_weights)
            if not names:
                raise ValueError("ENNConfig.base_weights is empty; use None for the edited weights")
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"ENNConfig.base_weights has duplicates: {dup}")
            if not self.train_base:
                raise ValueError("ENNConfig.base_weights is set but train_base=False: nothing would train them")
            object.__setattr__(self, "base_weights", names)


def _key(name: str) -> str:
    """A ``ParameterDict`` key for a parameter name (keys cannot contain dots)."""
    return name.replace(".", "__")


class ENN(TrainableEditor):
    """Learned per-matrix step sizes ``edit_lrs`` and (``train_base``) float32 copies ``theta`` of base weights.

    ``names``: the edited weights; ``base_names``: the weights θ copies (empty without ``train_base``);
    ``base_shapes``: their shapes, in the model's storage layout.
    """

    alg = "enn"
    config_class = ENNConfig

    def __init__(self, config: ENNConfig, names: Sequence[str], conv1d: dict[str, bool], kind: str, base: dict,
                 base_shapes: dict[str, Sequence[int]]):
        super().__init__()
        self.config, self.kind, self.base = config, kind, base
        self.names = list(names)
        self.conv1d = dict(conv1d)
        self.base_names = list(base_shapes)
        keys = [_key(n) for n in self.base_names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"base weight names collide once '.' is replaced by '__': {self.base_names}")
        self.theta = nn.ParameterDict({k: nn.Parameter(torch.zeros(*base_shapes[n], dtype=torch.float32))
                                       for k, n in zip(keys, self.base_names, strict=True)})
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), float(config.edit_lr)))

    @classmethod
    def for_model(cls, model: nn.Module, config: ENNConfig | None = None, names: Sequence[str] | None = None
                  ) -> ENN:
        """A fresh editor for ``model``'s edited weights (the family's defaults unless ``names``): θ equal to the
        model's ``base_weights`` (float32 copies), every step size ``edit_lr``. The model is not touched."""
        config = config or ENNConfig()
        names = edited_weights(model, names)
        params = dict(model.named_parameters())
        if not config.train_base:
            base_names = []
        elif config.base_weights is None:
            base_names = list(names)
        else:
            base_names = list(config.base_weights)
            missing = [n for n in base_names if n not in params]
            if missing:
                raise KeyError(f"ENNConfig.base_weights names {missing}, which are not parameters of "
                               f"{type(model).__name__}")
        editor = cls(config, names, {n: is_conv1d(model, n) for n in names}, kind_of(model),
                     fingerprint(model, names), {n: tuple(params[n].shape) for n in base_names})
        with torch.no_grad():
            for n in base_names:
                editor.theta[_key(n)].copy_(params[n].detach().float())
        return editor.to(params[names[0]].device)

    # -- the trained copy ---------------------------------------------------------------------------------
    def weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{name: θ}`` for ``functional_call``, in the model's dtype (keeps the graph to θ)."""
        params = dict(model.named_parameters())
        out = {}
        for n in self.base_names:
            theta = self.theta[_key(n)]
            if n not in params or params[n].shape != theta.shape:
                got = tuple(params[n].shape) if n in params else "no such parameter"
                raise ValueError(f"ENN's copy of {n!r} has shape {tuple(theta.shape)} but the model has {got}; "
                                 f"was this editor made for another model?")
            if theta.device != params[n].device:
                raise ValueError(f"ENN is on {theta.device} but the model is on {params[n].device}; "
                                 f"move it with editor.to(device)")
            out[n] = theta.to(params[n].dtype)
        return out

    def shift(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """θ − W per base weight, in the model's layout: the part of every ENN edit that is its trained base."""
        params = dict(model.named_parameters())
        return {n: self.theta[_key(n)] - params[n].detach().float() for n in self.base_names}

    def memory_bytes(self) -> int:
        """Bytes of ENN's trained parameters (θ copies and step sizes); Adam keeps two more of the same in
        training."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    @classmethod
    def default_config(cls, task: str | None = None, variant: str = "mend", **overrides) -> ENNConfig:
        """The official settings: c_base 10 for generation, 1 otherwise."""
        super().default_config(task, variant, **overrides)  # refuses MEND's variants
        return ENNConfig(c_base=10.0 if task == "gen" else 1.0)

    @classmethod
    def train_overrides(cls, task: str | None = None) -> dict:
        """The official step-size learning rate, lr_lr 1e-3."""
        return {"lr_lr": 1e-3}

    # -- editing ------------------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer_or_batch, examples=None) -> Edit:
        """An :class:`Edit` for one or many ``EditExample``s (with a tokenizer) or a prepared ``EditBatch``.

        One forward of the θ-model on x_e and one backward to the edited layers' outputs; the inner step is
        ``−lr_ℓ Σ_t δ_t u_tᵀ`` (factors) on top of the shift θ − W (dense). Several requests are edited together
        (their pooled mean NLL). In training mode (and not ``first_order``) the rows keep their graph, so the
        meta-gradient reaches θ and the step sizes through ∇W.
        """
        return self._edit(model, tokenizer_or_batch, examples, separate=False)

    def edit_many(self, model: nn.Module, tokenizer_or_batch, examples=None) -> EditSet:
        """One edit per request in the same pass: an :class:`EditSet` whose ``shared`` part is the shift θ − W."""
        return self._edit(model, tokenizer_or_batch, examples, separate=True)

    def _edit(self, model: nn.Module, tokenizer_or_batch, examples, separate: bool) -> Edit | EditSet:
        batch = as_batch(model, tokenizer_or_batch, examples)
        enc = batch.edit_inner if hasattr(batch, "edit_inner") else batch
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        theta = self.weights(model)
        second_order = self.training and not self.config.first_order
        # the fused SDPA kernels (flash, memory-efficient) have no double backward: a second-order meta-gradient
        # needs the math attention, which is built of differentiable ops (same values, more memory)
        attention = sdpa_kernel(SDPBackend.MATH) if second_order else nullcontext()
        with torch.enable_grad(), attention, rank1.capture(model, self.names) as cap:
            logits = forward(model, enc, params=theta or None)
            loss = (nll_per_example(self.kind, logits, enc["labels"]).sum() if separate
                    else nll(self.kind, logits, enc["labels"]))
            rows = cap.rows(loss, create_graph=second_order)
        factors = {n: Factors(-self.edit_lrs[i] * rows[n].delta, rows[n].u, self.conv1d[n])
                   for i, n in enumerate(self.names)}
        shared = self.shift(model)
        n = int(enc["input_ids"].shape[0])
        meta = {"editor": self.alg, "n_requests": n}
        if separate:
            return EditSet(factors, {k: r.owner for k, r in rows.items()}, n, meta, shared,
                           {k: (r.u.detach(), r.owner) for k, r in rows.items()})
        edit = Edit(factors) + Edit(dense=shared) if shared else Edit(factors)
        edit.meta = meta
        return edit

    def aux_loss(self, model: nn.Module, batch, pre_loc_logits: torch.Tensor) -> torch.Tensor:
        """c_base · KL(original ‖ θ-model) on ``batch.loc`` (the official ``base_loss: distill``); zero without
        ``train_base``. ``pre_loc_logits``: the original model's logits on ``batch.loc``."""
        if not self.base_names:
            return pre_loc_logits.new_zeros((), dtype=torch.float32)
        post = forward(model, batch.loc, params=self.weights(model))
        return self.config.c_base * kl_loc(self.kind, pre_loc_logits, post, batch.loc)

    def param_groups(self, lr: float, lr_lr: float) -> list[dict]:
        """θ at ``lr`` (official 1e-5) and the step sizes at ``lr_lr`` (official 1e-3), for one optimiser."""
        groups = [{"params": list(self.theta.values()), "lr": lr}] if self.base_names else []
        return groups + [{"params": [self.edit_lrs], "lr": lr_lr}]

    # -- saving -------------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"config": asdict(self.config), "kind": self.kind, "names": self.names,
                "shapes": {n: list(self.base["shapes"][n]) for n in self.names}, "conv1d": self.conv1d,
                "base_shapes": {n: list(self.theta[_key(n)].shape) for n in self.base_names}}

    @classmethod
    def from_config_dict(cls, cfg: dict) -> ENN:
        return cls(ENNConfig(**cfg["config"]), cfg["names"], cfg["conv1d"], cfg["kind"], cfg["base_model"],
                   {n: tuple(s) for n, s in cfg["base_shapes"].items()})

    def extra_repr(self) -> str:
        return (f"base={self.base['name']!r}, weights={len(self.names)}, trained copies={len(self.base_names)}, "
                f"memory_bytes()={self.memory_bytes():,}")
