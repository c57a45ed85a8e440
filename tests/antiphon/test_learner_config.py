"""Learner settings are checked before anything starts, naming the key and the value."""
from __future__ import annotations

import pytest

from antiphon.config import ConfigError, compose


@pytest.mark.parametrize("overrides, needle", [
    (["learner.max_staleness=2", "learner.off_policy=none"], "learner.off_policy='none'"),
    (["learner.weight_sync=nccl"], "learner.weight_sync='nccl'"),
    (["learner.mode=later"], "learner.mode='later'"),
    (["learner.batch_size=10", "learner.group_size=4"], "learner.batch_size=10"),
    (["learner.estimator=group", "learner.group_size=1", "learner.batch_size=4"], "learner.group_size=1"),
    (["learner.minibatches=3", "learner.batch_size=16"], "learner.minibatches=3"),
    (["learner.behav_cap=0.5"], "learner.behav_cap=0.5"),
    (["learner.loss_agg=mean"], "learner.loss_agg='mean'"),
    (["learner.kl_estimator=k2"], "learner.kl_estimator='k2'"),
    (["learner.device=cpu", "learner.num_gpus=1"], "learner.num_gpus=1.0"),
    (["learner.cold_start.epochs=0"], "learner.cold_start.epochs=0"),
    (["learner.group_wait_s=0"], "learner.group_wait_s=0"),
    (["learner.batch_timeout_s=-1"], "learner.batch_timeout_s=-1"),
])
def test_bad_learner_settings_fail_naming_key_and_value(overrides, needle):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    assert needle in str(e.value)


def test_on_policy_without_correction_and_sync_mode_are_fine():
    compose(["learner.max_staleness=0", "learner.off_policy=none"])
    compose(["learner.mode=sync", "learner.off_policy=none"])
    compose(["learner.algo=appo", "learner.off_policy=none", "learner.max_staleness=4"])
