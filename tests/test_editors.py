"""The editor registry, loading any saved editor by its alg, and the comparison table's layout."""

import matplotlib
import pandas as pd
import pytest

from mendlab import experiments, plots
from mendlab.cli import build_parser
from mendlab.editors import ALGS, EDITORS, MEND, TRAINED, Editor, TrainableEditor, editor_class, load_editor
from mendlab.editors.enn import ENN
from mendlab.editors.ft import FT, FTKL
from mendlab.editors.ke import KE, KEConfig

matplotlib.use("Agg")


def test_registry():
    assert set(TRAINED) < set(ALGS) and ALGS[-1] == "mend"
    assert [editor_class(a) for a in ALGS] == [FT, FTKL, KE, ENN, MEND]
    assert all(editor_class(a).alg == a for a in ALGS)
    assert all(issubclass(editor_class(a), Editor) for a in ALGS)
    assert all(EDITORS[a].trained == editor_class(a).trainable for a in ALGS)  # the registry agrees with the class
    assert all(editor_class(a).batched for a in TRAINED) and not FT.batched
    assert all(issubclass(editor_class(a), TrainableEditor) for a in TRAINED)
    with pytest.raises(ValueError, match="mend"):
        editor_class("rome")


def test_default_configs_come_from_the_editor_classes():
    from mendlab.editors.enn import ENNConfig
    from mendlab.editors.ft import FTConfig
    from mendlab.nets import NetConfig

    assert MEND.default_config("qa", "no_norm", rank=8) == NetConfig.variant("no_norm", rank=8)
    assert ENN.default_config("gen") == ENNConfig(c_base=10.0) and ENN.default_config("qa").c_base == 1.0
    assert ENN.train_overrides("qa") == {"lr_lr": 1e-3} and MEND.train_overrides("gen") == {}
    assert FTKL.default_config("qa") == FTConfig(locality=True) and not FT.default_config().locality
    for cls in (FT, KE, ENN):
        with pytest.raises(ValueError, match="MEND ablations"):
            cls.default_config("qa", "no_norm")


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
