"""The editor registry, loading any saved editor by its alg, and the comparison table's layout."""

import matplotlib
import pandas as pd
import pytest

from mendlab import experiments, plots
from mendlab.cli import build_parser
from mendlab.editors import ALGS, MEND, TRAINED, editor_class, load_editor
from mendlab.editors.enn import ENN
from mendlab.editors.ft import FT, FTKL
from mendlab.editors.ke import KE, KEConfig

matplotlib.use("Agg")


def test_registry():
    assert set(TRAINED) < set(ALGS)
    assert [editor_class(a) for a in ALGS] == [MEND, FT, FTKL, KE, ENN]
    assert all(editor_class(a).alg == a for a in ALGS)
    assert all(editor_class(a).batched for a in TRAINED) and not FT.batched
    with pytest.raises(ValueError, match="mend"):
        editor_class("rome")


@pytest.mark.parametrize("alg", ["mend", "ke", "enn"])
def test_load_editor_dispatches_on_the_saved_alg(micro, tmp_path, alg):
    model, _, _ = micro("gpt2")
    config = KEConfig(hidden=8, cond_dim=8, weight_hidden=8) if alg == "ke" else None
    editor = editor_class(alg).for_model(model, config)
    editor.save_pretrained(tmp_path / alg)
    loaded = load_editor(tmp_path / alg, model)
    assert type(loaded) is type(editor) and not loaded.training
    with pytest.raises(FileNotFoundError):
        load_editor(tmp_path / "nothing", model)


def test_cli_takes_every_alg():
    parser = build_parser()
    for alg in ALGS:
        assert parser.parse_args(["train", "--alg", alg]).alg == alg
        assert parser.parse_args(["eval", "--alg", alg]).alg == alg
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--alg", "rome"])
    args = parser.parse_args(["compare", "--setup", "tiny-bart:qa", "--seeds", "0,1", "--world-seed", "0"])
    assert args.setup == ["tiny-bart:qa"] and args.world_seed == 0


def test_summarize_and_plot_layout():
    rows = [{"alg": a, "task": t, "seed": s, "es_edit": 1.0, "es_rephrase": 0.5 + 0.1 * s, "drawdown": 0.01}
            for t in ("claim", "qa") for a in ("ft", "mend") for s in (0, 1)]
    frame = pd.DataFrame(rows)
    table = experiments.summarize(frame)
    assert list(table.index) == ["ft", "mend"]
    assert table.loc["mend", ("qa", "es_rephrase")] == "0.550 ± 0.071"
    one_seed = experiments.summarize(frame[frame.seed == 0])
    assert one_seed.loc["ft", ("claim", "drawdown")] == "0.010"
    fig = plots.compare(frame)
    assert len(fig.axes) == 2
