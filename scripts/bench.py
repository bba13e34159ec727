"""The GRPO step benchmark: time GRPO steps of the project's own training path, one row per rollout configuration.

    uv run python -m scripts.bench                          # CUDA: Sarashina-2.2-3B shape, writes docs/benchmarks/
    uv run python -m scripts.bench --configs default-6,fast-6 --steps 4
    uv run python -m scripts.bench --model tiny             # no GPU: a 1-minute smoke run (the CPU defaults), tmp dir

Run it from the repository root (``scripts`` is a folder there, not part of the installed package); every run gets
an entry in docs/LOG.md, newest first.

A configuration is ``ROLLOUT-N[xS][-bf16][-real|-eos][-offload|-ongpu][-recheck][-varlen]``: ``Settings.rollout``, N
completions per optimizer step (groups of 6), S = TRL ``steps_per_generation`` (one rollout feeds S steps),
``-bf16`` to skip 4-bit loading, ``-real`` for realistic completion lengths (below), ``-eos`` for a real pretrained
model (``--real-model``, e.g. SmolLM2 from ``convert-gguf``) whose completions end where the model itself emits its
end-of-sequence, ``-offload``/``-ongpu`` to set ``Settings.offload_activations`` (gradient checkpointing's saved
inputs in CPU memory, the default, or on the GPU), ``-recheck`` to leave Unsloth re-checking its
sequence packing on each longer batch, as it does without ``callbacks.PackingTrust``, ``-varlen`` to let Unsloth's
packed attention take torch's varlen flash kernel on a torch whose ``varlen_attn`` lacks ``enable_gqa`` (2.11, the
GPU machines'; ``bench_patches.torch_varlen_with_gqa``: what the lock's torch 2.14 does by itself). Everything else
is the article's ``Settings``: the model is loaded by ``load_model`` and trained by ``build_trainer`` on
``datasets/smalltalk.csv`` with the project's rewards. The 3B shape has random weights, which never stop early, so
every completion is ``max_completion_length`` tokens long: the
worst case. Numbers on CPU are meaningless.

``-real``: each completion is forced to end (its EOS token) at a length drawn from ``REALISTIC_LENGTHS``, inside the
rollout, so a batch stops when its longest completion ends, as it would with a trained model. The forcing is part of
the benchmark only (a logits processor on the default path, the fast engine's ``forced_lengths`` hook).

``peer-N``: the rest of the field on the same GPU without vLLM, in a child process (no Unsloth imported): plain TRL +
PEFT, bf16 LoRA with the same rank/targets, gradient checkpointing, TRL's ``use_transformers_continuous_batching``,
with the same prompts, rewards and GRPO arguments (``peer_child``). Run it last: the parent frees its model first.

Under ``accelerate launch --num_processes N -m scripts.bench`` every GPU runs the same configuration (N
completions per optimizer step per GPU, data parallel): the rows count all GPUs (``num_gpus``, completions/s,
completion tok/s) and the main process alone writes them; ``scripts/multi_gpu_bench.sh`` runs 1, 2 and 4 GPUs.

Per configuration: first step and steady s/step, the generation / rest-of-step split (rest = rewards, log-probs and
the LoRA update), completion tokens/s over the steady steps, peak GPU memory allocated and reserved.

What the measurement patches in TRL, transformers, PEFT and Unsloth objects (timing wraps, forced lengths, fresh
LoRA between rows) is in ``scripts/bench_patches.py``, each with its reason. The profiler reads two private torch
names: ``torch._C._profiler._ExperimentalConfig`` (Python callers of each op) and ``torch._dynamo``'s counters.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sarashina_grpo import compat
from sarashina_grpo.project import SettingsError, process_rank, project_path, world_size

from . import bench_patches as patches

logger = logging.getLogger("scripts.bench")  # not "__main__" when run with -m

REPO_ROOT = Path(__file__).resolve().parents[1]  # where ``scripts`` is importable from (the peer's child process)
COMMAND = "python -m scripts.bench"
# Without CUDA the options left at their GPU defaults become a smoke run: the GPU defaults (seven configurations,
# the peer among them, 512-token completions) take a quarter of an hour on two CPU cores and measure nothing.
CPU_SMOKE = dict(configs="default-6,fast-6", max_completion_length=16, steps=2)
DEFAULT_CONFIGS = "fast-6,fast-36,default-6,default-36,fast-36-real,default-6-real,peer-36"
CONFIG_RE = re.compile(r"^(?P<rollout>[a-z]+)-(?P<n>\d+)(?:x(?P<spg>\d+))?(?P<bf16>-bf16)?(?P<real>-real|-eos)?"
                       r"(?P<offload>-offload|-ongpu)?(?P<recheck>-recheck)?(?P<varlen>-varlen)?$")
PEER = "peer"  # a bench-only rollout name: plain TRL + PEFT with continuous batching, in a child process
# The peer through the project's own pipeline: transformers + PEFT (bf16 LoRA, gradient checkpointing) and TRL's
# transformers continuous batching, i.e. what TRL offers on one GPU without vLLM.
PEER_SETTINGS = dict(backend="trl-peft", rollout="paged", load_in_4bit=False)
TARGETS = {6: 1000, 36: 3500}  # on-policy completion tokens/s asked of the fast path on one H100
GIB = 2**30
# Realistic completion lengths (tokens, EOS included): normal with this mean and spread, clipped to [low, high],
# drawn per completion with a fixed seed. A stated stand-in for a warm-started model's think + response answers
# (this repository has no measured length distribution of a trained 3B model yet); 512 = max_completion_length.
REALISTIC_LENGTHS = dict(mean=220.0, std=90.0, low=32, high=512, seed=1234)


@dataclass
class BenchConfig:
    name: str
    rollout: str
    completions: int  # per optimizer step
    steps_per_generation: int = 1
    load_in_4bit: bool = True
    realistic: bool = False  # completions end at lengths drawn from REALISTIC_LENGTHS
    real_model: bool = False  # on --real-model, completions end at the model's own EOS
    offload_activations: bool | None = None  # Settings.offload_activations: None keeps the default (offloaded)
    recheck: bool = False  # Unsloth re-checks its packing on each longer batch (no callbacks.PackingTrust)
    varlen: bool = False  # packed attention through torch's varlen kernel where this torch lacks its GQA argument


def parse_configs(text: str, *, cuda: bool) -> list[BenchConfig]:
    from sarashina_grpo.project import ROLLOUTS, multi_process

    configs = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        match = CONFIG_RE.match(name)
        if not match or match["rollout"] not in (*ROLLOUTS, PEER):
            raise SettingsError(
                f"Bad bench config {name!r}: expected "
                f"ROLLOUT-N[xS][-bf16][-real|-eos][-offload|-ongpu][-recheck][-varlen], ROLLOUT in {[*ROLLOUTS, PEER]}."
            )
        if match["rollout"] == PEER and multi_process():
            raise SettingsError(f"Bench config {name!r}: the peer runs in one process; leave it out under "
                                "accelerate launch.")
        peer = match["rollout"] == PEER
        if peer and (match["spg"] or match["real"] or match["offload"] or match["recheck"] or match["varlen"]):
            raise SettingsError(f"Bad bench config {name!r}: the peer runs as peer-N (on-policy, worst-case "
                                "lengths, no Unsloth).")
        configs.append(BenchConfig(name, match["rollout"], int(match["n"]), int(match["spg"] or 1),
                                   load_in_4bit=cuda and not match["bf16"] and not peer,
                                   realistic=match["real"] == "-real", real_model=match["real"] == "-eos",
                                   offload_activations={"-offload": True, "-ongpu": False}.get(match["offload"]),
                                   recheck=bool(match["recheck"]), varlen=bool(match["varlen"])))
    return configs


def realistic_lengths(n: int, rng, max_length: int) -> list[int]:
    """``n`` completion lengths drawn from ``REALISTIC_LENGTHS`` (capped at ``max_length``)."""
    d = REALISTIC_LENGTHS
    return [int(min(max_length, d["high"], max(d["low"], round(rng.gauss(d["mean"], d["std"]))))) for _ in range(n)]


def option(default, help: str):
    """A flag of ``BenchOptions``: its default and help (``--help`` shows the default)."""
    return field(default=default, metadata={"help": help})


@dataclass
class BenchOptions:
    """The benchmark's options (``python -m scripts.bench --help``; flags: transformers' ``HfArgumentParser``)."""

    configs: str = option(DEFAULT_CONFIGS, "comma-separated ROLLOUT-N[xS][-bf16][-real|-eos][-offload|-ongpu]"
                          "[-recheck][-varlen] (-eos: on --real-model, lengths from its own EOS; -offload/-ongpu: "
                          "where checkpointed activations are kept; -recheck: Unsloth re-checks its packing on each "
                          "longer batch; -varlen: packed attention through torch's varlen kernel on a torch without "
                          "its GQA argument), or peer-N (plain TRL + PEFT, last); without a GPU the default is "
                          "default-6,fast-6")
    model: str | None = option(None, "'sarashina-3b' (random weights, exact config), 'tiny', or a model folder; "
                               "unset: sarashina-3b with CUDA, tiny without")
    model_dir: str = option("artifact/models", "where the random-weight models are built")
    steps: int = option(4, "optimizer steps per configuration (first + steady); without a GPU the default is 2")
    max_completion_length: int = option(512, "tokens per completion at most; without a GPU the default is 16")
    data: str = option("datasets/smalltalk.csv", "prompt CSV")
    out: str | None = option(None, "folder for results.json/.md/.png; unset: docs/benchmarks with CUDA, a tmp dir "
                             "without")
    peer_steps: int = option(2, "optimizer steps of the peer configurations (slow: ~1 min each on an H100)")
    loss_type: str = option("grpo", "GRPO loss of every configuration (Settings.loss_type; the committed rows ran "
                            "'dapo', Unsloth's implicit choice then)")
    beta: float = option(0.04, "KL coefficient of every configuration (Settings.beta; the committed rows ran 0)")
    real_model: str | None = option(None, "a real pretrained model folder (sarashina-grpo convert-gguf) for the "
                                    "-eos configurations")
    profile_step: int | None = option(None, "torch.profiler trace of this optimizer step's update (after its "
                                      "rollout and scoring), per configuration, in profile_update.txt (CUDA only); "
                                      "unset: none")


def _clock_callback():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Wall time of each optimizer step, the device drained at both ends."""

        def __init__(self):
            self.times: list[float] = []
            self.started: list[float] = []
            self.gc_s: list[float] = []  # Python's collector inside each step (all generations)
            self._gc_total, self._gc_start = 0.0, None

        def gc_event(self, phase, info):
            if phase == "start":
                self._gc_start = time.perf_counter()
            elif self._gc_start is not None:
                self._gc_total += time.perf_counter() - self._gc_start
                self._gc_start = None

        def on_step_begin(self, args, state, control, **kwargs):
            patches.sync()
            self.started.append(round(time.time(), 3))  # wall clock, to line steps up with GPU clock logs
            self._start, self._gc_at_start = time.perf_counter(), self._gc_total

        def on_step_end(self, args, state, control, **kwargs):
            patches.sync()
            self.times.append(time.perf_counter() - self._start)
            self.gc_s.append(self._gc_total - self._gc_at_start)
            if self.on_step_end_extra is not None:
                self.on_step_end_extra()

        on_step_end_extra = None  # the update profiler's stop, when one runs

    return StepClock()


def resolve_bench_model(model: str | None, model_dir: Path, *, cuda: bool) -> str:
    from sarashina_grpo.tiny import SHAPES, build_model

    model = model or ("sarashina-3b" if cuda else "tiny")
    if model not in SHAPES:
        return model
    folder = model_dir / model
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        build_model(folder, model)
        logger.info("built %s in %.1f s", folder, time.perf_counter() - start)
    return str(folder)


def _model_state(model) -> dict:
    """What mode the model trains in: the suspects for a slow update."""
    modules = list(model.modules())
    return dict(
        training=model.training,
        gradient_checkpointing=sorted({str(getattr(m, "gradient_checkpointing", None)) for m in modules
                                       if hasattr(m, "gradient_checkpointing")}),
        use_cache=sorted({str(getattr(getattr(m, "config", None), "use_cache", None)) for m in modules
                          if getattr(m, "config", None) is not None}),
        modules_in_eval=sum(1 for m in modules if not m.training),
    )


class _UpdateProfiler:
    """torch.profiler over one optimizer step's update: from the end of its rollout + scoring to the step's end."""

    MEMORY_KEYS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams",
                   "segment.all.current", "reserved_bytes.all.current", "allocated_bytes.all.current",
                   "active_bytes.all.peak", "inactive_split_bytes.all.current")

    def __init__(self, step: int | None, out: Path, name: str):
        self.step, self.out, self.name = step, out, name
        self.prof = None
        self.trainer = None

    def wrap(self, trainer) -> None:
        self.trainer = trainer
        self.chunking: list[dict] = []
        if self.step is not None:
            self._watch_chunking(trainer)

        def after_scoring():
            if self.step is not None and self.prof is None and trainer.state.global_step == self.step:
                self._start()

        patches.call_after(trainer, compat.SCORE_METHOD, after_scoring)

    def _watch_chunking(self, trainer) -> None:
        """Record each of Unsloth's choices of GRPO mini-batches (it sizes them from the driver's free memory)."""
        import torch

        def record(rows, result):
            free, total = torch.cuda.mem_get_info()
            self.chunking.append(dict(step=trainer.state.global_step, rows=rows, rows_per_chunk=result[0],
                                      free_gib=round(free / GIB, 2), reserved_gib=round(
                                          torch.cuda.memory_reserved() / GIB, 2)))

        self.restore = patches.watch_unsloth_chunking(trainer, record)

    def _memory(self) -> dict:
        import torch

        stats = torch.cuda.memory_stats()
        memory = {k: stats.get(k) for k in self.MEMORY_KEYS}
        host = getattr(torch.cuda, "host_memory_stats", None)  # the pinned-host cache (offloaded checkpoints)
        if host is not None:
            memory["host"] = {k: v for k, v in host().items() if not isinstance(v, dict)}
        return memory

    def _start(self) -> None:
        import torch

        patches.sync()
        self.mem0 = self._memory()
        self.dynamo0 = _dynamo_counts()
        self.state = _model_state(self.trainer.model)
        # with_stack: the Python caller of each op, to name who runs the extra passes over the model; torch keeps
        # the Python frames for key_averages(group_by_stack_n) only with the verbose experimental config
        from torch._C._profiler import _ExperimentalConfig

        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                       torch.profiler.ProfilerActivity.CUDA], with_stack=True,
                                           experimental_config=_ExperimentalConfig(verbose=True))
        self.prof.__enter__()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.prof is None or self.t0 is None:
            return
        import torch

        patches.sync()
        wall = time.perf_counter() - self.t0
        self.t0 = None
        self.prof.__exit__(None, None, None)
        mem1, dyn1 = self._memory(), _dynamo_counts()
        kernels = [e for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        averages = self.prof.key_averages()
        lines = [f"== {self.name}: update of step {self.step}: wall {wall:.3f} s, {len(kernels)} GPU kernels / "
                 f"memcpys, GPU busy {sum(e.device_time for e in kernels) / 1e6:.3f} s",
                 f"model state: {json.dumps(self.state)}",
                 f"memory before: {json.dumps(self.mem0)}", f"memory after:  {json.dumps(mem1)}",
                 "dynamo counters changed: " + json.dumps({k: (self.dynamo0.get(k), v) for k, v in dyn1.items()
                                                           if self.dynamo0.get(k) != v}),
                 averages.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70),
                 averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70),
                 "== the most called ops, with their Python callers:",
                 self.prof.key_averages(group_by_stack_n=12).table(sort_by="count", row_limit=15,
                                                                   max_name_column_width=70), ""]
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "profile_update.txt").open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def _dynamo_counts() -> dict:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {f"{group}.{key}": value for group, values in counters.items() for key, value in values.items()}


def run_config(cfg: BenchConfig, model_name: str, data: str, steps: int, completion_length: int, work: Path,
               loaded: dict, *, out: Path | None = None, profile_step: int | None = None,
               algorithm: dict | None = None) -> dict:
    """Train ``steps`` GRPO steps with ``cfg`` (and ``algorithm``: Settings' loss_type/beta) and return its row."""
    import random

    import torch

    # The package calls of the benchmark, all here.
    from sarashina_grpo.config import article_settings
    from sarashina_grpo.modeling import load_model
    from sarashina_grpo.pipeline import build_trainer, prepare, recorded, run_training
    from sarashina_grpo.preflight import check_model

    extra = {"steps_per_generation": cfg.steps_per_generation} if cfg.steps_per_generation > 1 else {}
    if cfg.offload_activations is not None:
        extra["offload_activations"] = cfg.offload_activations
    settings = article_settings(
        model_name=model_name, load_in_4bit=cfg.load_in_4bit, rollout="default" if cfg.rollout == PEER else cfg.rollout,
        per_device_train_batch_size=cfg.completions, max_steps=steps, save_steps=10**6,
        max_completion_length=completion_length, data_path=data, log_completions=False, **extra,
        **(algorithm or {}),
    )
    run = prepare(settings, artifact_dir=work, run_name=cfg.name, check_model=False)
    settings = run.settings
    cuda = torch.cuda.is_available()
    if cfg.rollout == PEER:
        loaded.clear()  # the child needs the GPU to itself
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        spec = dict(name=cfg.name, settings=recorded(settings.replace(**PEER_SETTINGS)), work=str(work),
                    completions=cfg.completions, completion_length=completion_length)
        return run_peer(spec, work)
    load_s = 0.0
    key = (model_name, cfg.load_in_4bit, settings.offload_activations)  # one load per model, precision, checkpointing
    reused = key in loaded
    if not reused:
        loaded.clear()
        gc.collect()
        start = time.perf_counter()
        loaded[key] = load_model(check_model(settings, training=True))
        load_s = time.perf_counter() - start
    model, tokenizer = loaded[key]
    if reused:  # from an earlier configuration, whose training moved its LoRA: start where a run starts
        patches.reset_lora(model)
        patches.forget_packing_checks(model)
    clock = _clock_callback()
    profiler = _UpdateProfiler(profile_step if cuda else None, out or work, cfg.name)
    clock.on_step_end_extra = profiler.stop
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(run, model, tokenizer, callbacks=[clock], report_to="none", trust_packing=not cfg.recheck)
    profiler.wrap(trainer)
    generation = patches.time_method(trainer, compat.GENERATE_METHOD)  # the rollout, default or fast
    scored = patches.time_method(trainer, compat.SCORE_METHOD)  # rollout + rewards + old log-probs
    rng = random.Random(REALISTIC_LENGTHS["seed"])
    forcing = (patches.force_lengths(trainer, lambda n: realistic_lengths(n, rng, completion_length)) if cfg.realistic
               else contextlib.nullcontext())
    attention = patches.torch_varlen_with_gqa() if cfg.varlen else contextlib.nullcontext()
    logger.info("bench %s: %d steps", cfg.name, steps)
    gc.callbacks.append(clock.gc_event)
    try:
        with forcing, attention as varlen:
            run_training(trainer, run)  # Ctrl-C saves and stops, as in a real run
    finally:
        gc.callbacks.remove(clock.gc_event)
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    row = _result_row(cfg, clock.times, [generation.get(i, 0.0) for i in range(len(clock.times))],
                      [scored.get(i, 0.0) for i in range(len(clock.times))], lengths, completion_length,
                      device=torch.cuda.get_device_name(0) if cuda else "cpu",
                      peak_allocated=torch.cuda.max_memory_allocated() if cuda else None,
                      peak_reserved=torch.cuda.max_memory_reserved() if cuda else None,
                      num_generations=settings.num_generations, load_in_4bit=cfg.load_in_4bit,
                      num_gpus=world_size())
    row["model_load_s"] = round(load_s, 1)
    row["model"] = Path(model_name).name
    row["rollout"] = getattr(trainer, "rollout", None) or cfg.rollout  # an 'auto' row: the rollout it resolved to
    row["kl_reference"] = getattr(trainer, "kl_reference", None)  # "base": adapter disabled; "ref": TRL's copy
    trust = getattr(trainer, "packing_trust", None)
    row["packing_trusted_after_step"] = trust.step if trust is not None else None  # Unsloth's checks passed then
    row["offload_activations"] = settings.offload_activations  # checkpointed inputs in CPU memory (Unsloth's mode)
    row["gc_times_s"] = [round(t, 3) for t in clock.gc_s]
    if cfg.varlen:  # "shim" (this torch lacked enable_gqa), "native" (it has it: the row is a plain one) or None
        row["torch_varlen"] = varlen
    row["step_started_unix"] = clock.started
    if getattr(profiler, "chunking", None):
        row["unsloth_chunking"] = profiler.chunking
        profiler.restore()
    engine = getattr(trainer, "fast_rollout", None)
    if engine is not None:
        engine.forced_lengths = None
        engine.release()  # its kept weights and graphs belong to this configuration's measurement only
    del trainer, engine
    gc.collect()
    logger.info("bench %s: %s", cfg.name, json.dumps(row))
    return row


def _result_row(cfg: BenchConfig, times: list[float], gen: list[float], prepare: list[float], lengths: list[float],
                completion_length: int, *, device: str, peak_allocated, peak_reserved, num_generations: int,
                load_in_4bit: bool, num_gpus: int = 1) -> dict:
    """One configuration's row. With ``num_gpus`` > 1 each GPU ran ``cfg.completions`` per step (data parallel):
    throughput counts them all; ``lengths`` are TRL's means over all GPUs' completions."""
    steady = slice(1, None) if len(times) > 1 else slice(0, None)
    steady_times, steady_lengths = times[steady], (lengths[steady] or [completion_length])
    step_s = sum(steady_times) / len(steady_times)
    mean_length = sum(steady_lengths) / len(steady_lengths)
    gen_s = sum(gen[steady]) / len(steady_times)
    scoring_s = sum(prepare[steady]) / len(steady_times) - gen_s
    return dict(
        config=cfg.name, rollout=cfg.rollout, device=device, num_gpus=0 if device == "cpu" else num_gpus,
        load_in_4bit=load_in_4bit, completions_per_step=cfg.completions, num_generations=num_generations,
        steps_per_generation=cfg.steps_per_generation, max_completion_length=completion_length,
        lengths=("the model's own EOS" if cfg.real_model else "realistic" if cfg.realistic
                 else "worst case (all max_completion_length)"),
        steps=len(times), first_step_s=round(times[0], 2),
        step_s=round(step_s, 3), generation_s=round(gen_s, 3), rest_of_step_s=round(step_s - gen_s, 3),
        scoring_s=round(scoring_s, 3), update_s=round(step_s - gen_s - scoring_s, 3),
        mean_completion_length=round(mean_length, 1),
        completion_tokens_per_s=round(max(1, num_gpus) * cfg.completions * mean_length / step_s, 1),
        completions_per_s=round(max(1, num_gpus) * cfg.completions / step_s, 2),
        step_times_s=[round(t, 3) for t in times], generation_times_s=[round(t, 3) for t in gen],
        update_times_s=[round(t - p, 3) for t, p in zip(times, prepare, strict=True)],
        peak_allocated_gib=None if peak_allocated is None else round(peak_allocated / GIB, 2),
        peak_reserved_gib=None if peak_reserved is None else round(peak_reserved / GIB, 2),
        # per decoded token position of a rollout (prefill and weight refresh included)
        generation_ms_per_token=round(1000 * gen_s * cfg.steps_per_generation / max(1.0, mean_length), 2),
    )


def run_peer(spec: dict, work: Path) -> dict:
    """Run ``peer_child`` in a fresh interpreter (no Unsloth patches) and return its result row."""
    spec_path = work / f"{spec['name']}.spec.json"
    row_path = work / f"{spec['name']}.row.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    logger.info("bench %s: child process (plain TRL + PEFT, continuous batching)", spec["name"])
    # ``-m scripts.bench`` resolves from the repository root, wherever the parent was started
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "scripts.bench", "peer-child", str(spec_path), str(row_path)],
                          check=False, env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0 or not row_path.exists():
        raise RuntimeError(f"peer child exited with code {done.returncode}")
    row = json.loads(row_path.read_text())
    logger.info("bench %s: %s", spec["name"], json.dumps(row))
    return row


def peer_child(spec_path: str, row_path: str) -> None:
    """The peer configuration: plain TRL + PEFT (the pipeline's ``trl-peft`` backend: bf16 LoRA, gradient
    checkpointing) with TRL's own continuous batching (``rollout="paged"``), in a process without Unsloth."""
    import torch
    import trl  # noqa: F401  (TRL first: sarashina_grpo.config then leaves Unsloth out)

    from sarashina_grpo.config import load_settings
    from sarashina_grpo.modeling import use_triton_interpreter_without_gpu
    from sarashina_grpo.pipeline import build_trainer, load_model, prepare

    assert "unsloth" not in sys.modules, "the peer must run without Unsloth's patches"
    use_triton_interpreter_without_gpu()
    spec = json.loads(Path(spec_path).read_text())
    cuda = torch.cuda.is_available()
    run = prepare(load_settings(base=spec["settings"], source="peer"), artifact_dir=Path(spec["work"]) / "peer",
                  run_name=spec["name"], check_model=False)
    start = time.perf_counter()
    model, tokenizer = load_model(run)
    load_s = time.perf_counter() - start
    clock = _clock_callback()
    trainer = build_trainer(run, model, tokenizer, callbacks=[clock], report_to="none")
    generation = patches.time_method(trainer, compat.GENERATE_METHOD)
    scored = patches.time_method(trainer, compat.SCORE_METHOD)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    n = len(clock.times)
    cfg = BenchConfig(spec["name"], PEER, spec["completions"], load_in_4bit=False)
    row = _result_row(cfg, clock.times, [generation.get(i, 0.0) for i in range(n)],
                      [scored.get(i, 0.0) for i in range(n)], lengths, spec["completion_length"],
                      device=torch.cuda.get_device_name(0) if cuda else "cpu",
                      peak_allocated=torch.cuda.max_memory_allocated() if cuda else None,
                      peak_reserved=torch.cuda.max_memory_reserved() if cuda else None,
                      num_generations=trainer.num_generations, load_in_4bit=False)
    row["model_load_s"] = round(load_s, 1)
    row["model"] = Path(spec["settings"]["model_name"]).name
    row["note"] = "plain TRL + PEFT, bf16 LoRA, gradient checkpointing, use_transformers_continuous_batching=True"
    Path(row_path).write_text(json.dumps(row))


def update_spread(row: dict) -> float | None:
    """Slowest over fastest update of the steady steps (the first compiles)."""
    steady = row.get("update_times_s", [])[1:]
    return round(max(steady) / min(steady), 2) if len(steady) > 1 and min(steady) > 0 else None


def first_step(row: dict) -> str:
    """The first step's seconds, plus the upfront packing check of rows measured before 2026-12-06."""
    check = (row.get("packing_check") or {}).get("seconds")
    return f"{row['first_step_s']:.1f}" + (f" + {check:.1f} check" if check is not None else "")


def markdown_table(rows: list[dict]) -> str:
    head = ("| config | rollout | completions/step | steps/generation | steady s/step | first step s "
            "| generation s/step | rest of step s | update s | slowest/fastest update | completion tok/s "
            "| peak alloc GiB | peak reserved GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['config']} | {r['rollout']} | failed: {r['error'][:200]} |" if "error" in r else
        f"| {r['config']} | {r['rollout']} | {r['completions_per_step']} | {r['steps_per_generation']} "
        f"| {r['step_s']:.2f} | {first_step(r)} | {r['generation_s']:.2f} | {r['rest_of_step_s']:.2f} "
        f"| {r.get('update_s', '')} | {update_spread(r) or ''} "
        f"| {r['completion_tokens_per_s']:,.0f} | {r['peak_allocated_gib']} | {r['peak_reserved_gib']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(rows)), 4.0))
    colors = ["tab:green" if r["rollout"] == "fast" else "tab:gray" for r in rows]
    # rows on another model than the title's (-eos: the real model) name it under the configuration
    names = [r["config"] + (f"\n({r['model']})" if r.get("lengths") == "the model's own EOS" else "") for r in rows]
    bars = ax.bar(names, [r["completion_tokens_per_s"] for r in rows], color=colors)
    ax.bar_label(bars, fmt="{:,.0f}")
    if rows and rows[0]["num_gpus"]:
        for n, target in TARGETS.items():
            ax.axhline(target, ls="--", lw=1, color="tab:red")
            ax.text(len(rows) - 0.5, target, f"target at {n}/step", ha="right", va="bottom", fontsize=8)
    ax.set_ylabel("completion tokens / s (steady)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], out: Path, meta: dict, *, with_plot: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2, ensure_ascii=False) + "\n")
    table = markdown_table(rows)
    (out / "results.md").write_text(
        f"# GRPO step benchmark\n\nDevice: {meta['device']}. Command:\n\n    {meta['command']}\n\n{table}", "utf-8")
    if with_plot:
        title = f"{meta['device']}, {meta['model']}, {meta['max_completion_length']}-token completions"
        plot(rows, out / "results.png", title)


def check_options(args: BenchOptions) -> None:
    """One ``error:`` before anything heavy is imported, for options argparse cannot judge."""
    from sarashina_grpo.preflight import check_whole

    for name in ("steps", "max_completion_length", "peer_steps"):
        check_whole(f"bench --{name.replace('_', '-')}", getattr(args, name))
    if args.beta < 0:
        raise SettingsError(f"bench --beta must be >= 0 (0 drops the KL term), got {args.beta!r}.")
    if args.profile_step is not None and not 1 <= args.profile_step <= args.steps:
        raise SettingsError(f"bench --profile-step must be a step of the run (1 to --steps {args.steps}), got "
                            f"{args.profile_step!r}.")
    configs = parse_configs(args.configs, cuda=False)  # the names; 4-bit is decided later, from the machine
    eos = [cfg.name for cfg in configs if cfg.real_model]
    if eos and not args.real_model:
        raise SettingsError(f"bench config {eos[0]!r} runs on a real model: give its folder with --real-model "
                            "(sarashina-grpo convert-gguf makes one).")
    if args.real_model and not (project_path(args.real_model) / "config.json").is_file():
        raise SettingsError(f"bench --real-model {args.real_model!r}: no config.json there; give a model folder "
                            "(sarashina-grpo convert-gguf makes one).")


def cpu_smoke(args: BenchOptions) -> BenchOptions:
    """``args`` with the options left at their GPU defaults replaced by ``CPU_SMOKE`` (said in a warning)."""
    defaults = BenchOptions()
    smoke = {k: v for k, v in CPU_SMOKE.items() if getattr(args, k) == getattr(defaults, k)}
    if smoke:
        logger.warning("No CUDA GPU: a smoke run (%s); numbers on a CPU are meaningless.",
                       ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in smoke.items()))
    return dataclasses.replace(args, **smoke)


def run(args: BenchOptions, argv: list[str] | None = None) -> None:
    """Measure every configuration of ``args``; ``argv``: the flags as given, recorded in the results."""
    check_options(args)
    from sarashina_grpo.noise import import_unsloth

    unsloth = import_unsloth()  # patches transformers and TRL: must be imported before them
    unsloth_version = getattr(unsloth, "__version__", None)
    import torch

    from sarashina_grpo.modeling import cuda_available

    cuda = cuda_available()
    if not cuda:
        args = cpu_smoke(args)
    configs = parse_configs(args.configs, cuda=cuda)
    out = Path(args.out) if args.out else (project_path("docs/benchmarks") if cuda
                                          else Path(tempfile.mkdtemp(prefix="sarashina-bench-")))
    model_name = resolve_bench_model(args.model, project_path(args.model_dir), cuda=cuda)
    import transformers
    import trl

    meta = dict(
        command=shlex.join([*COMMAND.split(), *(sys.argv[1:] if argv is None else argv)]),
        device=torch.cuda.get_device_name(0) if cuda else "cpu", model=Path(model_name).name,
        max_completion_length=args.max_completion_length, torch=torch.__version__,
        transformers=transformers.__version__, trl=trl.__version__, unsloth=unsloth_version,
        date=time.strftime("%Y-%m-%d %H:%M:%S"), num_gpus=world_size() if cuda else 0,
        config_order=f"as listed, {world_size()} process(es), one model load per precision",
        loss_type=args.loss_type, beta=args.beta,
    )
    rows, loaded = [], {}
    with tempfile.TemporaryDirectory(prefix="sarashina-bench-run-") as work:
        for cfg in configs:
            # steady steps (all but the first) span whole rollouts: a multiple of steps_per_generation
            spg = cfg.steps_per_generation
            steps = 1 + -(-max(args.steps - 1, spg) // spg) * spg
            try:
                steps_here = min(steps, max(2, args.peer_steps)) if cfg.rollout == PEER else steps
                name_here = str(project_path(args.real_model)) if cfg.real_model else model_name
                rows.append(run_config(cfg, name_here, args.data, steps_here, args.max_completion_length,
                                       Path(work), loaded, out=out, profile_step=args.profile_step,
                                       algorithm=dict(loss_type=args.loss_type, beta=args.beta)))
            except Exception as err:  # a losing configuration that crashes is a result too; keep measuring
                logger.exception("bench %s failed", cfg.name)
                rows.append(dict(config=cfg.name, rollout=cfg.rollout, completions_per_step=cfg.completions,
                                 error=f"{type(err).__name__}: {err}"))
            if process_rank() == 0:
                write_results(rows, out, meta, with_plot=False)  # a run cut off later still leaves its rows
    if process_rank() == 0:
        write_results(rows, out, meta)
        print(markdown_table(rows))
        print(f"Wrote {out / 'results.json'}, results.md and results.png")


def parse_options(argv: list[str]) -> BenchOptions:
    """``argv`` as ``BenchOptions``; a mistake is one ``SettingsError`` (argparse's complaints included)."""
    from transformers.hf_argparser import HfArgumentParser  # the lazy transformers root: no torch, no model code

    class Parser(HfArgumentParser):
        def error(self, message):
            raise SettingsError(f"{COMMAND}: {message} (`{COMMAND} --help` lists the flags).")

    parser = Parser(BenchOptions, prog=COMMAND, description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    options, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; a user-caused failure is one ``error: …`` line and exit code 2, as in ``sarashina-grpo``.

    ``peer-child SPEC_JSON ROW_JSON`` is the peer's child process (``run_peer`` starts it)."""
    from sarashina_grpo import errors, setup_logging
    from sarashina_grpo.commands import end_process_group

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["peer-child"] and len(argv) == 3:
        logging.basicConfig(level=logging.INFO)
        peer_child(argv[1], argv[2])
        return 0
    try:
        options = parse_options(argv)
        setup_logging()
        run(options, argv)
    except Exception as err:  # user-caused failures: one line (errors.py); bugs keep their traceback
        code = errors.report(err)
        if code is None:
            raise
        return code
    finally:
        end_process_group()  # under `accelerate launch`: the group the rows trained in, closed before exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
