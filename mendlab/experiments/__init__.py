"""Experiments: runners that the CLI, the notebooks and the benchmarks share. Each takes model names or
objects and returns pandas DataFrames; ``mendlab`` commands write them under ``results/`` with a provenance
sidecar (:mod:`~mendlab.experiments.report`).

- :mod:`~mendlab.experiments.editors`: the task of a zoo model and the one cache of editors (trained, or FT's
  learning rate swept on validation requests);
- :mod:`~mendlab.experiments.evaluate`: scoring an editor on held-out edits, one edit up close;
- :mod:`~mendlab.experiments.compare`: the method comparison (paper Table 4);
- :mod:`~mendlab.experiments.ablations`: the editor-network ablations (paper Table 6);
- :mod:`~mendlab.experiments.sequential`: T edits one after another to one model (retention, drawdown);
- :mod:`~mendlab.experiments.batch`: k edits at once as one edit, pooled or aggregated (paper Table 5);
- :mod:`~mendlab.experiments.report`: results tables, row by row, with provenance.
"""

from mendlab.experiments import ablations, batch, report, sequential  # noqa: E402  (submodules)
from mendlab.experiments.compare import DEFAULT_SETUPS, compare, compare_budget, editor_settings, summarize
from mendlab.experiments.editors import (
                                         FT_LRS,
                                         _task_key,
                                         editor_for,
                                         editor_path,
                                         ft_editor,
                                         task_for,
                                         train_editor,
                                         world_of_run,
)
from mendlab.experiments.evaluate import edit_report, evaluate_editor, target_probability
from mendlab.nets import NetConfig
from mendlab.train import TrainConfig

__all__ = ["DEFAULT_SETUPS", "FT_LRS", "NetConfig", "TrainConfig", "_task_key", "ablations", "batch", "compare",
           "compare_budget", "edit_report", "editor_for", "editor_path", "editor_settings", "evaluate_editor",
           "ft_editor", "report", "sequential", "summarize", "target_probability", "task_for", "train_editor",
           "world_of_run"]
