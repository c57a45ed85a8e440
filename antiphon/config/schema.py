"""Typed schema of every config group.

Hydra merges the YAML tree under ``configs/`` into these dataclasses, so a misspelt key or a value of
the wrong type fails at composition time -- before any Ray actor starts -- with the full key path.
This module imports nothing heavier than the standard library: it must load on a machine without
torch, vLLM or Ray (a laptop editing a sweep, a CI lint job).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional


class Choice(str, Enum):
    """A choice field's value. Hydra rejects any other value at composition, naming the key and the
    choices, and the parts compare members, never strings. Each member's name is its value (what YAML and
    the CLI write); the ``str`` mixin and ``__str__`` make a member read, print and serialise as that word."""

    def __str__(self) -> str:
        return str(self.value)


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"


class AudioInput(Choice):
    # Rollout workers encode each clip over its own frames and hand the engine embeddings (exactly the
    # full-window result, far cheaper for short turns; see antiphon/model/audio.py) ...
    embeddings = "embeddings"
    # ... or hand the engine raw waveforms and let it encode the full 30 s window.
    waveform = "waveform"


class DType(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


# ``async`` is a Python keyword, hence the functional form; in code: ``Mode["async"]``, ``Mode.sync``.
Mode = Choice("Mode", {"async": "async", "sync": "sync"}, module=__name__)
Mode.__doc__ = "async: generation and training overlap (bounded staleness); sync: generate -> score -> train in turn"


class WeightSync(Choice):
    object_store = "object_store"  # one ray.put per version, every worker reads it (antiphon/weight_sync)
    nccl = "nccl"  # the interface for GPU clusters, not built yet


class Algo(Choice):
    ppo = "ppo"  # GAE or group baseline advantages
    appo = "appo"  # V-trace targets


class Estimator(Choice):
    gae = "gae"  # learned critic
    group = "group"  # critic-free, leave-one-out over group_size rollouts of one scenario


class GroupScale(Choice):
    none = "none"  # RLOO
    std = "std"  # GRPO: divide by the group's standard deviation


class GroupCredit(Choice):
    turn = "turn"  # per-turn leave-one-out (plus the dialogue reward's)
    dialogue = "dialogue"  # the dialogue's total reward for every token


class RewardNorm(Choice):
    none = "none"  # the reward service's composition as it is
    batch = "batch"  # z-score each component over the batch, then weight


class OffPolicy(Choice):
    decoupled = "decoupled"  # proximal policy + capped behaviour importance weight
    none = "none"


class BehavMode(Choice):
    truncate = "truncate"  # w = min(w, cap)
    mask = "mask"  # tokens with w above the cap leave the loss


class KLEstimator(Choice):
    k1 = "k1"
    k3 = "k3"


class LossAgg(Choice):
    token_mean = "token_mean"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum = "seq_mean_token_sum"


class AppendFsync(Choice):
    always = "always"
    everysec = "everysec"
    no = "no"


class Scope(Choice):
    turn = "turn"
    dialogue = "dialogue"


class LogLevel(Choice):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


@dataclass
class TinyModelConfig:
    """Shape of the locally built Qwen2-Audio-architecture policy (used when ``model.path`` is unset)."""

    seed: int = 0
    vocab_size: int = 640  # BPE merges trained locally; special tokens come on top
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head_dim 64: a size vLLM's CPU attention supports
    num_key_value_heads: int = 1
    max_position_embeddings: int = 4096
    audio_d_model: int = 64
    audio_layers: int = 2
    audio_heads: int = 2
    audio_ffn_dim: int = 128
    num_mel_bins: int = 128


@dataclass
class ModelConfig:
    # A Hugging Face-format checkpoint directory (e.g. Qwen2-Audio-7B-Instruct on local disk).
    # Unset: the tiny policy is built from ``tiny`` into ``cache_dir`` (deterministic from its seed).
    path: Optional[str] = None
    cache_dir: str = "${oc.env:ANTIPHON_CACHE,'~/.cache/antiphon'}"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: DType = DType.float32
    max_model_len: int = 2048
    sample_rate: int = 16000  # audio fed to the policy is resampled to this rate


@dataclass
class DialogueConfig:
    max_turns: int = 3  # cap on agent turns per dialogue (a scenario may ask for fewer)
    think_budget: int = 32  # reasoning tokens per agent turn before </think> is forced in; 0: no reasoning phase
    open_think: bool = True  # agent turns start inside <think>
    user_text_in_prompt: bool = True  # the user's words (as a transcript) go with their audio
    simulator_timeout_s: float = 30.0
    max_user_audio_s: float = 30.0
    system_prompt: str = ""
    max_concurrent: int = 16  # dialogues in flight per worker


@dataclass
class RolloutConfig:
    num_workers: int = 2
    device: Device = Device.cpu
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    tensor_parallel_size: int = 1
    max_num_seqs: int = 32
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int = 0  # worker i samples with seed + i
    enforce_eager: bool = True
    kv_cache_gib: float = 1.0  # CPU KV cache per worker
    gpu_memory_utilization: float = 0.85
    max_audio_clips_per_prompt: int = 8
    audio_input: AudioInput = AudioInput.embeddings
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    # The voice that speaks the agent's replies (so the simulator and the reward service can hear them).
    agent_voice: Dict[str, Any] = field(default_factory=lambda: {"_target_": "simulator.voices.make_voice",
                                                                 "name": "espeak"})
    startup_timeout_s: float = 300.0
    cpu_affinity: Optional[List[int]] = None  # pin rollout workers to these cores (see antiphon/affinity.py)
    log_level: LogLevel = LogLevel.ERROR  # vLLM's own logging inside the workers (VLLM_LOGGING_LEVEL)
    # Extra environment for the worker processes (merged over antiphon's CPU defaults).
    env: Dict[str, str] = field(default_factory=dict)


class VoiceName(Choice):
    espeak = "espeak"  # fast, exact prosody control, deterministic
    piper = "piper"  # natural


@dataclass
class SimulatorConfig:
    # The user side of each dialogue: any importable UserSimulator class, one instance per dialogue.
    #   simulator._target_=my_pkg.MySim +simulator.my_param=3
    # The class receives those of the keys below that its constructor accepts (plus ``sample_rate`` =
    # model.sample_rate if it takes one), and every key added with ``+`` -- the one place where the config
    # takes keys the schema does not list, checked at compose time against the class's ``Params`` dataclass
    # (antiphon.dialogue.UserSimulator) or else its constructor.
    _target_: str = "simulator.scripted.ScriptedSimulator"
    voice: VoiceName = VoiceName.espeak  # the user's voice (simulator.voices)
    seed: int = 0
    # Scenario source: a JSONL file (simulator.scenarios format), or unset to generate num_scenarios
    # deterministically from ``seed``.
    scenarios: Optional[str] = None
    num_scenarios: int = 1000
    max_turns: int = 3  # agent turns per generated scenario
    # The ``+simulator.<key>`` values: antiphon.config.to_dataclass gathers the keys the schema does not
    # list here (``simulator.params.<key>`` is the same thing spelt in full).
    params: Dict[str, Any] = field(default_factory=dict)


class Normalize(Choice):
    none = "none"
    running = "running"  # running mean/std of the component's values over the service's lifetime


class OnError(Choice):
    drop = "drop"  # the trajectory is dropped, counted under the component's name and failure
    fallback = "fallback"  # the component's value becomes ``fallback``, recorded as such


@dataclass
class RewardComponentConfig:
    _target_: str = "???"  # a reward_service.component.RewardComponent subclass
    name: Optional[str] = None  # default: the class name; shows as reward/<name>
    weight: float = 1.0
    scope: Optional[Scope] = None  # optional check: turn | dialogue (the class decides)
    timeout_s: float = 30.0
    normalize: Normalize = Normalize.none
    on_error: OnError = OnError.drop
    fallback: float = 0.0
    # Constructor arguments; checked at compose time against the class's ``Params`` dataclass when it
    # declares one (reward_service.component.RewardComponent), else against its constructor's signature.
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    components: List[RewardComponentConfig] = field(default_factory=list)
    replicas: int = 1  # reward service replicas (Ray actors in the launcher)
    batch_size: int = 8  # trajectories scored together (RM forward passes are batched across them)
    group: str = "reward"  # consumer group on the trajectory stream
    claim_idle_ms: int = 30000  # a message pending this long on a dead replica is taken over
    block_ms: int = 500  # how long a replica waits for new messages per read
    max_deliveries: int = 5  # a message delivered this often without an ack is dead-lettered as poison
    cpu_affinity: Optional[List[int]] = None  # pin replicas to these cores (see antiphon/affinity.py)


@dataclass
class ColdStartConfig:
    """Supervised warm start that teaches the output format before RL (learner/cold_start.py)."""

    enabled: bool = True
    dialogues: int = 256  # synthetic dialogues from the scenario set (styles and answers drawn at random)
    epochs: int = 4
    lr: float = 3.0e-3  # warm-up then cosine to lr/10; measured in learner/cold_start.py
    batch_size: int = 4
    seed: int = 0
    warmup: float = 0.1  # share of the optimiser steps spent warming the lr up
    weight_decay: float = 0.0
    train_audio: bool = False  # the audio tower and projector stay as they are: nothing here is about hearing
    eval_prompts: int = 32  # held-out first turns sampled once each after training (the format check); 0: skip


@dataclass
class LearnerConfig:
    device: Device = Device.cpu
    dtype: DType = DType.float32  # cuda: bf16 autocast over fp32 master weights
    lr: float = 1.0e-5
    warmup_steps: int = 10  # learner steps of linear lr warm-up
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_cpus: float = 1.0  # Ray resources of the learner actor
    num_gpus: float = 0.0
    num_threads: int = 1  # torch intra-op threads on CPU
    cpu_affinity: Optional[List[int]] = None  # pin the learner to these cores (see antiphon/affinity.py)
    # -- schedule ------------------------------------------------------------------------------
    mode: Mode = Mode["async"]  # async | sync (generate -> score -> train strictly in turn)
    steps: int = 30  # learner steps (one batch each) in the run
    batch_size: int = 16  # trajectories per learner step
    group_size: int = 4  # rollouts per scenario (consecutive admissions share one scenario)
    max_staleness: int = 2  # versions a trained token may lag the learner; 0 = on-policy
    ppo_epochs: int = 1  # passes over each batch
    minibatches: int = 1  # optimiser steps per pass
    broadcast_every: int = 1  # learner steps per weight version pushed to the rollout workers
    weight_sync: WeightSync = WeightSync.object_store  # object_store | nccl (see antiphon/weight_sync)
    # -- advantages ----------------------------------------------------------------------------
    algo: Algo = Algo.ppo  # ppo (GAE or group baseline) | appo (V-trace targets from ray.rllib)
    estimator: Estimator = Estimator.gae
    gamma: float = 1.0
    lam: float = 1.0
    group_scale: GroupScale = GroupScale.none  # group estimator: none (RLOO) | std (GRPO)
    group_credit: GroupCredit = GroupCredit.turn  # group estimator only
    whiten_advantages: bool = True
    reward_norm: RewardNorm = RewardNorm.none
    # -- loss ----------------------------------------------------------------------------------
    off_policy: OffPolicy = OffPolicy.decoupled  # decoupled (proximal + capped behaviour weights) | none
    clip_low: float = 0.2
    clip_high: float = 0.28
    behav_cap: Optional[float] = 5.0  # cap on the behaviour importance weight pi_prox / pi_behav
    behav_mode: BehavMode = BehavMode.truncate
    value_coef: float = 0.5
    value_clip: Optional[float] = 0.2
    kl_coef: float = 0.0  # KL to the frozen reference (the cold-start policy)
    kl_estimator: KLEstimator = KLEstimator.k3  # k1 | k3
    entropy_coef: float = 0.0
    loss_agg: LossAgg = LossAgg.token_mean  # token_mean | seq_mean_token_mean | seq_mean_token_sum
    vtrace_clip_rho: float = 1.0
    vtrace_clip_pg_rho: float = 1.0
    # -- outputs -------------------------------------------------------------------------------
    checkpoint_every: int = 10  # learner steps; the final step always checkpoints
    log_samples_every: int = 10  # sample dialogues (audio + transcript) to TensorBoard
    batch_timeout_s: float = 600.0  # how long the learner waits for a batch before failing the run
    # group estimator: a batch takes whole groups; an incomplete one goes in anyway at the staleness bound,
    # or after this long with no dialogue arriving (a member whose dialogue failed never comes)
    group_wait_s: float = 30.0
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)


@dataclass
class TransportConfig:
    # Unset: the launcher starts an embedded Valkey server on loopback.
    url: Optional[str] = None
    password_env: Optional[str] = "ANTIPHON_REDIS_PASSWORD"
    password_file: Optional[str] = None
    namespace: str = "${experiment.name}"
    max_unconsumed: Optional[int] = 1024  # backpressure: producers wait while a stream holds more unacked entries
    publish_timeout_s: float = 600.0  # how long a producer waits for room before failing
    dead_letter_maxlen: int = 10000  # approximate cap on the dead-letter stream (its counters stay exact)
    dedupe_ttl_s: int = 86400  # how long a publish idempotency key is remembered
    socket_timeout_s: Optional[float] = 60.0  # per command; blocking reads stay below it
    appendfsync: AppendFsync = AppendFsync.everysec  # embedded server only: always | everysec | no
    data_dir: Optional[str] = None  # embedded server only; unset: <run dir>/valkey


@dataclass
class ClusterConfig:
    # Unset: a local Ray instance (``ray.init()``). ``auto`` or ``ray://host:10001``: an existing cluster.
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    namespace: str = "antiphon"
    include_dashboard: bool = False
    # Stream actors' stdout/stderr to the driver. Off: they stay in Ray's session logs
    # (/tmp/ray/session_latest/logs); actor exceptions still surface with their tracebacks.
    log_to_driver: bool = True


@dataclass
class ExperimentConfig:
    name: str = "tiny_cpu"
    seed: int = 0
    run_dir: Optional[str] = None  # unset: the Hydra run directory
    dialogues_per_round: int = 16  # dialogues per rollout round
    rounds: int = 2
    dry_run: bool = False  # compose, validate, print the run plan, start nothing (antiphon/run_plan.py)


@dataclass
class AntiphonConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    # A checkpoint directory (``<run>/checkpoints/step_000010``) to continue from.
    resume: Optional[str] = None


GROUP_SCHEMAS = {
    "model": ModelConfig,
    "rollout": RolloutConfig,
    "simulator": SimulatorConfig,
    "reward": RewardConfig,
    "learner": LearnerConfig,
    "transport": TransportConfig,
    "cluster": ClusterConfig,
    "experiment": ExperimentConfig,
}
