"""Run reports: learning curves, the learning part of ``summary.json``, and sweep comparisons.

A training run writes ``metrics.jsonl`` into its run directory: one JSON object per learner step, with
``step``, ``time_s`` (wall-clock seconds since the run started) and namespaced values (``reward/…``,
``loss/…``, ``kl/…``, ``perf/…``, …); a key may be missing on some lines.

* :func:`read_metrics` reads it (a missing file is no metrics; a truncated last line, as left by a run
  that is still writing or was killed, is skipped).
* :func:`first_last` / :func:`learning_summary` say whether the rewards went up.
* :func:`learning_curve_png` draws one run; :func:`compare_runs` tabulates and draws several.
* :class:`CompareSweep` is a Hydra callback that compares the jobs of a multirun when it ends::

      antiphon -m learner.max_staleness=0,4 \\
          +hydra.callbacks.compare._target_=antiphon.report.CompareSweep

* CLI: ``python -m antiphon.report compare DIR...`` (run dirs, or one sweep dir) and
  ``python -m antiphon.report curve RUN_DIR``.

Plots use matplotlib's Agg canvas directly (never ``pyplot``), so no display or GUI toolkit is needed
and the process-wide backend is left alone. matplotlib is imported only when a plot is drawn.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from antiphon.jsonl import read_jsonl

PathLike = Union[str, Path]
METRICS_FILE = "metrics.jsonl"
REWARD_KEY = "reward/total"
# The comparison table's columns, in order (comparison.md and comparison.csv share them).
COLUMNS = ["label", "steps", "wall_clock_s", "trajectories_per_min", "reward_first", "reward_last",
           "reward_final", "note", "run_dir"]
_HEADERS = {"label": "run", "steps": "steps", "wall_clock_s": "wall-clock s",
            "trajectories_per_min": "trajectories/min", "reward_first": "reward first 20%",
            "reward_last": "reward last 20%", "reward_final": "final reward", "note": "note",
            "run_dir": "run dir"}


# ----------------------------------------------------------------------------------------------- reading
def metrics_path(path_or_run_dir: PathLike) -> Path:
    p = Path(path_or_run_dir)
    return p / METRICS_FILE if p.is_dir() else p


def read_metrics(path_or_run_dir: PathLike) -> List[Dict[str, Any]]:
    """The step records of ``metrics.jsonl`` (a file, or a run dir holding one), in file order.

    A missing file gives ``[]``. A last line that does not parse (a run still writing, or killed
    mid-write) is skipped; a bad line anywhere else is an error naming the file and line.
    """
    path = metrics_path(path_or_run_dir)
    try:
        return [rec for _, rec in read_jsonl(path, skip_truncated_last=True)]
    except FileNotFoundError:
        return []


def _by_step(metrics: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Records sorted by ``step`` (stable; a record without one keeps its position's rank)."""
    keyed = [(_num(m.get("step")), i, m) for i, m in enumerate(metrics)]
    return [m for _, _, m in sorted(keyed, key=lambda t: (t[1] if t[0] is None else t[0], t[1]))]


def _num(v: Any) -> Optional[float]:
    """A JSON number as float; anything else (missing, bool, string, null) is None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _series(metrics: Sequence[Dict[str, Any]], key: str, x_key: str = "step"):
    """(xs, ys) for records that have a number under ``key``; x falls back to the record index."""
    xs, ys = [], []
    for i, m in enumerate(metrics):
        y = _num(m.get(key))
        if y is None:
            continue
        x = _num(m.get(x_key))
        xs.append(float(i) if x is None else x)
        ys.append(y)
    return xs, ys


# ------------------------------------------------------------------------------------------ statistics
def first_last(metrics: Sequence[Dict[str, Any]], frac: float = 0.2,
               prefix: str = "reward/") -> Dict[str, Dict[str, Optional[float]]]:
    """Mean of every ``prefix*`` key over the first and the last ``frac`` of steps (in step order).

    Each window is ``floor(frac * n)`` steps, at least 1. A key missing from every record of a window
    gets ``None`` there (and ``delta`` None). NaN values are kept, so a NaN reward shows as NaN.
    Returns ``{key: {"first": .., "last": .., "delta": last - first}}`` sorted by key.
    """
    n = len(metrics)
    if n < 2:
        raise ValueError(f"first_last needs at least 2 steps, got {n}")
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    k = max(1, math.floor(n * frac + 1e-9))
    ordered = _by_step(metrics)
    head, tail = ordered[:k], ordered[-k:]
    keys = sorted({key for m in metrics for key in m if isinstance(key, str) and key.startswith(prefix)})
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for key in keys:
        first = _mean(_num(m.get(key)) for m in head)
        last = _mean(_num(m.get(key)) for m in tail)
        delta = None if first is None or last is None else last - first
        out[key] = {"first": first, "last": last, "delta": delta}
    return out


def _final(metrics: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    for m in reversed(_by_step(metrics)):
        v = _num(m.get(key))
        if v is not None:
            return v
    return None


def _wall_clock_s(metrics: Sequence[Dict[str, Any]]) -> Optional[float]:
    times = [t for t in (_num(m.get("time_s")) for m in metrics) if t is not None]
    return max(times) if times else None


def trajectories_per_min(metrics: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Trained trajectories per wall-clock minute.

    Preferred: the sum of ``rollout/trajectories`` (trajectories trained in each step) over the run's
    wall-clock (the largest ``time_s``). Otherwise the mean of the per-step ``perf/trajectories_per_min``.
    None when neither is logged (or there is no positive ``time_s`` for the first).
    """
    counts = [c for c in (_num(m.get("rollout/trajectories")) for m in metrics) if c is not None]
    wall = _wall_clock_s(metrics)
    if counts and wall and wall > 0:
        return sum(counts) / (wall / 60.0)
    return _mean(_num(m.get("perf/trajectories_per_min")) for m in metrics)


def learning_summary(metrics_or_run_dir: Union[PathLike, Sequence[Dict[str, Any]]],
                     frac: float = 0.2) -> Dict[str, Any]:
    """The learning part of ``summary.json`` (JSON-serialisable; never raises for short runs)::

        {"steps": 120, "last_step": 119, "wall_clock_s": 812.4, "trajectories_per_min": 35.1,
         "frac": 0.2, "reward": {"reward/total": {"first": .., "last": .., "delta": ..}, ...},
         "final": {"reward/total": 1.9, ...}, "improved": true}

    ``improved`` is whether reward/total's last-window mean beats its first-window mean (None if it
    cannot be said). With fewer than 2 steps ``reward`` is ``{}`` and ``note`` says why.
    """
    if isinstance(metrics_or_run_dir, (str, Path)):
        metrics = read_metrics(metrics_or_run_dir)
    else:
        metrics = list(metrics_or_run_dir)
    steps = [s for s in (_num(m.get("step")) for m in metrics) if s is not None]
    out: Dict[str, Any] = {
        "steps": len(metrics),
        "last_step": int(max(steps)) if steps else None,
        "wall_clock_s": _wall_clock_s(metrics),
        "trajectories_per_min": trajectories_per_min(metrics),
        "frac": frac, "reward": {}, "final": {}, "improved": None,
    }
    reward_keys = sorted({k for m in metrics for k in m if isinstance(k, str) and k.startswith("reward/")})
    out["final"] = {k: _final(metrics, k) for k in reward_keys}
    if len(metrics) < 2:
        out["note"] = "no metrics" if not metrics else "1 step: too few to compare first and last"
        return out
    out["reward"] = first_last(metrics, frac=frac)
    tot = out["reward"].get(REWARD_KEY)
    if tot and tot["delta"] is not None and not math.isnan(tot["delta"]):
        out["improved"] = tot["delta"] > 0
    return out


# ------------------------------------------------------------------------------------------------ plots
def _agg_figure(nrows: int, width: float = 9.0, row_height: float = 3.0):
    """A Figure on an Agg canvas (no pyplot, no GUI, process-wide backend untouched) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, row_height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def moving_average(ys: Sequence[float], window: int) -> List[float]:
    """Trailing moving average; the first ``window - 1`` points average what there is so far."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _auto_window(n: int) -> int:
    return max(1, min(50, n // 10))


def _plot_key(ax, metrics, key: str, color=None, window: Optional[int] = None, x_key: str = "step",
              label: Optional[str] = None) -> bool:
    xs, ys = _series(metrics, key, x_key)
    if not ys:
        return False
    line = ax.plot(xs, moving_average(ys, window or _auto_window(len(ys))), color=color, lw=1.8,
                   label=label or key)[0]
    ax.scatter(xs, ys, s=6, alpha=0.3, color=line.get_color(), linewidths=0)
    return True


def learning_curve_png(metrics: Sequence[Dict[str, Any]], out_png: PathLike,
                       keys: Optional[Sequence[str]] = None, run_name: Optional[str] = None,
                       window: Optional[int] = None) -> Path:
    """Learning curves of one run against step, as a PNG.

    Panel 1: ``reward/total``. Panel 2: the other ``reward/*`` components. Panel 3 (only if present):
    ``loss/*`` and ``kl/*``. ``keys`` restricts what is drawn (reward/total still goes in panel 1 if
    listed; other ``reward/*`` keys in panel 2; anything else in panel 3). Each key is drawn as raw
    points under a trailing moving average (``window`` steps; default n/10, 1..50). Panels with nothing
    to draw are left out. The title is ``run_name`` when given.
    """
    metrics = _by_step(metrics)
    if not metrics:
        raise ValueError("no metrics to plot")
    present = sorted({k for m in metrics for k in m if isinstance(k, str)})
    if keys is None:
        components = [k for k in present if k.startswith("reward/") and k != REWARD_KEY]
        others = [k for k in present if k.startswith(("loss/", "kl/"))]
        total = [REWARD_KEY]
    else:
        total = [k for k in keys if k == REWARD_KEY]
        components = [k for k in keys if k.startswith("reward/") and k != REWARD_KEY]
        others = [k for k in keys if not k.startswith("reward/")]
    panels = [(title, ks) for title, ks in (("reward/total", total), ("reward components", components),
                                            ("loss / kl", others))
              if any(_series(metrics, k)[1] for k in ks)]
    if not panels:
        raise ValueError(f"nothing to plot: none of {list(keys) if keys is not None else [REWARD_KEY]} "
                         f"has numeric values")
    fig, axes = _agg_figure(len(panels))
    for ax, (title, ks) in zip(axes, panels):
        for k in ks:
            _plot_key(ax, metrics, k, window=window)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(ks) > 1 or title != "reward/total":
            ax.legend(fontsize=8, loc="best")
    if run_name:
        fig.suptitle(run_name)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


# ------------------------------------------------------------------------------------------- comparison
def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def read_overrides(run_dir: PathLike) -> List[str]:
    """The job's command-line overrides, from Hydra's ``.hydra/overrides.yaml`` ([] if absent)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    loaded = OmegaConf.load(path)
    return [str(o) for o in loaded] if OmegaConf.is_list(loaded) else []


def _labels(run_dirs: Sequence[Path], label_keys: Optional[Sequence[str]]) -> List[str]:
    """One label per run from its overrides.

    With ``label_keys``: only overrides whose key is listed (full dotted key, or its last part:
    ``max_staleness`` matches ``learner.max_staleness``). Without: the overrides that differ between
    the runs (all of them when nothing differs). A run with no such override is labelled by its dir
    name; a label shared by several runs gets the dir name appended.
    """
    overrides = [read_overrides(d) for d in run_dirs]
    if label_keys is not None:
        wanted = set(label_keys)
        chosen = [[o for o in ovs if _override_key(o) in wanted
                   or _override_key(o).rsplit(".", 1)[-1] in wanted] for ovs in overrides]
    else:
        common = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
        chosen = [[o for o in ovs if o not in common] or ovs for ovs in overrides]
    labels = [" ".join(c) or d.name for c, d in zip(chosen, run_dirs)]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    labels = [lab if lab not in dup else str(d) if lab == d.name else f"{lab} ({d.name})"
              for lab, d in zip(labels, run_dirs)]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    return [f"{lab} ({d})" if lab in dup else lab for lab, d in zip(labels, run_dirs)]


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def find_job_dirs(sweep_dir: PathLike) -> List[Path]:
    """The job dirs of a Hydra sweep: dirs under it holding a ``.hydra`` folder, in natural order.

    Looks one level down first (``hydra.sweep.subdir`` defaults to the job number), then deeper.
    """
    root = Path(sweep_dir)
    found = [h.parent for h in root.glob("*/.hydra") if h.is_dir()]
    if not found:
        found = [h.parent for h in root.glob("**/.hydra") if h.is_dir() and h.parent != root]
    return sorted(found, key=_natural_key)


def _metrics_dir(job_dir: Path) -> Path:
    """Where a job's metrics are: its own dir, or ``experiment.run_dir`` from its saved config when that
    was set (antiphon then writes the run there instead of into Hydra's job dir)."""
    if (job_dir / METRICS_FILE).is_file():
        return job_dir
    cfg_path = job_dir / ".hydra" / "config.yaml"
    if cfg_path.is_file():
        try:
            rd = OmegaConf.select(OmegaConf.load(cfg_path), "experiment.run_dir", default=None)
        except Exception:  # an unresolvable config is no reason to fail the report
            rd = None
        if isinstance(rd, str) and rd:
            p = Path(rd) if Path(rd).is_absolute() else job_dir / rd
            if (p / METRICS_FILE).is_file():
                return p
    return job_dir


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def markdown_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    head = "| " + " | ".join(_HEADERS.get(c, c) for c in columns) + " |"
    sep = "|" + "|".join("---" if c in ("label", "note", "run_dir") else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") or "–" for c in columns) + " |"
            for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def compare_runs(run_dirs: Sequence[PathLike], out_dir: PathLike,
                 label_keys: Optional[Sequence[str]] = None, frac: float = 0.2) -> Dict[str, Any]:
    """Compares runs; writes ``comparison.md``, ``comparison.csv`` and ``comparison.png`` in ``out_dir``.

    One row per run (in the given order) with the :data:`COLUMNS`: label (from the run's
    ``.hydra/overrides.yaml``, see :func:`_labels`), steps (records in metrics.jsonl), wall_clock_s
    (largest ``time_s``), trajectories_per_min (see :func:`trajectories_per_min`), reward_first /
    reward_last (mean ``reward/total`` over the first / last ``frac`` of steps), reward_final (last
    logged ``reward/total``), note ("no metrics", "1 step", "no reward/total"), run_dir. Runs without
    metrics get a row with the note rather than an error. The PNG plots ``reward/total`` against
    ``time_s`` (step where a run has no ``time_s``), one line per run; it is skipped with a warning
    when matplotlib is not installed.

    Returns ``{"rows": [...], "markdown": table, "files": {"md": path, "csv": path, "png": path|None}}``.
    """
    dirs = [Path(d) for d in run_dirs]
    labels = _labels(dirs, label_keys) if dirs else []
    rows: List[Dict[str, Any]] = []
    series = []
    for d, label in zip(dirs, labels):
        metrics = _by_step(read_metrics(_metrics_dir(d)))
        s = learning_summary(metrics, frac=frac)
        tot = s["reward"].get(REWARD_KEY, {})
        note = s.get("note", "")
        if metrics and not _series(metrics, REWARD_KEY)[1]:
            note = "no reward/total"
        rows.append({"label": label, "steps": s["steps"], "wall_clock_s": s["wall_clock_s"],
                     "trajectories_per_min": s["trajectories_per_min"], "reward_first": tot.get("first"),
                     "reward_last": tot.get("last"), "reward_final": s["final"].get(REWARD_KEY),
                     "note": note, "run_dir": str(d)})
        series.append((label, metrics))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_table(rows)
    md_path, csv_path = out / "comparison.md", out / "comparison.csv"
    md_path.write_text(md, encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows([{c: ("" if r.get(c) is None else r.get(c)) for c in COLUMNS} for r in rows])
    png_path: Optional[Path] = out / "comparison.png"
    try:
        _comparison_png(series, png_path)
    except ImportError as e:
        warnings.warn(f"comparison.png not written: {e}")
        png_path = None
    return {"rows": rows, "markdown": md, "files": {"md": md_path, "csv": csv_path, "png": png_path}}


def _comparison_png(series, out_png: Path) -> Path:
    fig, (ax,) = _agg_figure(1, width=9.0, row_height=4.5)
    drawn, step_axis = False, False
    for label, metrics in series:
        if not metrics:
            continue
        has_time = all(_num(r.get("time_s")) is not None for r in metrics if _num(r.get(REWARD_KEY)) is not None)
        step_axis |= not has_time
        drawn |= _plot_key(ax, metrics, REWARD_KEY, x_key="time_s" if has_time else "step",
                           label=label if has_time else f"{label} (x = step)")
    ax.set_xlabel("wall-clock s (step for runs without time_s)" if step_axis else "wall-clock s")
    ax.set_ylabel(REWARD_KEY)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no reward/total in any run", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("reward/total per run", fontsize=10, loc="left")
    fig.savefig(out_png, format="png", dpi=100)
    return out_png


# ---------------------------------------------------------------------------------------- hydra callback
class CompareSweep(Callback):
    """Hydra callback: when a multirun ends, compares its jobs.

    Finds the job dirs under ``hydra.sweep.dir`` (dirs with a ``.hydra`` folder), runs
    :func:`compare_runs` on them, writes the comparison files into ``out_dir`` (default: the sweep dir)
    and prints the markdown table. Enable with
    ``+hydra.callbacks.compare._target_=antiphon.report.CompareSweep`` (optionally
    ``+hydra.callbacks.compare.label_keys=[learner.max_staleness]``).
    """

    def __init__(self, label_keys: Optional[Sequence[str]] = None, out_dir: Optional[str] = None,
                 frac: float = 0.2) -> None:
        self.label_keys = list(label_keys) if label_keys is not None else None
        self.out_dir = out_dir
        self.frac = frac
        self.result: Optional[Dict[str, Any]] = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_absolute() and not sweep_dir.is_dir():
            base = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
            if base:
                sweep_dir = Path(base) / sweep_dir
        jobs = find_job_dirs(sweep_dir)
        if not jobs:
            print(f"[antiphon.report] no job dirs (*/.hydra) under {sweep_dir}; nothing to compare")
            return
        out = Path(self.out_dir) if self.out_dir else sweep_dir
        self.result = compare_runs(jobs, out, label_keys=self.label_keys, frac=self.frac)
        print(self.result["markdown"], end="")
        print(_where(self.result))
        sys.stdout.flush()


def _where(result: Dict[str, Any]) -> str:
    files = [str(p) for p in result["files"].values() if p is not None]
    return "comparison written to " + ", ".join(files)


# ------------------------------------------------------------------------------------------------- CLI
def _expand(dirs: Sequence[str]) -> tuple:
    """Run dirs from the arguments: a dir without metrics.jsonl but with job dirs is a sweep dir."""
    runs: List[Path] = []
    sweep: Optional[Path] = None
    for a in dirs:
        p = Path(a)
        jobs = [] if (p / METRICS_FILE).is_file() else find_job_dirs(p)
        if jobs:
            runs += jobs
            sweep = p if len(dirs) == 1 else None
        else:
            runs.append(p)
    return runs, sweep


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m antiphon.report", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare run dirs (or the jobs of one sweep dir)")
    c.add_argument("dirs", nargs="+")
    c.add_argument("--out", help="where to write comparison.{md,csv,png} (default: the sweep dir when "
                                 "given one, else the current dir)")
    c.add_argument("--label-keys", help="comma-separated override keys to label runs by")
    c.add_argument("--frac", type=float, default=0.2)
    k = sub.add_parser("curve", help="learning curve PNG of one run, and its first/last reward means")
    k.add_argument("run_dir")
    k.add_argument("--out", help="PNG path (default RUN_DIR/learning_curve.png)")
    k.add_argument("--frac", type=float, default=0.2)
    args = ap.parse_args(argv)

    if args.cmd == "compare":
        runs, sweep = _expand(args.dirs)
        out = Path(args.out) if args.out else (sweep or Path.cwd())
        keys = [s for s in args.label_keys.split(",") if s] if args.label_keys else None
        result = compare_runs(runs, out, label_keys=keys, frac=args.frac)
        print(result["markdown"], end="")
        print(_where(result))
        return 0

    run_dir = Path(args.run_dir)
    metrics = read_metrics(run_dir)
    if not metrics:
        print(f"no metrics in {metrics_path(run_dir)}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else (run_dir if run_dir.is_dir() else run_dir.parent) / "learning_curve.png"
    learning_curve_png(metrics, out, run_name=(run_dir if run_dir.is_dir() else run_dir.parent).name)
    s = learning_summary(metrics, frac=args.frac)
    for key, v in s["reward"].items():
        print(f"{key}: first {_fmt(v['first'])}  last {_fmt(v['last'])}  delta {_fmt(v['delta'])}")
    print(f"{s['steps']} steps, {_fmt(s['wall_clock_s'])} s; curve: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
