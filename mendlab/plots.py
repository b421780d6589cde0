"""Figures for the notebooks and chapters. Plotting only: every number comes from ``experiments`` / ``metrics``."""

from __future__ import annotations

ALG_ORDER = ("ft", "ft_kl", "ke", "enn", "mend")
ALG_LABELS = {"ft": "FT", "ft_kl": "FT+KL", "ke": "KE", "enn": "ENN", "mend": "MEND"}


def compare(frame, metrics=("es_rephrase", "drawdown"), axes=None):
    """Bars of each metric per task and editor (mean over seeds, with the seeds' spread as error bars).

    ``frame``: the long table of :func:`mendlab.experiments.compare`. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = frame.assign(editor=frame["alg"].map(lambda a: ALG_LABELS.get(a, a)))
    order = [ALG_LABELS[a] for a in ALG_ORDER if a in set(frame["alg"])]
    if axes is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for ax, metric in zip(axes, metrics, strict=True):
        sns.barplot(data=data, x="task", y=metric, hue="editor", hue_order=order, errorbar="sd", ax=ax)
        ax.set_title({"es_rephrase": "edit success on x'_e (higher is better)",
                      "es_edit": "edit success on x_e (higher is better)",
                      "drawdown": "drawdown (lower is better)"}.get(metric, metric))
        ax.set_xlabel("")
        if ax is not axes[-1]:
            ax.get_legend().remove()
    axes[-1].legend(title="editor", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig = axes[0].figure
    fig.tight_layout()
    return fig
