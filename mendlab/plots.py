"""Figures for the notebooks and chapters. Plotting only: every number comes from ``experiments`` / ``metrics``."""

from __future__ import annotations

from mendlab.editors import ALGS as ALG_ORDER
from mendlab.editors import LABELS as ALG_LABELS


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


def ablations(frame, paper: dict | None = None):
    """Edit success against drawdown per editor-network variant, one panel per task: the mean over seeds with
    the seeds' standard deviation as error bars; ``paper`` ({task: {variant: (ES, drawdown)}}) adds the paper's
    Table 6 figures as hollow markers. ``frame``: the long table of :func:`mendlab.experiments.ablations.ablate`.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mendlab.experiments.ablations import LABELS, ORDER, PAPER_TABLE6

    paper = PAPER_TABLE6 if paper is None else paper
    tasks = list(dict.fromkeys(frame["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4), squeeze=False)
    colours = dict(zip(ORDER, sns.color_palette("tab10", len(ORDER)), strict=True))
    for ax, task in zip(axes[0], tasks, strict=True):
        stats = frame[frame["task"] == task].groupby("variant")[["es_rephrase", "drawdown"]].agg(["mean", "std"])
        for variant in [v for v in ORDER if v in stats.index]:
            row = stats.loc[variant].fillna(0.0)
            ax.errorbar(row[("drawdown", "mean")], row[("es_rephrase", "mean")], xerr=row[("drawdown", "std")],
                        yerr=row[("es_rephrase", "std")], fmt="o", color=colours[variant], label=LABELS[variant],
                        capsize=3)
            if variant in paper.get(task, {}):
                es, dd = paper[task][variant]
                ax.scatter(dd, es, facecolors="none", edgecolors=colours[variant], s=60)
        ax.set_title(f"{task}: filled = measured, hollow = paper Table 6")
        ax.set_xlabel("drawdown (lower is better)")
        ax.set_ylabel("edit success on x'_e (higher is better)")
    axes[0][-1].legend(title="variant", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def ranks(frame, metrics=("es_rephrase", "drawdown")):
    """Edit success and drawdown against the editor's size, one line per task and one point per rank, the mean
    over seeds with the seeds' standard deviation as error bars, each point labelled with its rank. ``frame``: the
    long table of :func:`mendlab.experiments.ablations.ablate` with ``ranks`` (one variant)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, key in zip(axes[0], metrics, strict=True):
        for task, g in frame.groupby("task", sort=False):
            stats = g.groupby("rank").agg(size=("editor_params", "first"), mean=(key, "mean"), std=(key, "std"))
            stats = stats.sort_values("size").fillna({"std": 0.0})
            ax.errorbar(stats["size"], stats["mean"], yerr=stats["std"], fmt="o-", capsize=3, label=task)
            for rank, row in stats.iterrows():
                ax.annotate(f"r={rank}", (row["size"], row["mean"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set(xscale="log", xlabel="editor parameters (log)", ylabel=key,
               title=f"{key} against editor size")
        ax.legend(title="task", fontsize=8)
    fig.tight_layout()
    return fig


def sum_growth(frames: dict):
    """How the sum of k edits grows: ‖Σ_{b<k} ΔW_b‖ / (size of one edit) against k (log-log), one panel per entry
    of ``frames`` (label → :func:`mendlab.interference.sum_norms` table): the measured growth of each weight
    (points), the formula √(k (1 + (k − 1) ρ)) with each weight's coherence (lines) and √k, the growth of
    unrelated edits (black, dashed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(frames), figsize=(5.2 * len(frames), 3.8), squeeze=False, sharey=True)
    for ax, (label, frame) in zip(axes[0], frames.items(), strict=True):
        weights = list(dict.fromkeys(frame["weight"]))
        for name, colour in zip(weights, sns.color_palette("viridis", len(weights)), strict=True):
            g = frame[frame["weight"] == name]
            ax.plot(g["k"], g["predicted"], color=colour, linewidth=1)
            ax.plot(g["k"], g["measured"], "o", color=colour, markersize=4,
                    label=name.removeprefix("model.").removesuffix(".weight"))
        ks = sorted(set(frame["k"]))
        ax.plot(ks, [k ** 0.5 for k in ks], "k--", label="√k (unrelated edits)")
        ax.set(xscale="log", yscale="log", xlabel="edits summed k", title=label,
               ylabel="‖sum of k edits‖ / ‖one edit‖")
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def retention(frame, key: str = "es_rephrase"):
    """Sequential editing in one figure. Left: the mean ``key`` over the edits made so far (solid) and the
    drawdown (dashed, right axis) against the number of edits made, per editor (mean over seeds). Right: each
    editor's retention matrix R[i, t] (edit i after t + 1 edits; blank below the diagonal, where edit i is not
    made yet) for its first (model, task, seed). ``frame``: the long table of
    :func:`mendlab.experiments.sequential.run`."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mendlab.experiments.sequential import retention_matrix

    frame = frame.assign(editor=frame["editor"] if "editor" in frame else frame["alg"])  # older tables: no items
    items = sorted(set(frame["editor"]), key=_item_rank)
    fig, axes = plt.subplots(1, 1 + len(items), figsize=(5.5 + 3.8 * len(items), 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1.4] + [1] * len(items)})
    ax, twin = axes[0][0], axes[0][0].twinx()
    runs = ["editor", "model", "task", "seed"]
    so_far = frame.groupby([*runs, "step"])[key].mean().groupby(["editor", "step"]).mean()
    drawdown = frame.groupby([*runs, "step"])["drawdown"].first().groupby(["editor", "step"]).mean()
    for item, colour in zip(items, sns.color_palette("tab10", len(items)), strict=True):
        ax.plot(so_far[item].index + 1, so_far[item].to_numpy(), color=colour, label=item_label(item))
        twin.plot(drawdown[item].index + 1, drawdown[item].to_numpy(), color=colour, linestyle="--")
    ax.set(xlabel="edits made", ylabel=f"mean {key} of the edits so far (solid)", ylim=(-0.02, 1.02))
    twin.set_ylabel("drawdown (dashed)")
    ax.legend(title="editor", loc="lower left")
    for hax, item in zip(axes[0][1:], items, strict=True):
        mine = frame[frame["editor"] == item]
        first = (mine[runs[1:]] == mine[runs[1:]].iloc[0]).all(axis=1)
        sns.heatmap(retention_matrix(mine[first], key), ax=hax, vmin=0, vmax=1, cmap="viridis",
                    cbar=hax is axes[0][-1])
        hax.set(title=f"{item_label(item)}: {key}", xlabel="step t (after t + 1 edits)", ylabel="edit i")
    fig.tight_layout()
    return fig


def item_label(item: str) -> str:
    """``"mend:least_squares"`` → ``"MEND (least squares)"``; a bare alg → its label."""
    alg, _, aggregate = item.partition(":")
    name = ALG_LABELS.get(alg, alg)
    return f"{name} ({aggregate.replace('_', ' ')})" if aggregate and aggregate != "sum" else name


def _item_rank(item: str) -> tuple[int, str]:
    alg = item.partition(":")[0]
    return (ALG_ORDER.index(alg) if alg in ALG_ORDER else len(ALG_ORDER), item)


def batch(frame, paper: dict | None = None):
    """Batch editing against k, the number of edits made at once (log axis). Left: edit success on x'_e; right:
    drawdown. One line per editor item (and per setup where the frame has several; linestyle), the mean over
    seeds with the seeds' standard deviation as error bars; ``paper`` ({alg: {k: (ES, drawdown)}}, default
    Table 5's MEND and ENN) adds the paper's figures as hollow squares, coloured as the first item of that alg
    (grey without one). ``frame``: the long table of :func:`mendlab.experiments.batch.run`."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mendlab.experiments.batch import PAPER_TABLE5

    paper = PAPER_TABLE5 if paper is None else paper
    items = list(dict.fromkeys(frame["editor"]))
    colours = dict(zip(items, sns.color_palette("tab10", len(items)), strict=True))
    setups = list(dict.fromkeys(zip(frame["model"], frame["task"], strict=True)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (model, task, item), g in frame.groupby(["model", "task", "editor"], sort=False):
        stats = g.groupby("k")[["es_rephrase", "drawdown"]].agg(["mean", "std"]).sort_index()
        label = item if len(setups) == 1 else f"{item} ({model}:{task})"
        style = ("-", "--", ":", "-.")[setups.index((model, task)) % 4]
        for ax, key in zip(axes, ("es_rephrase", "drawdown"), strict=True):
            ax.errorbar(stats.index, stats[(key, "mean")], yerr=stats[(key, "std")].fillna(0.0), marker="o",
                        linestyle=style, color=colours[item], label=label, capsize=3)
    for alg, figures in paper.items():
        colour = next((colours[i] for i in items if i.partition(":")[0] == alg), "grey")
        label = f"paper {ALG_LABELS.get(alg, alg)} (Table 5)"
        for ax, j in zip(axes, (0, 1), strict=True):
            points = sorted((k, v[j]) for k, v in figures.items() if v[j] is not None)
            if points:
                ax.scatter(*zip(*points, strict=True), marker="s", s=60, facecolors="none", edgecolors=colour,
                           label=label)
    ks = sorted(set(frame["k"]) | {k for figures in paper.values() for k in figures})
    for ax, ylabel in zip(axes, ("edit success on x'_e (higher is better)", "drawdown (lower is better)"),
                          strict=True):
        ax.set(xscale="log", xlabel="edits made at once, k", ylabel=ylabel)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    axes[0].set(ylim=(-0.02, 1.02), title="filled = measured, hollow = paper Table 5")
    axes[1].legend(*axes[0].get_legend_handles_labels(), title="editor", bbox_to_anchor=(1.02, 1),
                   loc="upper left")
    fig.tight_layout()
    return fig


def playground_bars(results):
    """p(expected) before and after a playground change, one panel per result (an edit, or two compared): the
    prompt and its rephrasings should rise to the target, unrelated facts keep their own answer's p."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 2.8), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        count: dict = {}
        labels = [{"edit": "prompt", "rephrase": "rephr.", "unrelated": "unrel."}[c.role]
                  + f" {count.setdefault(c.role, []).append(c) or len(count[c.role])}" for c in result.rows]
        x = np.arange(len(result.rows))
        ax.bar(x - 0.2, [c.p_before for c in result.rows], 0.4, label="before", color="#9e9e9e")
        ax.bar(x + 0.2, [c.p_after for c in result.rows], 0.4, label="after", color="#1f77b4")
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("p(expected answer)")
        ax.set_title(result.editor, fontsize=10)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def editor_size(frame, ax=None):
    """Editor parameters against model parameters, both on log axes: MEND's editor (``editor_params``), a naive
    hypernetwork that outputs every weight's full update (``naive_params``, where the frame has it) and the model
    itself (y = x, dotted). ``frame``: one row per model with ``model``, ``base_params`` and those columns (the
    notebook computes them from ``scaling.estimate`` and ``ablations.reference_shapes``)."""
    import matplotlib.pyplot as plt

    frame = frame.sort_values("base_params")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.4))
    series = [("editor_params", "MEND's editor", "o")]
    if "naive_params" in frame:
        series.append(("naive_params", "naive: outputs the full update (at least)", "s"))
    for key, label, marker in series:
        ax.scatter(frame["base_params"], frame[key], marker=marker, label=label, zorder=3)
    lo, hi = frame["base_params"].min() / 2, frame["base_params"].max() * 2
    ax.plot([lo, hi], [lo, hi], ":", color="grey", label="as large as the model (y = x)")
    for _, row in frame.iterrows():
        ax.annotate(row["model"], (row["base_params"], row["editor_params"]), textcoords="offset points",
                    xytext=(4, -11), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="model parameters", ylabel="editor parameters",
           title="editor size against model size")
    ax.legend(fontsize=8, loc="upper left")
    ax.figure.tight_layout()
    return ax.figure


def memory_breakdown(frame, budgets=(24, 40, 80)):
    """Peak memory of one edit (left) and one editor-training step (right) per model, as bars stacked by what
    holds the memory (``mendlab.scaling.PARTS``: base weights, editor, Adam state, activations of each phase),
    float32 (plain) beside bfloat16 (hatched), with a card of each size in ``budgets`` (GiB) as a line.
    ``frame``: rows of ``scaling.Estimate.row()`` (bytes per part; ``model``, ``mode``, ``dtype``)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    from mendlab.scaling import GIB, PARTS

    models = list(dict.fromkeys(frame["model"]))
    colours = dict(zip(PARTS, sns.color_palette("tab10", len(PARTS)), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    x = np.arange(len(models))
    for ax, mode in zip(axes, ("edit", "train"), strict=True):
        for offset, dtype, hatch in ((-0.2, "float32", ""), (0.2, "bfloat16", "//")):
            rows = frame[(frame["mode"] == mode) & (frame["dtype"] == dtype)].set_index("model").reindex(models)
            bottom = np.zeros(len(models))
            for part in PARTS:
                height = rows[part].to_numpy(dtype=float) / GIB
                ax.bar(x + offset, height, 0.38, bottom=bottom, color=colours[part], hatch=hatch,
                       edgecolor="white", linewidth=0.5)
                bottom += height
        for gb in budgets:
            ax.axhline(gb, color="black", linestyle="--", linewidth=0.8)
            ax.text(len(models) - 0.5, gb, f"{gb} GB card", ha="right", va="bottom", fontsize=8)
        ax.set_xticks(x, models, rotation=20, ha="right")
        ax.set_title(f"one {'edit' if mode == 'edit' else 'editor-training step'}: plain float32, hatched bfloat16")
    axes[0].set_ylabel("estimated peak memory (GiB)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in PARTS]
    axes[1].legend(handles, [p.replace("_", " ") for p in PARTS], title="held by", bbox_to_anchor=(1.02, 1),
                   loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def estimate_check(frame, band: float = 0.15, measured: str = "measured_mib", estimated: str = "estimated_mib",
                   unit: str = "MiB", title: str = "memory estimate against measurement", ax=None):
    """Estimated against measured peak memory, log axes: one point per row (labelled model, mode, dtype), the
    line y = x where an estimate is exact and a band of ± ``band`` around it. ``frame``: rows with the two
    columns ``measured`` and ``estimated`` (``results/scaling_cpu.csv``, or a GPU table reshaped to them)."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6.2, 4.6))
    values = frame[[measured, estimated]].to_numpy(dtype=float)
    span = np.array([values.min() / 1.6, values.max() * 1.6])
    ax.fill_between(span, span * (1 - band), span * (1 + band), color="grey", alpha=0.2,
                    label=f"± {band:.0%} of the measurement")
    ax.plot(span, span, color="black", linewidth=0.8, label="estimate = measurement")
    for mode, marker in (("edit", "o"), ("train", "s")):
        rows = frame[frame["mode"] == mode]
        ax.scatter(rows[measured], rows[estimated], marker=marker, label=mode, zorder=3)
    for _, row in frame.iterrows():
        ax.annotate(f"{row['model']} {row['mode']} {row.get('dtype', '')}".strip(),
                    (row[measured], row[estimated]), textcoords="offset points", fontsize=7,
                    xytext=(5, -10 if row.get("dtype") == "bfloat16" else 2))
    ax.set(xscale="log", yscale="log", xlim=tuple(span), ylim=tuple(span), title=title,
           xlabel=f"measured peak ({unit})", ylabel=f"estimated peak ({unit})")
    ax.legend(fontsize=8, loc="upper left")
    ax.figure.tight_layout()
    return ax.figure
