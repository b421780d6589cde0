"""The README's commands for the paper's rows are exact: every flag exists, and hub names fail offline with a
message that says they need internet (never a traceback)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mendlab.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _paper_commands() -> list[list[str]]:
    text = README.read_text()
    section = text.split("### The paper's rows on your own GPU", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(c) for c in re.findall(r"`(mendlab [^`]+)`", section)]


def test_the_section_has_both_commands_of_every_row():
    commands = _paper_commands()
    assert len(commands) == 14 and {c[3] for c in commands} == {"train", "eval"}


@pytest.mark.parametrize("argv", _paper_commands(), ids=lambda a: f"{a[3]}-{a[a.index('--model') + 1]}")
def test_every_paper_command_parses(argv):
    args = build_parser().parse_args(argv[1:])
    assert args.profile == "full" and args.data in ("zsre", "fever", "wikitext")


@pytest.mark.parametrize("name", sorted({c[c.index("--model") + 1] for c in _paper_commands()
                                         if "/" in c[c.index("--model") + 1]}))
def test_hub_names_offline_say_they_need_internet(name, monkeypatch):
    from mendlab import filetasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="needs internet"):
        filetasks.check_model(name)
