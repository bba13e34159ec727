"""Profile the fast rollout alone on the GPU: ms per decoded token, kernels per token, and the weight-read floor.

    python docs/benchmarks/profile_rollout.py artifact/models/sarashina-3b --batch 6 36 [--compile] > profile.json

Loads the model through the project's ``load_model`` (article settings, 4-bit + LoRA r=32), decodes 512-token
completions of real prompts with ``FastRollout`` and reports, per batch size: wall ms per token, the GPU kernel time
per token and kernels per token (torch.profiler over a 64-token rollout; the decode graph's kernels are listed one
by one), and the floor set by reading the bf16 weights once per token at the measured copy bandwidth.
"""

import argparse
import json
import time

import torch
import unsloth  # noqa: F401  (before transformers)

from sarashina_grpo.config import Settings
from sarashina_grpo.data import load_prompts
from sarashina_grpo.modeling import load_model
from sarashina_grpo.rollout import FastRollout


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted)."""
    a = torch.empty(2**30, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 10 * 2 * a.numel() * 2 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, nargs="+", default=[6, 36])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    model, tok = load_model(Settings(model_name=args.model))
    rows = load_prompts("datasets/smalltalk.csv", tokenizer=tok)["prompt"]
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows[:64]]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine = FastRollout(model, eos_token_ids=[-1], pad_token_id=tok.pad_token_id, max_new_tokens=args.tokens,
                         compile_layers=args.compile)  # eos -1: never stops, every row decodes all tokens
    layers = engine.snapshot()
    weight_bytes = sum(t.numel() * t.element_size() for layer in layers
                       for lin in (layer.qkv, layer.o, layer.gate_up, layer.down) for t in (lin.weight,))
    weight_bytes += engine.lm.lm_head.weight.numel() * 2
    del layers
    bandwidth = copy_bandwidth()
    result = dict(device=torch.cuda.get_device_name(0), compile=args.compile, weight_gb=weight_bytes / 1e9,
                  copy_bandwidth_tb_s=bandwidth / 1e12, floor_ms_per_token=1e3 * weight_bytes / bandwidth, batches=[])
    for batch in args.batch:
        group = [prompts[i // 6] for i in range(batch)]  # groups of 6 completions per prompt, as in GRPO
        start = time.perf_counter()
        engine.generate(group)  # warm-up (and compile, if asked)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        start = time.perf_counter()
        engine.generate(group)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            engine.generate(group, 64)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu_us = sum(e.device_time for e in kernels)
        top = {}
        for e in kernels:
            top[e.name[:80]] = top.get(e.name[:80], 0.0) + e.device_time
        result["batches"].append(dict(
            batch=batch, first_call_s=round(first, 2), wall_ms_per_token=round(1e3 * wall / args.tokens, 3),
            tokens_per_s=round(batch * args.tokens / wall, 1),
            gpu_kernel_ms_per_token=round(gpu_us / 1e3 / 64, 3), kernels_per_token=round(len(kernels) / 64, 1),
            top_kernels_ms_per_token={k: round(v / 1e3 / 64, 3) for k, v in
                                      sorted(top.items(), key=lambda kv: -kv[1])[:12]},
        ))
        print(json.dumps(result["batches"][-1]), flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
