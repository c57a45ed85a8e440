"""Config schema: composition, type/key errors named by path, validation before any actor starts."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from antiphon.config import ConfigError, compose
from antiphon.config.schema import GROUP_SCHEMAS, Device

GROUPS = ["model", "rollout", "simulator", "reward", "learner", "transport", "cluster", "experiment"]


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "antiphon.launch", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_default_config_composes_with_every_group_typed():
    cfg = compose()
    assert sorted(GROUP_SCHEMAS) == sorted(GROUPS)
    for group in GROUPS:
        assert group in cfg
        assert OmegaConf.get_type(cfg[group]) is GROUP_SCHEMAS[group]
    assert cfg.rollout.device is Device.cpu
    assert cfg.model.path is None and cfg.model.dtype.value == "float32"


def test_every_group_schema_is_in_the_config_store():
    from hydra.core.config_store import ConfigStore

    from antiphon.config import register

    register()
    repo = ConfigStore.instance().repo
    assert "antiphon_schema.yaml" in repo
    for group in GROUPS:
        assert "schema.yaml" in repo[group], group


def test_overrides_reach_the_config():
    cfg = compose(["rollout.num_workers=3", "rollout=vllm_gpu", "learner.lr=3e-6"])
    assert cfg.rollout.num_workers == 3 and cfg.rollout.device is Device.cuda
    assert cfg.learner.lr == pytest.approx(3e-6)


@pytest.mark.parametrize("override, expected", [
    ("rollout.num_worker=2", "rollout.num_worker"),  # misspelt key
    ("model.tiny.hidden_sise=64", "model.tiny.hidden_sise"),  # misspelt nested key
])
def test_misspelt_key_fails_naming_the_key(override, expected):
    with pytest.raises(Exception) as e:
        compose([override])
    assert expected in str(e.value)


@pytest.mark.parametrize("override, key, value", [
    ("rollout.num_workers=two", "rollout.num_workers", "two"),
    ("rollout.device=tpu", "rollout.device", "tpu"),
    ("learner.lr=fast", "learner.lr", "fast"),
])
def test_wrong_type_fails_naming_key_and_value(override, key, value):
    with pytest.raises(Exception) as e:
        compose([override])
    msg = str(e.value)
    assert key in msg and value in msg, msg


def test_unknown_target_fails_naming_the_key():
    with pytest.raises(ConfigError) as e:
        compose(["simulator._target_=no_such_pkg.NoSim"])
    assert "simulator._target_" in str(e.value) and "no_such_pkg.NoSim" in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("rollout.temperature=0", "rollout.temperature"),
    ("rollout.num_workers=0", "rollout.num_workers"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("rollout.max_new_tokens=5000", "rollout.max_new_tokens"),
    ("model.tiny.num_attention_heads=3", "model.tiny.hidden_size"),
])
def test_out_of_range_values_fail_naming_key_and_value(override, key):
    with pytest.raises(ConfigError) as e:
        compose([override])
    value = override.split("=", 1)[1]
    assert f"{key}=" in str(e.value) and value in str(e.value), str(e.value)


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        compose(["rollout.temperature=0", "learner.lr=-1"])
    assert "rollout.temperature" in str(e.value) and "learner.lr" in str(e.value)


@pytest.mark.parametrize("override, needle", [
    ("rollout.num_worker=2", "rollout.num_worker"),
    ("rollout.num_workers=two", "rollout.num_workers"),
    ("simulator._target_=no_such_pkg.NoSim", "simulator._target_"),
])
def test_cli_rejects_bad_config_before_starting_anything(override, needle):
    res = _cli(override)
    assert res.returncode != 0
    assert needle in res.stderr + res.stdout
    # The launcher's first action after validation is to resolve the policy; it must not get there.
    assert "[antiphon] policy:" not in res.stdout
    assert "rollout workers ready" not in res.stdout


def test_cli_prints_composed_config():
    res = _cli("--cfg", "job", "rollout.num_workers=5")
    assert res.returncode == 0, res.stderr
    printed = OmegaConf.create(res.stdout)
    assert printed.rollout.num_workers == 5
    assert set(GROUPS) <= set(printed.keys())


def test_schema_imports_and_composes_without_torch_vllm_ray():
    code = textwrap.dedent("""
        import sys
        class Block:
            BLOCKED = ("torch", "vllm", "ray", "transformers", "tokenizers")
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Block())
        from antiphon.config import compose
        from antiphon.config.schema import AntiphonConfig
        cfg = compose(["rollout.num_workers=4"])
        assert cfg.rollout.num_workers == 4
        assert not any(m.split(".")[0] in Block.BLOCKED for m in sys.modules), sorted(sys.modules)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_configs_resolve_from_any_working_directory(tmp_path):
    res = subprocess.run([sys.executable, "-m", "antiphon.launch", "--cfg", "job"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "num_workers" in res.stdout


def test_missing_required_simulator_parameter_is_named():
    with pytest.raises(ConfigError) as e:
        compose(["simulator=replay"])
    assert "simulator.manifest" in str(e.value)


def test_reward_component_params_must_fit_the_constructor():
    with pytest.raises(ConfigError) as e:
        compose(["+reward.components.1.params.bogus=1"])
    assert "reward.components[1].params" in str(e.value) and "bogus" in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("+learner.stepz=3", "learner.stepz"),  # Hydra's own hint for a misspelt key
    ("+rollout.dialogue.max_turn=2", "rollout.dialogue.max_turn"),
    ("+resumee=/tmp", "resumee"),
])
def test_unknown_key_fails_with_plus_too(override, key):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert f"{key}=" in str(e.value) and "unknown key" in str(e.value), str(e.value)


def test_choice_fields_are_enums_and_other_values_are_named():
    from antiphon.config.schema import Estimator, LossAgg, Mode

    cfg = compose(["learner.estimator=group", "learner.mode=sync"])
    assert cfg.learner.estimator is Estimator.group and cfg.learner.mode is Mode.sync
    assert cfg.learner.loss_agg is LossAgg.token_mean
    for override in ("learner.group_scale=mad", "transport.appendfsync=sometimes",
                     "reward.components.0.scope=episode", "simulator.voice=robot"):
        with pytest.raises(ConfigError) as e:
            compose([override])
        key, value = override.replace(".0.", "[0].").split("=")
        assert f"{key}={value!r}" in str(e.value), str(e.value)


def test_parts_receive_the_schema_dataclasses():
    from antiphon.config import to_dataclass
    from antiphon.config.schema import AntiphonConfig, LearnerConfig, Mode, SimulatorConfig

    cfg = compose(["learner.mode=sync", "simulator._target_=support.CountingSimulator", "+simulator.turns=4"])
    whole = to_dataclass(cfg)
    assert isinstance(whole, AntiphonConfig) and isinstance(whole.learner, LearnerConfig)
    assert whole.learner.mode is Mode.sync and whole.learner.cold_start.epochs >= 1
    sim = to_dataclass(cfg.simulator)
    assert isinstance(sim, SimulatorConfig) and sim.params == {"turns": 4}
    # A mapping given by hand reads through the schema: its defaults and choices, the extra keys as params.
    by_hand = to_dataclass({"_target_": "support.CountingSimulator", "turns": 4}, SimulatorConfig)
    assert by_hand == sim


def test_simulator_params_dataclass_is_checked_naming_the_key(tmp_path):
    from antiphon.config import to_dataclass
    from antiphon.dialogue import simulator_factory

    base = ["simulator._target_=support.CountingSimulator"]
    for override, needle in [("+simulator.turns=many", "simulator.turns='many'"),
                             ("+simulator.turnz=3", "simulator.turnz=3"),
                             ("+simulator.turns=0", "turns=0 must be >= 1"),
                             ("+simulator.script=/no/such/script.txt", "simulator.script='/no/such/script.txt'")]:
        with pytest.raises(ConfigError) as e:
            compose(base + [override])
        assert needle in str(e.value), str(e.value)
    script = tmp_path / "script.txt"
    script.write_text("hi")
    cfg = compose(base + ["+simulator.turns=3", f"+simulator.script={script}", "simulator.seed=5"])
    sim = simulator_factory(to_dataclass(cfg.simulator), 16000)()
    assert (sim.turns, sim.seed, sim.script) == (3, 5, str(script))


def test_reward_component_params_dataclass_is_checked_naming_the_key():
    from antiphon.config import to_dataclass
    from reward_service.compose import build_specs

    cfg = compose(["+reward.components.4.params.mode=last"])
    (spec,) = build_specs([to_dataclass(cfg.reward).components[4]])
    assert spec.name == "satisfaction" and spec.component.mode == "last"
    for override, needle in [("+reward.components.4.params.mode=median", "reward.components[4].params.mode='median'"),
                             ("+reward.components.4.params.bogus=1", "reward.components[4].params.bogus=1")]:
        with pytest.raises(ConfigError) as e:
            compose([override])
        assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("override, key", [
    ("simulator.scenarios=/no/such/scenarios.jsonl", "simulator.scenarios"),
    ("resume=/no/such/checkpoint", "resume"),
    ("model.path=/no/such/model", "model.path"),
    ("transport.password_file=/no/such/secret", "transport.password_file"),
])
def test_every_file_the_config_names_must_exist(override, key):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert f"{key}='/no/such/" in str(e.value) and "no such file" in str(e.value), str(e.value)


def test_replay_manifest_is_checked_before_anything_starts():
    with pytest.raises(ConfigError) as e:
        compose(["simulator=replay", "+simulator.manifest=/no/such/manifest.jsonl"])
    assert "simulator.manifest='/no/such/manifest.jsonl': no such file" in str(e.value)


def test_rejected_config_exits_2_naming_the_key_and_leaves_no_run_dir(tmp_path):
    """The real entry point with Hydra's own hint for a new key: rejected before anything starts, and
    the run directory Hydra made for the job is gone again."""
    import os

    runs = tmp_path / "runs"
    res = subprocess.run([sys.executable, "-m", "antiphon.launch", "+learner.stepz=3"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env={**os.environ, "ANTIPHON_RUNS": str(runs)})
    assert res.returncode == 2, res.stderr
    assert "learner.stepz=3" in res.stderr and "unknown key" in res.stderr, res.stderr
    assert "base policy" not in res.stdout
    left = [p for p in runs.rglob("*")] if runs.exists() else []
    assert not [p for p in left if p.is_file()], left  # no launch.log, no .hydra/
    assert not list(runs.glob("tiny_cpu/*")), left  # the run directory itself
