"""The report's pictures: lineage (who cloned whom), hyperparameter schedules, learning curves.

All three share one x-axis, the training iteration. PBT copies the donor's
iteration count into the recipient, so a trial's iteration counts the training
behind its current weights, whoever did it; after a clone a trial continues from
the donor's iteration, and the results it reported past that point were
discarded (drawn faded). The best trial's ancestry (`ancestry.ancestry`) is drawn
in black in every picture.

matplotlib `Figure` objects without pyplot: no display, no global backend state.
Each function returns PNG bytes of a size fixed by `Layout`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from pbt_job.report.ancestry import Exploit, Segment, clones_before, discarded, inherited, segment_end
from pbt_job.report.run_data import Result, RunData

DPI = 100
WIDTH_PX = 1500
PLOT_RIGHT = 0.67
"""Figure fraction where the plots end; the legend is right of it."""
DISCARDED_OFFSET = 0.28
"""Lineage: discarded results sit this far below their lane, not hidden under the results that replaced them."""
TRIAL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
ANCESTRY_COLOR = "black"
ANCESTRY_BAND = dict(color=ANCESTRY_COLOR, alpha=0.25, solid_capstyle="round", zorder=1)
"""The best trial's ancestry: a wide shaded line under the trials' own."""
ARROW_COLOR = "0.45"
NO_METRIC_COLOR = "0.85"


@dataclass(frozen=True)
class Layout:
    """A picture's pixel size: a fixed frame plus one row per lane or panel.

    Multiples of 25 px keep `pixels / DPI` exact in binary, so the PNG is exactly this size.
    """

    frame_px: int
    row_px: int
    top_px: int = 100
    bottom_px: int = 75
    left_px: int = 170
    legend_left: float = 0.72

    def height_px(self, rows: int) -> int:
        return self.frame_px + self.row_px * max(rows, 1)

    def figure(self, rows: int) -> Figure:
        height = self.height_px(rows)
        fig = Figure(figsize=(WIDTH_PX / DPI, height / DPI), dpi=DPI)
        fig.subplots_adjust(left=self.left_px / WIDTH_PX, right=PLOT_RIGHT, top=1 - self.top_px / height,
                            bottom=self.bottom_px / height, hspace=0.35)
        return fig

    def legend(self, fig: Figure, handles: Sequence[Artist]) -> None:
        """One legend right of the plots, aligned with their top."""
        fig.legend(handles=handles, loc="upper left", frameon=False,
                   bbox_to_anchor=(self.legend_left, 1 - self.top_px / fig.bbox.height))


LINEAGE = Layout(frame_px=250, row_px=75, legend_left=0.745)  # right of the colour bar
SCHEDULES = Layout(frame_px=175, row_px=225)
CURVES = Layout(frame_px=175, row_px=225)


def lineage_png(run: RunData, chain: list[Segment]) -> bytes:
    """Trials as lanes over iterations, dots coloured by the PBT metric, one arrow per exploit.

    Args:
        run: The run.
        chain: The best trial's ancestry, highlighted (empty: none).
    """
    lanes = {trial: lane for lane, trial in enumerate(run.trials)}
    fig = LINEAGE.figure(len(lanes))
    ax = fig.add_subplot()
    scores = [r.metric for results in run.results.values() for r in results if r.metric is not None]
    colors = ScalarMappable(Normalize(min(scores, default=0.0), max(scores, default=1.0)), "viridis")

    for segment in chain:
        end = segment_end(segment, run.results)
        ax.plot([segment.start, end], [lanes[segment.trial]] * 2, linewidth=18, **ANCESTRY_BAND)
    for trial, lane in lanes.items():
        results = run.results.get(trial, [])
        flags = discarded(results)
        live = [r for r, gone in zip(results, flags) if not gone]
        ax.plot([r.iteration for r in live], [lane] * len(live), color="0.6", linewidth=1.5, zorder=2)
        for gone, drawn in ((False, live), (True, [r for r, g in zip(results, flags) if g])):
            ax.scatter([r.iteration for r in drawn], [lane + (DISCARDED_OFFSET if gone else 0)] * len(drawn),
                       c=[NO_METRIC_COLOR if r.metric is None else colors.to_rgba(r.metric) for r in drawn],
                       s=36 if gone else 90,
                       alpha=0.4 if gone else 1.0, edgecolors="0.2", linewidths=0.5, zorder=3)
        if live and live[-1].metric is not None:
            ax.annotate(f"{live[-1].metric:.3g}", (live[-1].iteration, lane), xytext=(10, 0),
                        textcoords="offset points", va="center", fontsize=9)
    received = {segment.received for segment in chain}
    for exploit in run.exploits:
        ours = exploit in received
        ax.add_patch(FancyArrowPatch(
            (exploit.donor_iteration, lanes[exploit.donor]), (exploit.donor_iteration, lanes[exploit.recipient]),
            arrowstyle="-|>", mutation_scale=16, connectionstyle="arc3,rad=0.25", shrinkA=7, shrinkB=7,
            color=ANCESTRY_COLOR if ours else ARROW_COLOR, linewidth=2.2 if ours else 1.1, zorder=4,
        ))

    best = run.best_trial()
    ax.set_yticks(range(len(lanes)), [f"{trial}{'  (best)' if trial == best else ''}" for trial in lanes])
    ax.set_ylim(len(lanes) - 0.4, -0.6)
    ax.set_xlim(left=0, right=_last_iteration(run) + 1)
    ax.set_ylabel("trial")
    ax.set_xlabel("training iteration (after an exploit the recipient continues from the donor's iteration)")
    ax.grid(axis="x", alpha=0.3)
    colorbar = fig.colorbar(colors, ax=ax, fraction=0.03, pad=0.02)
    colorbar.set_label(f"PBT metric {run.metric}\n({_better(run)} is better)")
    _title(fig, f"{run.name}: lineage, who cloned whom ({len(run.exploits)} exploits)",
           "Each lane is one trial, each dot one training iteration coloured by the PBT metric; "
           "the number at a lane's end is its latest metric.")
    LINEAGE.legend(fig, [
        Line2D([], [], color=ARROW_COLOR, marker=">", linewidth=1.1,
               label="exploit: the recipient (arrow head) copies\nthe donor's weights and hyperparameters"),
        Line2D([], [], color=ANCESTRY_COLOR, marker=">", linewidth=2.2, label="exploit in the best trial's ancestry"),
        Line2D([], [], linewidth=12, **ANCESTRY_BAND,
               label="best trial's ancestry: the trials whose\ntraining its final weights went through"),
        Line2D([], [], color="0.4", marker="o", linestyle="", alpha=0.4,
               label="result discarded by a later clone\n(drawn below its lane)"),
    ])
    return _png(fig)


def schedules_png(run: RunData, chain: list[Segment]) -> bytes:
    """One panel per mutated hyperparameter: each trial's value over iterations, the best trial's inherited bold."""
    fig = SCHEDULES.figure(len(run.mutations))
    axes = fig.subplots(max(len(run.mutations), 1), 1, sharex=True, squeeze=False)[:, 0]
    best_path = inherited(chain, run.results)
    for ax, name in zip(axes, run.mutations):
        values = [r.hyperparameters[name] for rs in run.results.values() for r in rs if name in r.hyperparameters]
        for trial, color in _trial_colors(run):
            _step(ax, _live(run.results.get(trial, [])), name, color=color, linewidth=1.5, alpha=0.85, label=trial)
        _step(ax, best_path, name, linewidth=8, **ANCESTRY_BAND,
              label=f"best trial {run.best_trial()}: inherited schedule\n(followed back through its clones)")
        for segment in chain[1:]:
            ax.axvline(segment.start, color=ANCESTRY_COLOR, linestyle=":", alpha=0.5,
                       label="clone in the best trial's ancestry")
        if values and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("training iteration")
    _title(fig, f"{run.name}: hyperparameter schedules discovered by PBT",
           "A trial's value changes only when it is exploited: it takes the donor's value and perturbs it.")
    _legend(fig, axes[0], SCHEDULES)
    return _png(fig)


def curves_png(run: RunData, chain: list[Segment]) -> bytes:
    """The PBT metric and each policy's mean episode return per trial over iterations, exploits marked."""
    panels: list[tuple[str, Callable[[Result], float | None]]] = [(f"PBT metric\n{run.metric}", lambda r: r.metric)]
    panels += [(f"return\n{policy}", lambda r, p=policy: r.returns.get(p)) for policy in run.policies]
    fig = CURVES.figure(len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    best_path = inherited(chain, run.results)
    for ax, (label, value) in zip(axes, panels):
        for trial, color in _trial_colors(run):
            _curve(ax, run, trial, value, color)
        points = [(r.iteration, v) for r in best_path if (v := value(r)) is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], linewidth=8, **ANCESTRY_BAND,
                label=f"best trial {run.best_trial()}: its weights' history\n(followed back through its clones)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("training iteration")
    _title(fig, f"{run.name}: learning curves ({_better(run)} metric is better)",
           "Returns are per policy (mean over the episodes finished in the iteration); gaps: no episode finished.")
    _legend(fig, axes[0], CURVES, extra=[
        Line2D([], [], color="0.4", marker="*", markersize=12, markeredgecolor="black", linestyle="",
               label="exploit: the trial restarts from the donor's\nresult here (in the recipient's colour)"),
        Line2D([], [], color="0.4", linestyle="--", alpha=0.4, label="results discarded by a later clone"),
    ])
    return _png(fig)


def _trial_colors(run: RunData) -> list[tuple[str, str]]:
    return [(trial, TRIAL_COLORS[i % len(TRIAL_COLORS)]) for i, trial in enumerate(run.trials)]


def _live(results: list[Result]) -> list[Result]:
    return [r for r, gone in zip(results, discarded(results)) if not gone]


def _step(ax: Axes, results: list[Result], name: str, **style) -> None:
    """Value at iteration i was used to train iteration i, i.e. over (i - 1, i]."""
    points = [(r.iteration, r.hyperparameters[name]) for r in results if name in r.hyperparameters]
    if points:
        xs = [points[0][0] - 1] + [x for x, _ in points]
        ys = [points[0][1]] + [y for _, y in points]
        ax.step(xs, ys, where="pre", **style)


def _curve(ax: Axes, run: RunData, trial: str, value: Callable[[Result], float | None], color: str) -> None:
    """A trial's results as line pieces; after a clone the new piece starts at the donor's result (a star)."""
    results = run.results.get(trial, [])
    received = [e for e in run.exploits if e.recipient == trial]
    pieces: list[tuple[bool, list[tuple[int, float | None]]]] = []
    for index, (result, gone, clone) in enumerate(zip(results, discarded(results), clones_before(results, received))):
        if not pieces or clone or gone != pieces[-1][0] or result.iteration <= results[index - 1].iteration:
            start = _donor_result(run, clone) if clone else None
            pieces.append((gone, [(clone.donor_iteration, value(start))] if start else []))
        pieces[-1][1].append((result.iteration, value(result)))
    label: str | None = trial
    for gone, piece in pieces:
        points = [(x, y) for x, y in piece if y is not None]
        style = dict(linestyle="--", alpha=0.4, linewidth=1) if gone else dict(linewidth=1.8, label=label)
        ax.plot([x for x, _ in points], [y for _, y in points], color=color, marker="o", markersize=3, zorder=2,
                **style)
        if not gone:
            label = None
    for exploit in received:
        donor_result = _donor_result(run, exploit)
        if donor_result and (y := value(donor_result)) is not None:
            ax.plot(exploit.donor_iteration, y, marker="*", markersize=15, color=color, markeredgecolor="black",
                    zorder=5)


def _donor_result(run: RunData, exploit: Exploit) -> Result | None:
    """The donor's result at the iteration it handed on (what the recipient continued from)."""
    at = Segment(exploit.donor, exploit.donor_iteration - 1, exploit.donor_iteration, exploit.time)
    found = inherited([at], run.results)
    return found[0] if found else None


def _last_iteration(run: RunData) -> int:
    return max((r.iteration for results in run.results.values() for r in results), default=1)


def _better(run: RunData) -> str:
    return "higher" if run.mode == "max" else "lower"


def _title(fig: Figure, title: str, subtitle: str) -> None:
    fig.suptitle(title, x=0.02, y=1 - 12 / fig.bbox.height, ha="left", va="top", fontsize=14, fontweight="bold")
    fig.text(0.02, 1 - 45 / fig.bbox.height, subtitle, ha="left", va="top", fontsize=10, color="0.3")


def _legend(fig: Figure, ax: Axes, layout: Layout, extra: Sequence[Artist] = ()) -> None:
    """The first panel's lines (a label repeated by several lines appears once), then `extra`."""
    handles, labels = ax.get_legend_handles_labels()
    layout.legend(fig, [*dict(zip(labels, handles)).values(), *extra])


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
