"""The fast rollout path: GRPO completions decoded from a static KV cache, one CUDA graph per token.

    Settings(rollout="fast")                    # notebook: ROLLOUT = "fast"
    sarashina-grpo train --rollout fast         # CLI
    sarashina-grpo bench                        # measures it against the article's Unsloth path

Why: GRPO time is almost all generation, and the Unsloth/TRL ``generate`` loop is bound by host overhead (hundreds
of small kernel launches and Python per token), not by the GPU. Here the whole decode step (embedding, every layer,
sampling, bookkeeping) is captured once per rollout as one CUDA graph and replayed for every token, so the GPU runs
close to its weight-reading floor.

What stays the same: ``install(trainer)`` swaps only ``GRPOTrainer._generate_single_turn``. TRL still tokenizes the
prompts, decodes, scores the rewards and computes the loss; the policy is the same model with its LoRA adapters
applied *unmerged* (``x W + s (x A) B``, as in training, so tiny early LoRA updates are not rounded away in a bf16
merge), sampled with the trainer's temperature / top-k / top-p and cut after the first EOS token, like TRL does.
4-bit base weights are dequantized to bf16 for the rollout, which is what bitsandbytes does inside each matmul anyway.

Supports Llama-architecture models (Sarashina 2.2) without biases; anything else raises ``UnsupportedModelError``
when the trainer is built. ``SARASHINA_ROLLOUT_COMPILE=1`` also compiles the per-layer function (experimental).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

EOS_CHECK_EVERY = 32  # tokens between host syncs that look for "every row has finished"
CACHE_BUCKET = 64  # KV-cache length is rounded up to this: fewer distinct shapes, aligned attention masks


class UnsupportedModelError(ValueError):
    """The fast rollout cannot decode this model or these generation settings; use rollout='default'."""


@dataclass
class Linear:
    """A projection (or q/k/v, gate/up fused) as decoded: base weight plus unmerged, pre-scaled LoRA."""

    weight: torch.Tensor  # [out, in]
    lora_a: torch.Tensor | None = None  # [R, in]: the A matrices of the fused projections, stacked
    lora_b: torch.Tensor | None = None  # [out, R]: scaling × B, block-diagonal over the fused projections

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.t()
        if self.lora_a is not None:
            shape = y.shape
            y = torch.addmm(y.reshape(-1, shape[-1]), (x @ self.lora_a.t()).reshape(-1, self.lora_a.shape[0]),
                            self.lora_b.t()).view(shape)
        return y


@dataclass
class Layer:
    norm1: torch.Tensor
    qkv: Linear
    o: Linear
    norm2: torch.Tensor
    gate_up: Linear
    down: Linear


def _dense_weight(module, dtype) -> torch.Tensor:
    base = getattr(module, "base_layer", module)
    if getattr(base, "bias", None) is not None:
        raise UnsupportedModelError("rollout='fast' decodes bias-free Llama projections only; use rollout='default'.")
    weight = base.weight
    if getattr(weight, "quant_state", None) is not None:  # bitsandbytes 4-bit: the same dequantize its matmul does
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight.detach().to(dtype)


def _lora_parts(module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, scaling × B) of each active adapter; none when adapters are off or already merged into the base."""
    if not hasattr(module, "lora_A") or getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    parts = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(name):
            raise UnsupportedModelError("rollout='fast' does not decode DoRA adapters; use rollout='default'.")
        parts.append((module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach() * module.scaling[name]))
    return parts


def fuse(modules, dtype) -> Linear:
    """One ``Linear`` computing the concatenated outputs of ``modules`` (which share their input)."""
    weights = [_dense_weight(m, dtype) for m in modules]
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)
    parts = [(i, a, b) for i, m in enumerate(modules) for a, b in _lora_parts(m)]
    if not parts:
        return Linear(weight)
    lora_a = torch.cat([a for _, a, _ in parts]).to(dtype)
    lora_b = weight.new_zeros(weight.shape[0], lora_a.shape[0])
    row_starts = [0]
    for w in weights:
        row_starts.append(row_starts[-1] + w.shape[0])
    col = 0
    for i, a, b in parts:
        lora_b[row_starts[i]:row_starts[i + 1], col:col + a.shape[0]] = b.to(dtype)
        col += a.shape[0]
    return Linear(weight, lora_a, lora_b)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # One fused kernel (float32 inside). LlamaRMSNorm rounds to bf16 before scaling instead: a rounding-level
    # difference, and four kernels fewer per norm, which matters when a decode step is a chain of tiny kernels.
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Next token per row with HF's warper order (temperature, top-k, top-p); greedy when temperature <= 0.
    No host sync, so it can run inside a CUDA graph."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, index = torch.sort(logits, descending=False)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, index, drop), float("-inf"))
    probs = logits.softmax(-1)
    # Exponential race: argmax(p / E), E ~ Exp(1), draws from p exactly like multinomial, without a sync.
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)


class FastRollout:
    """Decode a Llama-architecture (PEFT/Unsloth) causal LM from a static cache; ``generate`` returns token ids."""

    def __init__(self, model, *, eos_token_ids, pad_token_id: int, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, use_cuda_graph: bool | None = None, compile_layers=None):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        core = getattr(lm, "model", None)
        if core is None or not hasattr(core, "layers") or not hasattr(lm, "lm_head"):
            raise UnsupportedModelError(f"rollout='fast' needs a Llama-style causal LM, got {type(lm).__name__}.")
        attn = core.layers[0].self_attn
        if hasattr(attn, "q_norm") or getattr(lm.config, "model_type", "llama") not in ("llama", "mistral"):
            raise UnsupportedModelError(
                f"rollout='fast' supports Llama-architecture models, not {lm.config.model_type!r}; "
                "use rollout='default'."
            )
        cfg = lm.config
        self.lm, self.core = lm, core
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        norm = core.layers[0].input_layernorm
        self.eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        self.eos = torch.tensor(sorted({int(e) for e in eos_token_ids}))
        self.pad_token_id = pad_token_id
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.use_cuda_graph = use_cuda_graph
        if compile_layers is None:
            compile_layers = os.environ.get("SARASHINA_ROLLOUT_COMPILE") == "1"
        self._layer_fn = torch.compile(self._layer, dynamic=False) if compile_layers else None
        self.calls = 0

    # -- weights --------------------------------------------------------------------------------------------------
    def snapshot(self) -> list[Layer]:
        """The decode-time view of every layer, taken now: LoRA changes after each optimizer step."""
        dtype = self.core.embed_tokens.weight.dtype
        layers = []
        for layer in self.core.layers:
            a, m = layer.self_attn, layer.mlp
            layers.append(Layer(
                norm1=layer.input_layernorm.weight.detach(),
                qkv=fuse([a.q_proj, a.k_proj, a.v_proj], dtype),
                o=fuse([a.o_proj], dtype),
                norm2=layer.post_attention_layernorm.weight.detach(),
                gate_up=fuse([m.gate_proj, m.up_proj], dtype),
                down=fuse([m.down_proj], dtype),
            ))
        return layers

    # -- one transformer layer over T new tokens per row ---------------------------------------------------------
    def _layer(self, h, layer: Layer, cos, sin, k_cache, v_cache, slots, mask):
        """h [B,T,H]; cos/sin [B,T,D]; caches [B,L,kv,D]; slots [T] cache rows written; mask [B,1,T,L] additive."""
        batch, t, _ = h.shape
        nq, nkv, d = self.n_heads, self.n_kv, self.head_dim
        qkv = layer.qkv(_rms_norm(h, layer.norm1, self.eps)).view(batch, t, nq + 2 * nkv, d)
        qk = qkv[:, :, : nq + nkv]
        qk = qk * cos[:, :, None] + _rotate_half(qk) * sin[:, :, None]  # RoPE on q and k in one pass
        # Token-major caches: the new rows are contiguous slices, written without a transposing copy.
        k_cache.index_copy_(1, slots, qk[:, :, nq:])
        v_cache.index_copy_(1, slots, qkv[:, :, nq + nkv:])
        # Grouped-query attention without repeating the cache: query head h reads kv head h // rep (HF repeat_kv),
        # so the rep query heads of one kv head become rep × T query rows against that kv head.
        rep = nq // nkv
        q = qk[:, :, :nq].transpose(1, 2).reshape(batch, nkv, rep * t, d)
        length = k_cache.shape[1]
        m = mask[:, :, None].expand(batch, 1, rep, t, length).reshape(batch, 1, rep * t, length)
        out = F.scaled_dot_product_attention(q, k_cache.transpose(1, 2), v_cache.transpose(1, 2), attn_mask=m)
        out = out.view(batch, nq, t, d).transpose(1, 2).reshape(batch, t, nq * d)
        h = h + layer.o(out)
        gate, up = layer.gate_up(_rms_norm(h, layer.norm2, self.eps)).chunk(2, dim=-1)
        return h + layer.down(F.silu(gate) * up)

    def _forward(self, layers, tokens, positions, slots, mask, caches, cos_table, sin_table, layer_fn=None):
        h = F.embedding(tokens, self.core.embed_tokens.weight)
        cos, sin = cos_table[positions], sin_table[positions]
        for layer, (k_cache, v_cache) in zip(layers, caches, strict=True):
            h = (layer_fn or self._layer)(h, layer, cos, sin, k_cache, v_cache, slots, mask)
        h = _rms_norm(h[:, -1], self.core.norm.weight, self.eps)
        return sample_tokens(h @ self.lm.lm_head.weight.t(), self.temperature, self.top_k, self.top_p)

    def _rope_tables(self, length: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, D] for positions 0..length-1, from the model's own inverse frequencies and scaling."""
        rotary = self.core.rotary_emb
        # Unsloth's rotary module rebuilds inv_freq from the config (transformers 5 may leave the buffer stale).
        recompute = getattr(rotary, "_unsloth_recompute_inv_freq", None)
        inv_freq = (recompute() if recompute else rotary.inv_freq).to(device=device, dtype=torch.float32)
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)

    # -- a rollout -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """Completion token ids for each prompt, each cut after its first EOS token (kept), as TRL does."""
        self.calls += 1
        steps = max_new_tokens or self.max_new_tokens
        weight = self.core.embed_tokens.weight
        device, dtype = weight.device, weight.dtype
        graphs = self.use_cuda_graph if self.use_cuda_graph is not None else device.type == "cuda"
        batch, prompt_len = len(prompt_ids), max(len(p) for p in prompt_ids)
        length = -(-(prompt_len + steps) // CACHE_BUCKET) * CACHE_BUCKET
        layers = self.snapshot()

        # Left padding as in TRL: row b's prompt ends at column prompt_len - 1; positions count its real tokens.
        tokens = torch.full((batch, prompt_len), self.pad_token_id, dtype=torch.long)
        real = torch.zeros(batch, prompt_len, dtype=torch.bool)
        for row, ids in enumerate(prompt_ids):
            tokens[row, prompt_len - len(ids):] = torch.tensor(ids)
            real[row, prompt_len - len(ids):] = True
        tokens, real = tokens.to(device), real.to(device)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        positions_1d = torch.arange(length, device=device)
        cos_table, sin_table = self._rope_tables(length, dtype, device)
        caches = [tuple(torch.zeros(2, batch, length, self.n_kv, self.head_dim, dtype=dtype, device=device))
                  for _ in layers]
        neg = torch.finfo(dtype).min

        # Prefill: causal over real prompt tokens; a pad row attends to itself so it stays finite (it is never read).
        cols = torch.arange(length, device=device)
        allowed = (cols[None, :] <= cols[:prompt_len, None])[None] & F.pad(real, (0, length - prompt_len))[:, None]
        allowed |= (cols[None, :] == cols[:prompt_len, None])[None]
        prefill_mask = torch.zeros(batch, 1, prompt_len, length, dtype=dtype, device=device)
        prefill_mask.masked_fill_(~allowed[:, None], neg)
        first = self._forward(layers, tokens, positions, positions_1d[:prompt_len], prefill_mask, caches,
                              cos_table, sin_table)

        # Decode state lives in fixed buffers so that a captured graph reads and advances it on the device.
        state = dict(
            token=first.clone(), position=positions[:, -1] + 1, slot=torch.tensor([prompt_len], device=device),
            step=torch.tensor([1], device=device), mask=prefill_mask[:, :, -1:].clone(),
            out=torch.full((batch, steps), self.pad_token_id, dtype=torch.long, device=device),
        )
        state["out"][:, 0] = first

        def decode_step():
            state["mask"].index_fill_(-1, state["slot"], 0.0)
            nxt = self._forward(layers, state["token"][:, None], state["position"][:, None], state["slot"],
                                state["mask"], caches, cos_table, sin_table, self._layer_fn)
            state["out"].index_copy_(1, state["step"], nxt[:, None])
            state["token"].copy_(nxt)
            state["position"].add_(1)
            state["slot"].add_(1)
            state["step"].add_(1)

        eos = self.eos.to(device)
        graph = None
        for i in range(1, steps):
            if graph is not None:
                graph.replay()
            elif graphs and i == 2:  # step 1 ran eagerly (warm-up); capture from here on
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    decode_step()
                graph.replay()
            else:
                decode_step()
            if i % EOS_CHECK_EVERY == 0 and torch.isin(state["out"][:, : i + 1], eos).any(1).all():
                break
        del graph
        return [self._until_eos(row) for row in state["out"].tolist()]

    def _until_eos(self, row: list[int]) -> list[int]:
        eos = set(self.eos.tolist())
        for i, token in enumerate(row):
            if token in eos:
                return row[: i + 1]
        return row


def install(trainer) -> FastRollout:
    """Make ``trainer`` (a TRL ``GRPOTrainer``) generate its completions with ``FastRollout``; return the engine."""
    args = trainer.args
    if args.use_vllm or getattr(args, "use_transformers_continuous_batching", False):
        raise UnsupportedModelError("rollout='fast' replaces vLLM / continuous batching; turn those off.")
    if (trainer.repetition_penalty or 1.0) != 1.0 or trainer.min_p or getattr(trainer, "tools", None):
        raise UnsupportedModelError("rollout='fast' samples without repetition_penalty, min_p or tools; "
                                    "use rollout='default' for those.")
    engine = FastRollout(
        trainer.model, eos_token_ids=trainer.eos_token_ids, pad_token_id=trainer.processing_class.pad_token_id,
        max_new_tokens=trainer.max_completion_length, temperature=trainer.temperature, top_k=trainer.top_k or 0,
        top_p=trainer.top_p if trainer.top_p is not None else 1.0,
    )

    # The context the default path generates in (Unsloth's: inference mode in, training mode and gradient
    # checkpointing back out), so that the model is in the same state for the update whichever rollout ran.
    unwrap = getattr(sys.modules.get(type(trainer).__module__), "unwrap_model_for_generation", None)

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images or multimodal_fields:
            raise UnsupportedModelError("rollout='fast' generates text only.")
        context = contextlib.nullcontext() if unwrap is None else unwrap(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation)
        with context:
            return engine.generate(prompt_ids), None  # TRL's transformers path returns no logprobs either

    trainer._generate_single_turn = generate_single_turn  # instance attribute: overrides the class method
    trainer.fast_rollout = engine
    logger.info("Fast rollout on: static KV cache%s.", " + CUDA graph" if engine.use_cuda_graph is not False else "")
    return engine
