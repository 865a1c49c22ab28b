"""Training curves, shared by every trainer: TensorBoard event files in ``<run>/tb`` (so
``tensorboard --logdir pinwork`` shows every run), read back into ``<run>/curves.png`` at the end of a run,
and the under-training rule that ``pinlift.summary`` applies to them."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TB_DIR = "tb"
CURVES = "curves.png"
TRAIN_LOSS = "loss/train"   # the tag of every trainer's per-step training loss, which the rule reads


class Curves:
    """A run's scalars, written by the main rank only (``enabled``). A run resumed after ``start_step`` steps
    appends a new event file that purges the steps an interrupted run logged past its checkpoint."""

    def __init__(self, run_dir: Path | str, start_step: int = 0, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter   # torch only where events are written

            self.writer = SummaryWriter(str(self.run_dir / TB_DIR), purge_step=start_step + 1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Add each ``tag: value`` at global ``step``."""
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Write what is logged (at a checkpoint, so a resumed run finds every step before it)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Close the event file and draw ``curves.png`` from every event file of the run."""
        if self.writer is not None:
            self.writer.close()
            plot(self.run_dir)


def read_scalars(run_dir: Path | str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's event files: ``tag -> [(step, value), ...]`` ({} without event files)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    path = Path(run_dir) / TB_DIR
    if not path.is_dir():
        return {}
    logging.getLogger("tensorboard").setLevel(logging.ERROR)   # not its warning for each resumed run's purge
    acc = EventAccumulator(str(path), size_guidance={SCALARS: 0}).Reload()   # 0: keep every event
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def plot(run_dir: Path | str) -> Path | None:
    """``<run>/curves.png``: one panel per tag group (the tag up to its first ``/``); None without scalars."""
    from matplotlib.figure import Figure   # no pyplot: the process's backend is left alone

    scalars = read_scalars(run_dir)
    if not scalars:
        return None
    groups: dict[str, dict[str, list]] = {}
    for tag, points in sorted(scalars.items()):
        group, _, name = tag.partition("/")
        groups.setdefault(group, {})[name or group] = points
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(5 * cols, 3.2 * rows), layout="constrained")
    for ax, (group, series) in zip(fig.subplots(rows, cols, squeeze=False).flat, groups.items()):
        if all(len(points) == 1 for points in series.values()):   # values at the end of the run: a bar each
            ax.bar_label(ax.barh(list(series), [points[0][1] for points in series.values()]), fmt="%.3f", fontsize=7)
            ax.set_title(f"{group} (step {max(points[0][0] for points in series.values())})")
            ax.tick_params(axis="y", labelsize=7)
            continue
        for name, points in series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, lw=1, label=name)
        ax.set(title=group, xlabel="step")
        if len(series) > 1:
            ax.legend(fontsize="xx-small", ncol=1 + len(series) // 12)
    for ax in fig.axes[len(groups):]:
        ax.set_visible(False)
    out = Path(run_dir) / CURVES
    fig.savefig(out, dpi=80)
    return out


def training_check(loss: Sequence[float], done: int, planned: int, *, unit: str = "steps", warmup: int = 0,
                   stopped_early: bool = False, min_share: float = 0.5) -> dict:
    """Whether a run looks under-trained: it stopped before ``min_share`` of its ``planned`` steps (or checks) or
    after some steps inside its LR ``warmup``, or its training ``loss`` (one value per step) fell more than 5% over
    its last 10% of steps (a least-squares line through them, at least 3). A run that stopped early is none of
    these. The record has ``reason`` when flagged."""
    tail = np.asarray(loss[-max(math.ceil(len(loss) / 10), 3):], float)
    drop = 0.0
    if len(tail) >= 3 and not stopped_early:
        slope, start = np.polyfit(np.arange(len(tail)), tail, 1)
        drop = float(-slope * (len(tail) - 1) / abs(start)) if start else 0.0
    record = {"done": done, "planned": planned, "short": not stopped_early and done < min_share * planned,
              "in_warmup": not stopped_early and 0 < done < warmup, "loss_drop": drop, "still_learning": drop > 0.05}
    reasons = [text for key, text in (("short", f"stopped at {done} of {planned} {unit}"),
                                      ("in_warmup", f"stopped inside its {warmup}-step LR warmup"),
                                      ("still_learning", f"training loss still falling ({drop:.1%} over its last "
                                                         "10% of steps)")) if record[key]]
    return {**record, "under_trained": bool(reasons), "reason": "; ".join(reasons)}
