"""Architecture registry: which weights MEND edits, per ``config.model_type``.

Families are looked up by ``config.model_type`` only, never by checkpoint name.
A family's ``default_weights(config)`` gives parameter names relative to the
*base model* (``GPT2Model``, ``BartModel``, ``BertModel``, ...);
:func:`default_edited_weights` resolves them to full names of a head model.

Weight layout is decided by the module that owns the parameter: HF ``Conv1D``
(GPT-2) stores ``[in_features, out_features]``, ``nn.Linear`` stores
``[out_features, in_features]``. :func:`shape_key` always returns
``(in_features, out_features)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig
from transformers.pytorch_utils import Conv1D

_AUTO_CLASSES = {
    "decoder": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "classifier": "AutoModelForSequenceClassification",
}


class UnsupportedModelError(ValueError):
    """The model's ``config.model_type`` has no registered :class:`Family`."""


@dataclass(frozen=True)
class Family:
    """How MEND treats one architecture.

    Attributes:
        model_type: ``config.model_type``, e.g. ``"gpt2"``.
        kind: ``"decoder"``, ``"seq2seq"`` or ``"classifier"``.
        auto_class: name of the ``transformers`` Auto class that loads the head model.
        conv1d: whether the default weights are HF ``Conv1D`` (stored ``[in, out]``).
            Documentation only; layouts are read from the owning modules.
        default_weights: ``config -> names`` relative to the base model, ``.weight`` only.
    """

    model_type: str
    kind: str
    auto_class: str
    conv1d: bool
    default_weights: Callable[[PretrainedConfig], list[str]]

    def __post_init__(self) -> None:
        if self.kind not in _AUTO_CLASSES:
            raise ValueError(f"Family.kind must be one of {sorted(_AUTO_CLASSES)}, got {self.kind!r}")


REGISTRY: dict[str, Family] = {}


def register(family: Family) -> None:
    """Add ``family`` to the registry, replacing any family with the same model type."""
    if not isinstance(family, Family):
        raise TypeError(f"register() expects a Family, got {type(family).__name__}")
    REGISTRY[family.model_type] = family


def supported() -> tuple[str, ...]:
    """Sorted model types that have a registered family."""
    return tuple(sorted(REGISTRY))


def _model_type(obj: object) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, PretrainedConfig):
        return obj.model_type
    config = getattr(obj, "config", None)
    if isinstance(config, PretrainedConfig):
        return config.model_type
    raise TypeError(f"expected a model, a PretrainedConfig or a model_type string, got {type(obj).__name__}")


def get_family(obj: object) -> Family:
    """The :class:`Family` of a ``PreTrainedModel``, a ``PretrainedConfig`` or a model_type string."""
    model_type = _model_type(obj)
    if model_type in REGISTRY:
        return REGISTRY[model_type]
    raise UnsupportedModelError(
        f"model_type {model_type!r} has no default MEND weights; supported model types: "
        f"{', '.join(supported())}. Pass the weights to edit explicitly, e.g. "
        "edited_weights(model, names=['transformer.h.5.mlp.c_fc.weight', ...]) or "
        "MEND.for_model(model, config, names=[...]) (full names from model.named_parameters()), "
        "or register the architecture with mendlab.families.register(Family(...))."
    )


_KIND_BY_HEAD = (("ForCausalLM", "decoder"), ("LMHeadModel", "decoder"), ("ForConditionalGeneration", "seq2seq"),
                 ("ForSeq2SeqLM", "seq2seq"), ("ForSequenceClassification", "classifier"))


def kind_of(model: nn.Module) -> str:
    """``"decoder"``, ``"seq2seq"`` or ``"classifier"``: the registered family's kind, else read from the head
    class (``LlamaForCausalLM`` → decoder), so that a model of an unregistered type can still be edited on
    explicitly named weights."""
    if _model_type(model) in REGISTRY:
        return REGISTRY[_model_type(model)].kind
    head = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False) and "ForSequenceClassification" not in head:
        return "seq2seq"
    for suffix, kind in _KIND_BY_HEAD:
        if head.endswith(suffix):
            return kind
    raise UnsupportedModelError(f"{head} (model_type {_model_type(model)!r}) is not registered and its head "
                                "says neither causal LM, seq2seq LM nor sequence classification; register it with "
                                "mendlab.families.register(Family(...))")


def _param(model: nn.Module, name: str, params: dict | None = None) -> nn.Parameter:
    """The parameter ``name`` of ``model``; ``params``: ``dict(model.named_parameters())`` when the caller has it
    (building it walks every module, which costs more than a tiny model's forward pass when done per name)."""
    params = dict(model.named_parameters()) if params is None else params
    if name in params:
        return params[name]
    candidates = [n for n in params if n.endswith("." + name)]
    candidates += [n for n in difflib.get_close_matches(name, params, n=5, cutoff=0.6) if n not in candidates]
    hint = f"; close candidates: {candidates[:5]}" if candidates else ""
    raise KeyError(f"{name!r} is not a parameter of {type(model).__name__}{hint}")


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def _matrix(model: nn.Module, name: str, params: dict | None = None) -> nn.Parameter:
    param = _param(model, name, params)
    if param.dim() != 2:
        raise ValueError(f"{name!r} has shape {tuple(param.shape)}; MEND edits 2-D weight matrices only")
    owner = _owner(model, name)
    if not isinstance(owner, (nn.Linear, Conv1D)) or name.rpartition(".")[2] != "weight":
        # the rank-1 gradient u δᵀ is built from a layer's input and output gradient: only a linear map has one
        raise ValueError(f"{name!r} belongs to a {type(owner).__name__}; MEND edits the weight of a Linear or "
                         "Conv1D layer only (embeddings and other tables have no rank-1 input/output gradient)")
    return param


def is_conv1d(model: nn.Module, name: str, params: dict | None = None) -> bool:
    """Whether parameter ``name`` belongs to an HF ``Conv1D`` (stored ``[in, out]``)."""
    _param(model, name, params)
    return isinstance(_owner(model, name), Conv1D)


def shape_key(model: nn.Module, name: str, params: dict | None = None) -> tuple[int, int]:
    """``(in_features, out_features)`` of the 2-D weight ``name``, whatever its storage layout (``params``: see
    ``_param``)."""
    params = dict(model.named_parameters()) if params is None else params
    rows, cols = _matrix(model, name, params).shape
    return (rows, cols) if is_conv1d(model, name, params) else (cols, rows)


def default_edited_weights(model: nn.Module) -> list[str]:
    """Full names (as in ``model.named_parameters()``) of the family's default edited weights."""
    family = get_family(model)
    params = dict(model.named_parameters())
    prefix = getattr(model, "base_model_prefix", "")
    names = []
    for rel in family.default_weights(model.config):
        tried = [rel, f"{prefix}.{rel}"] if prefix else [rel]
        full = next((n for n in tried if n in params), None)
        if full is None:
            raise KeyError(
                f"default weight of family {family.model_type!r} not found in {type(model).__name__}; tried {tried}"
            )
        _matrix(model, full, params)
        if is_conv1d(model, full, params) != family.conv1d:
            raise ValueError(f"family {family.model_type!r} says conv1d={family.conv1d}, but {full!r} disagrees")
        names.append(full)
    return names


def edited_weights(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """The weights to edit: ``names`` validated as full 2-D parameter names, or the family defaults.

    Explicit names bypass the registry, so they work for unregistered architectures.
    """
    if names is None:
        return default_edited_weights(model)
    if isinstance(names, str):
        raise TypeError("names must be a sequence of parameter names, not a single string")
    names = list(names)
    if not names:
        raise ValueError("names is empty; pass at least one weight name or None for the defaults")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate weight names: {duplicates}")
    params = dict(model.named_parameters())
    for name in names:
        _matrix(model, name, params)
    return names


def _count(config: PretrainedConfig, *attrs: str) -> int:
    for attr in attrs:
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(config).__name__} has none of {attrs}")


def _last(n: int, k: int) -> range:
    return range(max(n - k, 0), n)


def _gpt_style(fc_in: str, fc_out: str) -> Callable[[PretrainedConfig], list[str]]:
    """``h.{i}.mlp.{fc_in,fc_out}.weight`` for the last 3 blocks."""

    def weights(config: PretrainedConfig) -> list[str]:
        n = _count(config, "n_layer", "num_layers", "num_hidden_layers")
        return [f"h.{i}.mlp.{w}.weight" for i in _last(n, 3) for w in (fc_in, fc_out)]

    return weights


def _t5(config: PretrainedConfig) -> list[str]:
    """``wi`` (v1.0) or ``wi_0`` (v1.1 gated; never ``wi_1``) and ``wo`` of the last 2 blocks of each stack."""
    gated = getattr(config, "is_gated_act", str(config.feed_forward_proj).startswith("gated"))
    wi = "wi_0" if gated else "wi"
    n_enc = _count(config, "num_layers")
    n_dec = _count(config, "num_decoder_layers", "num_layers")
    enc = [f"encoder.block.{i}.layer.1.DenseReluDense.{w}.weight" for i in _last(n_enc, 2) for w in (wi, "wo")]
    dec = [f"decoder.block.{i}.layer.2.DenseReluDense.{w}.weight" for i in _last(n_dec, 2) for w in (wi, "wo")]
    return enc + dec


def _bart(config: PretrainedConfig) -> list[str]:
    """``fc1``/``fc2`` of the last 2 encoder layers, then of the last 2 decoder layers."""
    n_enc = _count(config, "encoder_layers")
    n_dec = _count(config, "decoder_layers")
    enc = [f"encoder.layers.{i}.{w}.weight" for i in _last(n_enc, 2) for w in ("fc1", "fc2")]
    dec = [f"decoder.layers.{i}.{w}.weight" for i in _last(n_dec, 2) for w in ("fc1", "fc2")]
    return enc + dec


def _bert(config: PretrainedConfig) -> list[str]:
    """``intermediate.dense`` and ``output.dense`` of the last 3 layers."""
    n = _count(config, "num_hidden_layers")
    return [f"encoder.layer.{i}.{w}.dense.weight" for i in _last(n, 3) for w in ("intermediate", "output")]


for _family in (
    Family("gpt2", "decoder", "AutoModelForCausalLM", True, _gpt_style("c_fc", "c_proj")),
    Family("gpt_neo", "decoder", "AutoModelForCausalLM", False, _gpt_style("c_fc", "c_proj")),
    Family("gptj", "decoder", "AutoModelForCausalLM", False, _gpt_style("fc_in", "fc_out")),
    Family("t5", "seq2seq", "AutoModelForSeq2SeqLM", False, _t5),
    Family("bart", "seq2seq", "AutoModelForSeq2SeqLM", False, _bart),
    Family("bert", "classifier", "AutoModelForSequenceClassification", False, _bert),
):
    register(_family)
del _family
