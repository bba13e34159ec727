"""Profile the fast rollout alone on the GPU: ms per decoded token, kernels per token, and the weight-read floor.

    uv run python -m scripts.profile_rollout artifact/models/sarashina-3b --batch 6 36 \
        --variants compiled+triton compiled+sdpa eager+sdpa

Loads the model through the project's ``load_model`` (article settings, 4-bit + LoRA r=32), decodes 512-token
completions of real prompts with ``FastRollout`` and reports, per batch size: wall ms per token, the GPU kernel time
per token and kernels per token (torch.profiler over a 64-token rollout; the decode graph's kernels are listed one
by one), and the floor set by reading the bf16 weights once per token at the measured copy bandwidth.
``--variants`` measures engine variants in one process: element-wise pieces ``compiled`` or ``eager``, decode
attention ``triton`` (split-K kernel) or ``sdpa``. First it checks the split-K kernel against SDPA in bf16 at the
3B shape (``attention_check``).
"""

import argparse
import json
import time

import torch
import unsloth  # noqa: F401  (before transformers)

from sarashina_grpo.config import article_settings
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


def attention_check() -> dict:
    """The split-K decode attention against SDPA (float32 reference) on bf16 inputs of the 3B shape."""
    import torch.nn.functional as F

    from sarashina_grpo.rollout import decode_attention

    torch.manual_seed(0)
    batch, length, nkv, rep, d, slot = 36, 640, 8, 2, 128, 400
    kv = torch.randn(2, batch, length, nkv, d, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(batch, nkv * rep, d, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(batch, length, device="cuda", dtype=torch.bfloat16)
    for b in range(batch):
        mask[b, : b % 50] = torch.finfo(torch.bfloat16).min  # left padding of various lengths
    out = decode_attention(q, kv, mask, torch.tensor([slot], device="cuda")).float()
    keys, values = (kv[i, :, : slot + 1].transpose(1, 2).float() for i in (0, 1))
    ref = F.scaled_dot_product_attention(q.view(batch, nkv, rep, d).float(), keys, values,
                                         attn_mask=mask[:, None, None, : slot + 1].float()).reshape(out.shape)
    sdpa = F.scaled_dot_product_attention(q.view(batch, nkv, rep, d), kv[0, :, : slot + 1].transpose(1, 2),
                                          kv[1, :, : slot + 1].transpose(1, 2),
                                          attn_mask=mask[:, None, None, : slot + 1]).reshape(out.shape).float()
    err = ((out - ref).norm() / ref.norm()).item()
    return dict(split_k_rel_err=err, sdpa_bf16_rel_err=((sdpa - ref).norm() / ref.norm()).item(),
                finite=bool(out.isfinite().all()), ok=err < 1e-2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, nargs="+", default=[6, 36])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=["compiled+triton"])
    args = parser.parse_args()
    check = attention_check()
    print(json.dumps(check), flush=True)
    model, tok = load_model(article_settings(model_name=args.model))
    rows = load_prompts("datasets/smalltalk.csv", tokenizer=tok)["prompt"]
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows[:64]]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    # eos -1: never stops, every row decodes all tokens
    engines = {mode: FastRollout(model, eos_token_ids=[-1], pad_token_id=tok.pad_token_id,
                                 max_new_tokens=args.tokens, compile_pointwise=mode.startswith("compiled"),
                                 attention=mode.split("+")[1])
               for mode in args.variants}
    some = next(iter(engines.values()))
    layers = some.snapshot()
    weight_bytes = sum(lin.weight[: lin.out].numel() * lin.weight.element_size() for layer in layers
                       for lin in (layer.qkv, layer.o, layer.gate_up, layer.down))
    weight_bytes += some.lm.lm_head.weight.numel() * 2
    del layers
    bandwidth = copy_bandwidth()
    result = dict(device=torch.cuda.get_device_name(0), attention_check=check, weight_gb=weight_bytes / 1e9,
                  copy_bandwidth_tb_s=bandwidth / 1e12, floor_ms_per_token=1e3 * weight_bytes / bandwidth, batches=[])
    for mode, batch in ((m, b) for m in args.variants for b in args.batch):
        engine = engines[mode]
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
            variant=mode, batch=batch, first_call_s=round(first, 2),
            wall_ms_per_token=round(1e3 * wall / args.tokens, 3),
            tokens_per_s=round(batch * args.tokens / wall, 1),
            gpu_kernel_ms_per_token=round(gpu_us / 1e3 / 64, 3), kernels_per_token=round(len(kernels) / 64, 1),
            top_kernels_ms_per_token={k: round(v / 1e3 / 64, 3) for k, v in
                                      sorted(top.items(), key=lambda kv: -kv[1])[:12]},
        ))
        print(json.dumps(result["batches"][-1]), flush=True)
        engine.release()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
