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
