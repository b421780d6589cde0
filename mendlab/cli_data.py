"""The data options of ``mendlab train``, ``eval`` and ``edit``: your own model and files in MEND's released
layouts (:mod:`mendlab.filetasks`) instead of the synthetic world."""

from __future__ import annotations

from mendlab.filetasks import ROLES, TASK_OF, DataFiles, check_model


def add_data_arguments(p) -> None:
    """``--data`` and its files on the parser ``p``."""
    g = p.add_argument_group("your own data", "MEND's released layouts instead of the synthetic world (with --model "
                                              "a local Hugging Face folder or a hub name)")
    g.add_argument("--data", default=None, choices=sorted(TASK_OF),
                   help="zsre: QA JSON lines (decoders, encoder-decoders); fever: claims JSON lines (classifiers); "
                        "wikitext: self_sample JSON completions (decoders)")
    g.add_argument("--train-file", default=None, help="the training split (train)")
    g.add_argument("--val-file", default=None, help="the validation split (train: early stopping; FT's lr sweep)")
    g.add_argument("--test-file", default=None, help="the held-out split (eval)")
    g.add_argument("--loc-file", default=None,
                   help="unrelated facts an edit must keep: Natural Questions JSON for zsre (else the records' own), "
                        "raw Wikitext passages for wikitext (required); none for fever")


def data_files(args, card: dict | None = None) -> DataFiles | None:
    """The :class:`DataFiles` of ``--data`` and its files on top of those the editor was trained on (``card``;
    so ``eval --test-file X`` scores against the training files' panel), else None (the zoo model's world)."""
    given = {r: f for r in ROLES if (f := getattr(args, f"{r}_file", None))}
    trained = (card or {}).get("data")
    layout = getattr(args, "data", None) or (trained or {}).get("data")
    if layout is None:
        if given:
            raise ValueError(f"--train-file, --val-file, --test-file and --loc-file need --data "
                             f"{'|'.join(sorted(TASK_OF))}: the layout the files are in")
        return None
    base = {r: trained.get(r) for r in ROLES} if trained and trained["data"] == layout else {}
    return DataFiles(layout, **{**base, **given})


def prepare(args, card: dict | None = None) -> DataFiles | None:
    """:func:`data_files` after checking that ``--model`` can be loaded and edited on them (clear errors)."""
    files = data_files(args, card)
    check_model(args.model, files)
    return files
