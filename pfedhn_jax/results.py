"""What a run leaves on disk: the output-folder rules, results JSON, environment record, plots.

Plain Python and numpy (matplotlib only when plotting), so tables can be rebuilt from results
files without JAX. Every JSON file is written atomically; every figure comes from `plot_panels`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Sequence

from pfedhn_jax.distributed import is_main
from pfedhn_jax.errors import UserError

UNFINISHED = ("running", "interrupted", "diverged")  # results.json statuses of a run that did not get to its end
RUN_FILES = ("results.json", "curves.png", "checkpoints", "tensorboard")  # what a run writes into --out


def prepare_output_dir(out: str | None, overwrite: bool, resume: bool) -> Path | None:
    """Decide what to do with --out before anything expensive: start, resume, or refuse.

    A folder holding a checkpoint resumes (the loop then checks that the config matches); any other
    non-empty folder is refused unless --overwrite, which deletes only what a run writes (RUN_FILES);
    in a multi-process job process 0 deletes, and the others wait for it at
    `distributed.check_shared_folder`.
    """
    if out is None:
        if resume:
            raise UserError("--resume: needs --out, the folder of the run to continue")
        return None
    p = Path(out)
    check_output_path(p)
    if overwrite:
        if resume:
            raise UserError("--resume and --overwrite contradict each other; pass one of them")
        for name in RUN_FILES if is_main() else ():
            f = p / name
            shutil.rmtree(f) if f.is_dir() else f.unlink(missing_ok=True)
        return p
    if has_checkpoint(p):
        return p
    if resume:
        raise UserError(f"--resume: {p} holds no checkpoint to resume; drop --resume to start a new run")
    if p.is_dir() and any(p.iterdir()):
        why = restartable(p)
        if why is None:
            raise UserError(f"--out: {p} already holds results; choose a new folder, or pass --overwrite")
        from pfedhn_jax.signals import log
        log(f"{p} holds {why} and no finished checkpoint: nothing to resume, so the run starts over from step 0")
        for f in (sorted(p.iterdir()) if is_main() else ()):
            shutil.rmtree(f) if f.is_dir() else f.unlink(missing_ok=True)
    return p


def check_output_path(out: str | os.PathLike | None) -> None:
    """Refuse an --out that cannot be a folder we can write, before anything expensive: one that is a
    file, lies under a file, or cannot be created (e.g. /proc/runs). Leaves no trace: folders created
    to find out are removed again."""
    if out is None:
        return
    p = Path(out)
    if p.exists():
        if not p.is_dir():
            raise UserError(f"--out: {p} exists and is not a folder; choose another path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"--out: {p} is not writable; choose a folder you can write")
        return
    missing = [p]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    parent = missing[-1].parent
    if not parent.is_dir():
        raise UserError(f"--out: {p} cannot be created: {parent} is a file, not a folder; choose another path")
    try:
        p.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"--out: {p} cannot be created ({e.strerror or e}); choose a folder you can write") from None
    for d in missing:  # leave nothing behind: the run creates the folder when it first writes
        try:
            d.rmdir()
        except OSError:
            break


def _is_run_file(f: Path) -> bool:
    """What a run (or a group of runs) writes into its folder, their temporary files included."""
    name = f.name.removesuffix(".tmp")
    return name in RUN_FILES or name in ("summary.json", "summary.md")


def restartable(folder: Path) -> str | None:
    """A description of what `folder` holds when it is an unfinished run with no finished checkpoint
    (killed, or stopped by a second Ctrl-C, before its first checkpoint, or in the middle of writing
    it), which is safe to start over: it holds only run files (results.json, checkpoints/ with at
    most unfinished orbax temporaries, a group's seed-*/ and lr-*/ run folders and summaries) and
    every results.json there has an UNFINISHED status. None otherwise (the folder is refused)."""
    statuses = []

    def scan(d: Path, depth: int) -> bool:
        for f in d.iterdir():
            if f.is_dir() and depth < 2 and (f.name.startswith("seed-") or f.name.startswith("lr-")):
                if not scan(f, depth + 1):
                    return False
            elif not _is_run_file(f):
                return False
            elif f.name == "results.json":
                statuses.append((read_json(f) or {}).get("status"))
        return True

    if not scan(folder, 0) or any(s not in UNFINISHED for s in statuses):
        return None
    if not statuses:
        return "the start of a run (no results yet)"
    shown = sorted({str(s) for s in statuses})
    return f"an unfinished run (status {', '.join(shown)})"


def has_checkpoint(folder: str | os.PathLike) -> bool:
    """A finished orbax step folder (a digit-named folder) under <folder>/checkpoints."""
    d = Path(folder) / "checkpoints"
    return d.is_dir() and any(c.is_dir() and c.name.isdigit() for c in d.iterdir())


def _json_default(x: Any) -> Any:
    """Arrays -> lists, numeric scalars -> float, anything else (paths, devices) -> str."""
    if hasattr(x, "tolist"):
        return x.tolist()
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic write: a reader never sees a half-written file."""
    write_text(path, json.dumps(obj, indent=1, default=_json_default))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (a temporary file renamed over the target)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON file, or None when absent or unreadable (a half-written file counts as absent)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def environment() -> dict:
    """Backend, devices and versions, recorded with every result."""
    import jax
    import optax
    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "process_count": jax.process_count(), "jax": jax.__version__, "optax": optax.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count()}


@dataclasses.dataclass
class Line:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: dict = dataclasses.field(default_factory=dict)   # matplotlib keyword arguments


@dataclasses.dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    hlines: list[tuple[float, str, dict]] = dataclasses.field(default_factory=list)  # (y, label, style)
    vlines: list[tuple[float, str, dict]] = dataclasses.field(default_factory=list)  # (x, label, style)


def plot_panels(panels: list[Panel], path: str | os.PathLike, title: str, cols: int = 3) -> bool:
    """Draw panels side by side (up to `cols` a row) into a PNG; False if there is nothing to draw.

    Lines carry markers (evaluation points are sparse) and x ticks are integers (outer steps).
    """
    panels = [p for p in panels if p.lines]
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.5), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        for ln in p.lines:
            ax.plot(ln.x, ln.y, label=ln.label, **{"marker": "o", "markersize": 3, **ln.style})
        for y, label, style in p.hlines:
            ax.axhline(y, label=label, **{"ls": ":", "lw": 0.9, "color": "gray", **style})
        for x, label, style in p.vlines:
            ax.axvline(x, label=label, **{"ls": ":", "lw": 0.9, "color": "gray", **style})
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_run(results: dict, path: str | os.PathLike) -> bool:
    """A run's curves: pooled accuracy, evaluation loss, and the local training loss on its own panel
    (it is measured on training batches during local steps, so it is not comparable with the others)."""
    c = results.get("curves") or []
    steps = [r["step"] for r in c]
    col = lambda k: [r[k] for r in c]
    best = results.get("best") or {}
    vl = ([(best["best_step"], f"best val (test {best['test_acc']:.4f})", {})]
          if best.get("best_step", -1) > 0 else [])
    panels = [
        Panel("accuracy", "outer step", "pooled accuracy",
              [Line("val", steps, col("val_acc")), Line("test", steps, col("test_acc"))], vlines=vl),
        Panel("evaluation loss", "outer step", "cross-entropy",
              [Line("val", steps, col("val_loss")), Line("test", steps, col("test_loss"))]),
        Panel("local training loss", "outer step", "mean over local steps since the last evaluation",
              [Line("train (local steps)", steps, col("train_loss"), {"color": "tab:green"})]),
    ]
    cfg, data = results["config"], results.get("data") or {}
    title = (f"{cfg['algo']} on {data.get('label', cfg['dataset'])}, N={cfg['num_clients']}, "
             f"seed {cfg['seed']}, {results.get('curves', [{}])[-1].get('step', 0)} of {cfg['num_steps']} steps")
    return plot_panels(panels, path, title)


def tensorboard_writer():
    """tensorboardX's SummaryWriter class; one clear error when it is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise UserError("--tensorboard: needs tensorboardX: `pip install -e .[tensorboard]`") from e
    return SummaryWriter


def open_tensorboard(out: str | os.PathLike):
    """A SummaryWriter on <out>/tensorboard."""
    return tensorboard_writer()(str(Path(out) / "tensorboard"))


def log_scalars(writer, point: dict, step: int) -> None:
    """One evaluation's numbers as TensorBoard scalars (accuracy/*, loss/*)."""
    for k, v in point.items():
        if k not in ("step", "wall_s"):
            split, kind = k.split("_")  # train_loss, val_acc, ... -> loss/train, accuracy/val
            writer.add_scalar(f"{'accuracy' if kind == 'acc' else kind}/{split}", v, step)
    writer.flush()
