"""Edit records, readers for MEND's file formats, and collators to tensors.

``EditExample`` is one edit with its neighbourhood; the same record serves QA, fact-checking and generation.
The readers load the files the world writes *and* MEND's released files (paper Appendix C); a malformed
record is a :class:`DataFileError` naming the file, the line and the field. ``Collator`` turns examples into an
:class:`EditBatch` for a decoder, an encoder-decoder or a classifier; label masking (−100) lives only here.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

LABELS = ("REFUTES", "SUPPORTS")  # classifier: logit > 0 means SUPPORTS (label 1)


@dataclass(frozen=True)
class EditExample:
    """One edit request ``prompt → target`` and the inputs that measure it.

    ``rephrases`` mean the same as ``prompt`` (trained phrasings); ``heldout_rephrases`` use phrasings the
    base model never saw; ``locality`` is an unrelated ``(prompt, answer)`` whose answer must not change
    (answer ``""`` means "all tokens", for generation text). ``original`` is the answer before the edit.
    ``kind`` is ``"qa"``, ``"claim"`` or ``"gen"``; for ``"gen"`` the target carries its leading space and
    ``prompt + target`` is the original text.
    """

    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    heldout_rephrases: tuple[str, ...] = ()
    locality: tuple[str, str] | None = None
    original: str | None = None
    kind: str = "qa"
    subject: str = ""
    relation: str = ""

    def __post_init__(self):
        for name in ("prompt", "target"):
            check_text(getattr(self, name), f"EditExample.{name}")


def check_text(text, what: str) -> None:
    """A clear error unless ``text`` is a non-blank string that can be encoded (what an edit request needs)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        hint = (" (to language-model a text, pass (text, '') pairs to Collator.encode; an edit needs a new answer)"
                if what.endswith("target") else "")
        raise ValueError(f"{what} is {'empty' if not text else 'only whitespace'}: an edit request needs a "
                         f"prompt and the target the model should give, e.g. EditExample('Where was Zorbo "
                         f"born?', 'Kelvane'){hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid unicode ({err.reason} at {err.start}): {text[:40]!r}") from None


def drop_first_sentence(text: str) -> str:
    """The generation rephrase: the passage without its first sentence (or unchanged if it has one)."""
    _, sep, rest = text.partition(". ")
    return rest if sep and rest else text


# -- readers ----------------------------------------------------------------------------------------------------
class DataFileError(ValueError):
    """A data file that does not hold what its reader expects; the message names the file, line and field."""


def _where(path, line: int | None = None, field: str | None = None) -> str:
    return f"{path}" + (f", line {line}" if line else "") + (f", field {field!r}" if field else "")


def _read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSON-lines file."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{_where(path, n)}: not a JSON record ({err.msg} at column {err.colno}); "
                                    "a JSON-lines file holds one JSON object per line") from None
            if not isinstance(record, dict):
                raise DataFileError(f"{_where(path, n)}: a record must be a JSON object, not {type(record).__name__}")
            out.append((n, record))
    return out


def _check_field(r: dict, name: str, want: str, where) -> None:
    """Raise a :class:`DataFileError` unless ``r[name]`` (if present and not null) has shape ``want``:
    ``"str"``, ``"strs"`` (a list of strings) or ``"answers"`` (a list whose first item is ``{"answer": str}``;
    KILT's later items may hold only provenance)."""
    v = r.get(name)
    ok = v is None or (isinstance(v, str) if want == "str" else isinstance(v, list) and (
        all(isinstance(x, str) for x in v) if want == "strs" else
        bool(v) and isinstance(v[0], dict) and isinstance(v[0].get("answer"), str)))
    if not ok:
        shape = {"str": "a string", "strs": "a list of strings", "answers": 'a list starting with {"answer": ...}'}
        raise DataFileError(f"{where(name)}: must be {shape[want]}, got {json.dumps(v)[:60]}")


def _check_kilt_record(r: dict, kind: str, where) -> None:
    for name in ("input", "prediction", "subject", "relation", "loc", "loc_ans"):
        _check_field(r, name, "str", where)
    for name in ("alternatives", "filtered_rephrases", "heldout_rephrases"):
        _check_field(r, name, "strs", where)
    _check_field(r, "output", "answers", where)
    if not isinstance(r.get("input"), str):
        raise DataFileError(f"{where('input')}: missing; every record needs the question or claim to edit")
    if (r.get("loc") is None) != (r.get("loc_ans") is None):
        raise DataFileError(f"{where('loc_ans' if r.get('loc') is not None else 'loc')}: missing; 'loc' and "
                            "'loc_ans' come together")
    if r.get("loc") is None and r.get("output") is None:
        raise DataFileError(f"{where('output')}: missing; a record without 'loc' needs its gold answer "
                            "(it is another record's unrelated fact)")
    for name in ("alternatives", "prediction"):
        value = r.get(name)
        labels = value if isinstance(value, list) else [value] if value is not None else []
        if kind == "claim" and any(v not in LABELS for v in labels):
            raise DataFileError(f"{where(name)}: a FEVER label is one of {LABELS}, got {json.dumps(value)[:60]}")


def _kilt_examples(path: str | Path, kind: str) -> list[EditExample]:
    records = []
    for n, r in _read_jsonl(path):  # as MEND: drop the input from its rephrases, then filter
        _check_kilt_record(r, kind, lambda field, n=n: _where(path, n, field))
        rephrases = tuple(x for x in r.get("filtered_rephrases") or () if x != r["input"] and x.strip())
        if r.get("alternatives") and str(r["alternatives"][0]).strip() and str(r["input"]).strip() and rephrases:
            records.append((r, rephrases))
    n = len(records)
    out = []
    for i, (r, rephrases) in enumerate(records):
        if r.get("loc") is not None:
            locality = (r["loc"], r["loc_ans"])
        else:  # MEND draws x_loc from other records with their gold answer; we pair deterministically
            other = records[(i + max(1, n // 2)) % n][0]
            locality = (other["input"], other["output"][0]["answer"])
        out.append(EditExample(
            prompt=r["input"], target=r["alternatives"][0], rephrases=rephrases,
            heldout_rephrases=tuple(r.get("heldout_rephrases") or ()), locality=locality,
            original=r.get("prediction"), kind=kind, subject=r.get("subject") or "",
            relation=r.get("relation") or ""))
    return out


def read_zsre(path: str | Path) -> list[EditExample]:
    """zsRE-style JSONL → QA edits. Target = ``alternatives[0]`` (MEND samples one at random each time).

    Records with no alternative or no rephrase are dropped, as in MEND; the input is removed from its rephrases.
    A record that is not JSON, or whose fields have the wrong shape, is a :class:`DataFileError` naming the
    file, the line and the field.
    """
    return _kilt_examples(path, "qa")


def read_fever(path: str | Path) -> list[EditExample]:
    """FEVER-style JSONL → claim edits whose target is the flipped label ``alternatives[0]`` (errors as
    :func:`read_zsre`; labels must be ``SUPPORTS`` or ``REFUTES``)."""
    return _kilt_examples(path, "claim")


def _read_json(path: str | Path, fields: dict[str, str]) -> dict:
    """A JSON object file whose ``fields`` (name → ``"int"`` or ``"strs"``) are checked, with clear errors."""
    try:
        blob = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFileError(f"{_where(path, err.lineno)}: not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(blob, dict):
        raise DataFileError(f"{path}: must hold one JSON object, got {type(blob).__name__}")
    for name, want in fields.items():
        value = blob.get(name)
        if value is None:
            raise DataFileError(f"{_where(path, field=name)}: missing")
        if want == "int" and not isinstance(value, int):
            raise DataFileError(f"{_where(path, field=name)}: must be an integer, got {json.dumps(value)[:40]}")
        if want == "strs":
            bad = [i for i, x in enumerate(value) if not isinstance(x, str)] if isinstance(value, list) else [None]
            if bad:
                item = "" if bad[0] is None else f" (item {bad[0]} is {json.dumps(value[bad[0]])[:40]})"
                raise DataFileError(f"{_where(path, field=name)}: must be a list of strings{item}")
    return blob


def read_self_sample(path: str | Path, tokenizer) -> list[EditExample]:
    """MEND's ``self_sample`` JSON (``n_tokens``, ``completions``) → generation edits.

    The target is the last ``n_tokens`` tokens of each completion under ``tokenizer``; the split falls before
    the whitespace that precedes the first target token, so ``prompt + target`` is the completion.
    """
    blob = _read_json(path, {"n_tokens": "int", "completions": "strs"})
    n = int(blob["n_tokens"])
    out = []
    subjects = blob.get("subjects") or [""] * len(blob["completions"])  # our extension field
    if len(subjects) != len(blob["completions"]):
        raise DataFileError(f"{_where(path, field='subjects')}: {len(subjects)} subjects for "
                            f"{len(blob['completions'])} completions")
    for i, (text, subject) in enumerate(zip(blob["completions"], subjects, strict=True)):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= n:
            raise DataFileError(f"{_where(path, field=f'completions[{i}]')}: completion shorter than "
                                f"n_tokens={n}: {text[:60]!r}")
        cut = offsets[-n][0]
        while cut > 0 and text[cut - 1].isspace():
            cut -= 1
        prompt = text[:cut]
        out.append(EditExample(prompt=prompt, target=text[cut:], rephrases=(drop_first_sentence(prompt),),
                               kind="gen", subject=subject))
    return out


def read_wikitext(path: str | Path) -> list[str]:
    """Raw Wikitext-style lines (one passage per non-empty line) through ``datasets``' text loader."""
    import datasets

    ds = datasets.load_dataset("text", data_files=str(path), split="train", keep_in_memory=True)
    return [t.strip() for t in ds["text"] if t.strip()]


def read_nq(path: str | Path) -> list[tuple[str, str]]:
    """MEND's Natural Questions file ``{"questions": [...], "answers": [...]}`` → (question, answer) pairs."""
    blob = _read_json(path, {"questions": "strs", "answers": "strs"})
    if len(blob["questions"]) != len(blob["answers"]):
        raise DataFileError(f"{_where(path, field='answers')}: {len(blob['answers'])} answers for "
                            f"{len(blob['questions'])} questions")
    return list(zip(blob["questions"], blob["answers"], strict=True))


# -- collators --------------------------------------------------------------------------------------------------
Tensors = dict[str, torch.Tensor]


@dataclass
class EditBatch:
    """Tensors for one editing step (paper §3.1, Algorithm 1).

    ``edit_inner``: x_e with y_e; ``edit_outer``: an equivalent x'_e with y_e; ``loc``: unrelated x_loc with
    its own answer. Each is a dict of ``input_ids``/``attention_mask`` [B, T] and ``labels`` ([B, T] with −100
    off-target for sequences; [B] floats in {0, 1} for a classifier), plus ``decoder_input_ids``/
    ``decoder_attention_mask`` [B, T_dec] for encoder-decoders.
    """

    edit_inner: Tensors
    edit_outer: Tensors
    loc: Tensors | None = None
    examples: list[EditExample] = field(default_factory=list)

    def to(self, device) -> EditBatch:
        move = (lambda d: None if d is None else {k: v.to(device) for k, v in d.items()})
        return EditBatch(move(self.edit_inner), move(self.edit_outer), move(self.loc), self.examples)


class Collator:
    """Examples → tensors for one model ``kind`` (``"decoder"``, ``"seq2seq"`` or ``"classifier"``).

    - decoder: ``prompt + " " + target`` (no space for ``gen`` targets), labels on the target tokens only;
      a locality answer ``""`` labels every token (language modelling) of the first ``max_length``;
    - seq2seq: the tokenizer's own special tokens on both sides; ``decoder_input_ids`` are the labels shifted
      right behind ``decoder_start_token_id`` (HF's convention, used for BART and T5 alike);
    - classifier: labels 1.0 for ``SUPPORTS``, 0.0 for ``REFUTES``.
    Padding is on the right whatever ``tokenizer.padding_side`` says. A text longer than ``max_length`` tokens
    loses the start of its prompt (a warning, once); a target that does not fit (with one prompt token, for a
    decoder) is refused with a ``ValueError``, never cut.
    """

    def __init__(self, tokenizer, kind: str, *, decoder_start_token_id: int | None = None, max_length: int = 128):
        if kind not in ("decoder", "seq2seq", "classifier"):
            raise ValueError(f"unknown model kind {kind!r}")
        if kind == "seq2seq" and decoder_start_token_id is None:
            raise ValueError("seq2seq collation needs decoder_start_token_id (from the model's config)")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.tok, self.kind, self.start, self.max_length = tokenizer, kind, decoder_start_token_id, max_length

    @classmethod
    def for_model(cls, model, tokenizer, max_length: int | None = None, **kw) -> Collator:
        """The collator for ``model``: ``max_length`` is the model's position limit, or ``max_length`` if
        smaller (a model without one, as T5, reads ``max_length`` or 128 tokens)."""
        from mendlab.families import kind_of

        kind = kind_of(model)
        start = getattr(model.config, "decoder_start_token_id", None)
        if start is None and kind == "seq2seq":  # HF's T5 convention when a config leaves it unset
            start = getattr(model.config, "pad_token_id", None)
        limits = [n for n in (max_length, positions(model)) if n]
        return cls(tokenizer, kind, decoder_start_token_id=start, max_length=min(limits) if limits else 128, **kw)

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def _source(self, text: str) -> list[int]:
        """Token ids of an encoder input with the tokenizer's special tokens, left-truncated to fit."""
        ids = self.tok(text)["input_ids"]
        if len(ids) <= self.max_length:
            return ids
        _warn_once(f"an input of {len(ids)} tokens is longer than the model reads ({self.max_length}): its "
                   "start is cut off (later ones are cut without this warning)")
        side, self.tok.truncation_side = self.tok.truncation_side, "left"  # the tokenizer keeps special tokens
        try:
            return self.tok(text, truncation=True, max_length=self.max_length)["input_ids"]
        finally:
            self.tok.truncation_side = side

    def _target(self, ids: list[int], target: str, room: int) -> list[int]:
        if not ids:
            raise ValueError(f"the target {target[:60]!r} has no tokens under this tokenizer; edit towards a target "
                             "with visible text")
        if len(ids) > room:
            raise ValueError(f"the target {target[:60]!r} is {len(ids)} tokens, more than the {room} this model "
                             f"reads with its prompt (max_length {self.max_length}): shorten the target")
        return ids

    def encode(self, pairs: Sequence[tuple[str, str]], gen: bool = False) -> Tensors:
        """(prompt, target) pairs → padded tensors for this model kind."""
        tok, pad = self.tok, self.tok.pad_token_id
        if not pairs:
            raise ValueError("nothing to encode: pass at least one (prompt, target) pair")
        if self.kind == "classifier":
            bad = [t for _, t in pairs if t not in LABELS]
            if bad:
                raise ValueError(f"a classifier's targets are labels {LABELS}, got {bad[0]!r}")
            ids = [self._source(p) for p, _ in pairs]
            labels = torch.tensor([float(LABELS.index(t)) for _, t in pairs])
            return {"input_ids": self._pad(ids, pad), "attention_mask": (self._pad(ids, -1) != -1).long(),
                    "labels": labels}
        if self.kind == "seq2seq":
            src = [self._source(p) for p, _ in pairs]
            tgt = [self._target(tok(t)["input_ids"], t, self.max_length) if t.strip() else tok(t)["input_ids"]
                   for _, t in pairs]
            labels = self._pad(tgt, -100)
            dec_in = torch.cat([torch.full((len(tgt), 1), self.start), labels[:, :-1].clamp(min=0)], dim=1)
            dec_in[:, 1:][labels[:, :-1] == -100] = pad
            input_ids = self._pad(src, pad)
            return {"input_ids": input_ids, "attention_mask": (self._pad(src, -1) != -1).long(),
                    "labels": labels, "decoder_input_ids": dec_in,
                    "decoder_attention_mask": (labels != -100).long()}
        ids, labels = [], []
        for prompt, target in pairs:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            if target == "":  # language modelling on the first max_length tokens
                p = p[: self.max_length]
                ids.append(p)
                labels.append(list(p))
                continue
            t = self._target(tok(target if gen else " " + target, add_special_tokens=False)["input_ids"], target,
                             self.max_length - 1)
            if not p:
                raise ValueError(f"the prompt before target {target[:60]!r} is empty: a decoder predicts the "
                                 "target from it; give a prompt")
            if len(p) + len(t) > self.max_length:
                _warn_once(f"prompt and target are {len(p) + len(t)} tokens, more than the model reads "
                           f"({self.max_length}): the prompt's start is cut off (later ones without this warning)")
                p = p[len(p) + len(t) - self.max_length:]
            ids.append(p + t)
            labels.append([-100] * len(p) + t)
        return {"input_ids": self._pad(ids, pad), "attention_mask": (self._pad(ids, -1) != -1).long(),
                "labels": self._pad(labels, -100)}

    def __call__(self, examples: Sequence[EditExample], rng: random.Random | None = None) -> EditBatch:
        """Build x_e, x'_e (a rephrase: random with ``rng``, else the first) and x_loc tensors."""
        if not examples:
            raise ValueError("no edit requests: pass at least one EditExample")
        if len({e.kind == "gen" for e in examples}) > 1:
            raise ValueError("a batch mixes generation requests with others (their targets are spaced "
                             "differently): edit them in separate batches")
        for e in examples:
            for r in e.rephrases:
                check_text(r, f"a rephrase of {e.prompt[:40]!r}")
        gen = examples[0].kind == "gen"
        inner = [(e.prompt, e.target) for e in examples]
        outer = [((rng.choice(e.rephrases) if rng else e.rephrases[0]) if e.rephrases else e.prompt, e.target)
                 for e in examples]
        loc_pairs = [e.locality for e in examples if e.locality is not None]
        loc = self.encode(loc_pairs, gen=False) if loc_pairs else None
        return EditBatch(self.encode(inner, gen), self.encode(outer, gen), loc, list(examples))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    key = message.split(":")[-1]  # one warning per kind of cut, whatever the lengths
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def positions(model) -> int | None:
    """How many positions ``model`` reads (its position embeddings), or None if it has no limit (T5)."""
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
