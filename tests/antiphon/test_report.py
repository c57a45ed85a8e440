"""Run reports: metrics reading, first/last reward means, learning-curve PNGs, sweep comparison and the
Hydra callback (including one real ``-m`` multirun in a subprocess). Fast, no Ray, no display."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from antiphon import report
from antiphon.report import (CompareSweep, compare_runs, find_job_dirs, first_last, learning_curve_png,
                             learning_summary, read_metrics)

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir: Path, rewards, *, dt: float = 10.0, extra=None, trailing: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, r in enumerate(rewards):
        rec = {"step": i, "time_s": dt * (i + 1), "reward/total": r, "reward/correctness": r / 10,
               "loss/policy": -0.01 * i, "kl/approx": 0.001 * i}
        rec.update((extra or {}).get(i, {}))
        lines.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + trailing)
    return run_dir


def write_overrides(job_dir: Path, overrides) -> None:
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path
    assert b"Matplotlib" in data[:400]  # the tEXt Software chunk matplotlib's Agg writer adds


# ------------------------------------------------------------------------------------------ reading
def test_read_metrics_missing_file_and_dir(tmp_path):
    assert read_metrics(tmp_path / "nope.jsonl") == []
    assert read_metrics(tmp_path) == []  # a run dir without metrics.jsonl


def test_read_metrics_skips_truncated_last_line(tmp_path):
    write_metrics(tmp_path, [0.0, 1.0, 2.0], trailing='{"step": 3, "reward/tot')
    m = read_metrics(tmp_path)
    assert [r["step"] for r in m] == [0, 1, 2]
    assert read_metrics(tmp_path / "metrics.jsonl") == m


def test_read_metrics_bad_middle_line_names_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, oops\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)


# --------------------------------------------------------------------------------------- statistics
def test_first_last_hand_computed():
    metrics = [{"step": i, "reward/total": float(i), "reward/x": 2.0 * i, "loss/policy": 5.0}
               for i in range(10)]
    fl = first_last(metrics)
    assert set(fl) == {"reward/total", "reward/x"}
    assert fl["reward/total"] == {"first": 0.5, "last": 8.5, "delta": 8.0}
    assert fl["reward/x"] == {"first": 1.0, "last": 17.0, "delta": 16.0}
    # step order, not file order
    assert first_last(list(reversed(metrics)))["reward/total"]["first"] == 0.5
    # at least one step per window; another prefix
    assert first_last(metrics[:3])["reward/total"] == {"first": 0.0, "last": 2.0, "delta": 2.0}
    assert first_last(metrics, prefix="loss/")["loss/policy"]["delta"] == 0.0
    assert first_last(metrics, frac=0.5)["reward/total"]["first"] == 2.0


def test_first_last_missing_keys_and_too_few_steps():
    metrics = [{"step": 0, "reward/total": 1.0}, {"step": 1, "reward/total": 3.0, "reward/late": 7.0}]
    fl = first_last(metrics)
    assert fl["reward/late"] == {"first": None, "last": 7.0, "delta": None}
    with pytest.raises(ValueError, match="got 1"):
        first_last(metrics[:1])
    with pytest.raises(ValueError, match="got 0"):
        first_last([])


def test_learning_summary(tmp_path):
    write_metrics(tmp_path, list(range(10)), extra={i: {"rollout/trajectories": 6} for i in range(10)})
    s = learning_summary(tmp_path)
    assert s["steps"] == 10 and s["last_step"] == 9 and s["wall_clock_s"] == 100.0
    assert s["trajectories_per_min"] == pytest.approx(60 / (100 / 60))
    assert s["reward"]["reward/total"]["delta"] == 8.0 and s["improved"] is True
    assert s["final"]["reward/total"] == 9
    json.dumps(s)  # goes into summary.json as is
    assert learning_summary([])["note"] == "no metrics"
    assert learning_summary([{"step": 0, "reward/total": 1.0}])["reward"] == {}


def test_trajectories_per_min_fallback():
    m = [{"step": i, "time_s": 1.0 + i, "perf/trajectories_per_min": v} for i, v in enumerate([10.0, 20.0])]
    assert report.trajectories_per_min(m) == 15.0
    assert report.trajectories_per_min([{"step": 0, "time_s": 3.0}]) is None


# -------------------------------------------------------------------------------------------- plots
def test_learning_curve_png_uses_agg_without_display(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    pyplot_before = "matplotlib.pyplot" in sys.modules
    fig, _ = report._agg_figure(1)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    assert type(fig.canvas) is FigureCanvasAgg
    metrics = read_metrics(write_metrics(tmp_path / "run", [0.1 * i for i in range(30)],
                                         extra={3: {"reward/total": None}}))
    out = learning_curve_png(metrics, tmp_path / "plots" / "curve.png", run_name="run-a")
    assert out == tmp_path / "plots" / "curve.png"
    assert_png(out)
    # only some keys; no loss/kl panel
    assert_png(learning_curve_png(metrics, tmp_path / "r.png", keys=["reward/total", "reward/correctness"]))
    if not pyplot_before:  # the report never goes through pyplot (and so never a GUI backend)
        assert "matplotlib.pyplot" not in sys.modules
    with pytest.raises(ValueError):
        learning_curve_png([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        learning_curve_png(metrics, tmp_path / "none.png", keys=["perf/absent"])


def test_moving_average():
    assert report.moving_average([0, 2, 4, 6], 2) == [0, 1, 3, 5]
    assert report.moving_average([1, 2, 3], 1) == [1, 2, 3]


# ------------------------------------------------------------------------------------------ compare
def make_sweep(sweep: Path) -> list:
    """Three jobs (staleness 0/4 with metrics, a crashed one without) sharing seed=1."""
    jobs = []
    for num, (stale, rewards) in enumerate([(0, list(range(10))), (4, [2.0] * 5)]):
        job = sweep / str(num)
        write_metrics(job, rewards, dt=6.0, extra={i: {"rollout/trajectories": 4} for i in range(10)})
        write_overrides(job, [f"learner.max_staleness={stale}", "seed=1"])
        jobs.append(job)
    crashed = sweep / "2"
    write_overrides(crashed, ["learner.max_staleness=8", "seed=1"])
    jobs.append(crashed)
    return jobs


def test_compare_runs_table_csv_png(tmp_path):
    jobs = make_sweep(tmp_path / "sweep")
    result = compare_runs(jobs, tmp_path / "out")
    rows = result["rows"]
    assert [r["label"] for r in rows] == ["learner.max_staleness=0", "learner.max_staleness=4",
                                          "learner.max_staleness=8"]  # seed=1 is common: left out
    a, b, c = rows
    assert a["steps"] == 10 and a["wall_clock_s"] == 60.0
    assert a["trajectories_per_min"] == pytest.approx(40.0)  # 40 trajectories in one minute
    assert (a["reward_first"], a["reward_last"], a["reward_final"]) == (0.5, 8.5, 9)
    assert b["steps"] == 5 and b["reward_first"] == 2.0 and b["reward_last"] == 2.0
    assert c["note"] == "no metrics" and c["steps"] == 0 and c["reward_final"] is None

    md = (tmp_path / "out" / "comparison.md").read_text()
    assert md == result["markdown"]
    lines = md.strip().splitlines()
    assert lines[0].startswith("| run | steps | wall-clock s | trajectories/min | reward first 20%")
    assert len(lines) == 2 + 3
    assert "| learner.max_staleness=0 | 10 | 60 | 40 | 0.5 | 8.5 | 9 |" in md
    assert "learner.max_staleness=8" in lines[4] and "no metrics" in lines[4]

    with open(tmp_path / "out" / "comparison.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == report.COLUMNS
    assert [g["label"] for g in got] == [r["label"] for r in rows]
    assert float(got[0]["reward_last"]) == 8.5 and got[2]["reward_first"] == "" and got[2]["note"] == "no metrics"
    assert_png(tmp_path / "out" / "comparison.png")


def test_compare_runs_label_keys_and_plain_dirs(tmp_path):
    jobs = make_sweep(tmp_path / "sweep")
    rows = compare_runs(jobs, tmp_path / "o1", label_keys=["seed"])["rows"]
    # same label for all: disambiguated by dir name
    assert [r["label"] for r in rows] == ["seed=1 (0)", "seed=1 (1)", "seed=1 (2)"]
    rows = compare_runs(jobs[:2], tmp_path / "o2", label_keys=["max_staleness"])["rows"]
    assert [r["label"] for r in rows] == ["learner.max_staleness=0", "learner.max_staleness=4"]
    # run dirs without Hydra files are labelled by name
    plain = [write_metrics(tmp_path / "runA", [1.0, 2.0]), write_metrics(tmp_path / "runB", [3.0])]
    rows = compare_runs(plain, tmp_path / "o3")["rows"]
    assert [r["label"] for r in rows] == ["runA", "runB"]
    assert rows[1]["reward_final"] == 3.0 and rows[1]["reward_first"] is None and "1 step" in rows[1]["note"]


def test_find_job_dirs_natural_order(tmp_path):
    for n in (10, 2, 1):
        (tmp_path / str(n) / ".hydra").mkdir(parents=True)
    (tmp_path / "not_a_job").mkdir()
    assert [p.name for p in find_job_dirs(tmp_path)] == ["1", "2", "10"]


# ----------------------------------------------------------------------------------- hydra callback
def test_callback_on_multirun_end_hand_built_config(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    make_sweep(sweep)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"}}})
    cb = CompareSweep()
    cb.on_multirun_end(config=cfg, config_name="config")
    out = capsys.readouterr().out
    assert "| learner.max_staleness=0 | 10 |" in out and "no metrics" in out
    assert f"comparison written to {sweep / 'comparison.md'}" in out
    assert (sweep / "comparison.csv").is_file()
    assert_png(sweep / "comparison.png")
    assert len(cb.result["rows"]) == 3


def test_callback_relative_sweep_dir_and_no_jobs(tmp_path, capsys, monkeypatch):
    make_sweep(tmp_path / "multirun" / "s")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": "multirun/s"}, "runtime": {"cwd": str(tmp_path)}}})
    monkeypatch.chdir(tmp_path / "multirun")  # the relative dir only resolves against hydra.runtime.cwd
    cb = CompareSweep(label_keys=["max_staleness"], out_dir=str(tmp_path / "cmp"))
    cb.on_multirun_end(config=cfg)
    assert (tmp_path / "cmp" / "comparison.md").is_file()
    capsys.readouterr()
    CompareSweep().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "x")}}}))
    assert "nothing to compare" in capsys.readouterr().out


def _env_no_display() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"  # a GUI backend that cannot work here: the report must not use it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_real_hydra_multirun_with_callback(tmp_path):
    app = tmp_path / "tiny_app.py"
    (tmp_path / "config.yaml").write_text("x: 0\n")
    app.write_text(textwrap.dedent("""
        import json
        from pathlib import Path

        import hydra
        from hydra.core.hydra_config import HydraConfig


        @hydra.main(version_base="1.3", config_path=".", config_name="config")
        def main(cfg):
            out = Path(HydraConfig.get().runtime.output_dir)
            x = int(cfg.x)
            with open(out / "metrics.jsonl", "w") as f:
                for i in range(10):
                    f.write(json.dumps({"step": i, "time_s": 2.0 * (i + 1), "reward/total": x * i}) + "\\n")


        if __name__ == "__main__":
            main()
    """))
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable, str(app),
         "-m", "x=1,2", f"hydra.sweep.dir={sweep}",
         "+hydra.callbacks.compare._target_=antiphon.report.CompareSweep"],  # new key: needs +
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env_no_display())
    assert proc.returncode == 0, proc.stderr
    assert "raised" not in proc.stderr, proc.stderr  # Hydra turns callback errors into warnings
    md = (sweep / "comparison.md").read_text()
    assert "| x=1 | 10 | 20 |" in md and "| x=2 | 10 | 20 |" in md
    assert md in proc.stdout and "comparison written to" in proc.stdout
    assert_png(sweep / "comparison.png")


def test_cli_curve_and_compare_without_display(tmp_path):
    make_sweep(tmp_path / "sweep")
    py = [sys.executable, "-m", "antiphon.report"]
    env = _env_no_display()
    curve = subprocess.run(py + ["curve", str(tmp_path / "sweep" / "0")], capture_output=True, text=True,
                           timeout=60, env=env)
    assert curve.returncode == 0, curve.stderr
    assert "reward/total: first 0.5  last 8.5  delta 8" in curve.stdout
    assert_png(tmp_path / "sweep" / "0" / "learning_curve.png")
    comp = subprocess.run(py + ["compare", str(tmp_path / "sweep")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert comp.returncode == 0, comp.stderr
    assert "learner.max_staleness=4" in comp.stdout and (tmp_path / "sweep" / "comparison.csv").is_file()
    none = subprocess.run(py + ["curve", str(tmp_path / "sweep" / "2")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert none.returncode == 1 and "no metrics" in none.stderr


def test_tensorboard_step_logs_scalars_text_and_audio_and_skips_empty_clips(tmp_path):
    """The launcher's per-step TensorBoard writer: an empty clip (a turn voiced as silence) is skipped."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from antiphon.metrics import tensorboard_step

    tb = SummaryWriter(str(tmp_path / "tb"))
    pcm = (np.sin(np.arange(1600) / 5) * 1000).astype(np.int16)
    out = {"metrics": {"reward/total": 1.5, "loss/policy": float("nan")}, "staleness_hist": [3, 1],
           "samples": [{"reward": 1.0, "transcript": "user: hi\nagent: hello",
                        "audio": [{"role": "user", "pcm": pcm, "sample_rate": 16000},
                                  {"role": "assistant", "pcm": np.zeros(0, np.int16), "sample_rate": 16000}]}]}
    tensorboard_step(tb, 1, out)
    tb.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"audio": 0, "scalars": 0})
    ea.Reload()
    assert ea.Tags()["scalars"] == ["reward/total"]  # nan is not logged
    assert ea.Tags()["audio"] == ["dialogue/0/turn0_user"]
    assert "staleness/tokens" in ea.Tags()["histograms"]
