"""The daily breakdown as a PNG (matplotlib, Agg backend: no display, safe in any process):
stacked bars of each day's conversations by outcome (handled by AI, resolved by a human, other
human involvement, abandoned) with the day's leads as a line."""

from __future__ import annotations

from pathlib import Path

from runtime.analytics.figures import Analytics

# The outcome stack, bottom to top: (field, label, colour). Colours match widget/dashboard.js.
STACK = (
    ("handled_by_ai", "Handled by AI", "#2563eb"),
    ("resolved_by_human", "Resolved by a human", "#16a34a"),
    ("other", "With a human / handed back", "#f59e0b"),
    ("abandoned", "Abandoned", "#9ca3af"),
)
LEADS_COLOUR = "#db2777"


def write_daily_chart(analytics: Analytics, path: Path, *, title: str | None = None,
                      dpi: int = 100) -> Path:
    """Write the chart of ``analytics.daily`` to ``path`` (PNG, 1000x500 px at ``dpi`` 100);
    returns the path. Creates missing parent directories. Raises OSError when it cannot write."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    days = analytics.daily
    labels = [d.day.strftime("%a %d %b") if len(days) <= 14 else d.day.strftime("%d %b") for d in days]
    xs = list(range(len(days)))
    fig = Figure(figsize=(10, 5), dpi=dpi)
    ax = fig.add_subplot()
    bottom = [0] * len(days)
    for field, label, colour in STACK:
        values = [getattr(d, field) for d in days]
        ax.bar(xs, values, bottom=bottom, label=label, color=colour, width=0.7)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.plot(xs, [d.leads for d in days], color=LEADS_COLOUR, marker="o", linewidth=2, label="Leads")
    ax.set_xticks(xs, labels, rotation=45 if len(days) > 7 else 0, ha="right" if len(days) > 7 else "center")
    if len(days) > 31:
        for i, tick in enumerate(ax.get_xticklabels()):
            tick.set_visible(i % max(1, len(days) // 15) == 0)
    ax.set_ylabel("conversations")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    t = analytics.totals
    ax.set_title(title or (
        f"{analytics.start.isoformat()} to {analytics.end.isoformat()} ({analytics.timezone}): "
        f"{t.conversations} conversations, {t.escalated} escalated, {t.leads} leads"))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
