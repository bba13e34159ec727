"""The fast rollout path: GRPO completions decoded from a static KV cache, one CUDA graph per token.

GRPO time is almost all generation, and Unsloth/TRL's ``generate`` is bound by host overhead per token. Here the
decode step (``Linear``, compiled element-wise pieces, a split-K Triton attention) is captured once per rollout as
one CUDA graph and replayed for every token; on CPU (tests) it runs eagerly with SDPA. ``install`` swaps only TRL's
rollout hook; LoRA stays *unmerged* (tiny early updates are not rounded away in a bf16 merge), 4-bit weights are
dequantized as bitsandbytes does, and sampling and EOS cuts are TRL's. Design and measurements: docs/speed.md.
Switches for measuring: ``SARASHINA_ROLLOUT_POINTWISE=0`` (eager element-wise pieces),
``SARASHINA_ROLLOUT_ATTENTION=sdpa`` (SDPA over ``ATTN_BUCKET``-rounded lengths, one graph per bucket).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import compat
from .project import SettingsError, cuda_available

logger = logging.getLogger(__name__)

EOS_CHECK_EVERY = 32  # tokens between host syncs that look for "every row has finished"
CACHE_BUCKET = 128  # KV-cache length is rounded up to this: fewer distinct shapes, aligned attention masks
ATTN_BUCKET = 128  # decode attends to the cache's first multiple of this many slots that holds every filled one
KEEP_CACHE_BYTES = 2**30  # a KV cache (and its graphs) up to this size stays allocated for the next rollout


class UnsupportedModelError(SettingsError):  # a setting the user chose (rollout='fast'): one error line
    """The fast rollout cannot decode this model or these generation settings; use rollout='default'."""


@dataclass
class Linear:
    """A projection (q/k/v and gate/up fused) with unmerged, pre-scaled LoRA: two kernels instead of four, as the
    A rows under the base rows of ``weight`` make one GEMM give ``x W^T`` and ``x A^T``."""

    weight: torch.Tensor  # [out + R, in]: base rows, then the stacked A rows of the fused projections
    out: int  # base output rows
    lora_b: torch.Tensor | None = None  # [out, R]: scaling × B, block-diagonal over the fused projections
    rows: tuple[int, ...] = ()  # output rows of each fused projection

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(-1, x.shape[-1]) @ self.weight.t()
        if self.lora_b is not None:
            y = y[:, : self.out].addmm_(y[:, self.out:], self.lora_b.t())  # base rows += (x A^T) (s B)^T, in place
        return y.view(*x.shape[:-1], self.out)


@dataclass
class Layer:
    norm1: torch.Tensor
    norm2: torch.Tensor
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear


def _projections(layer) -> tuple[list, list, list, list]:
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj], [a.o_proj], [m.gate_proj, m.up_proj], [m.down_proj]


def _fused_lora(modules, rows: tuple[int, ...], dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(stacked A, block-diagonal scaling × B) of the fused ``modules``; None when none has an active adapter."""
    adapters = [compat.lora_pairs(module) for module in modules]
    if any(dora for pairs in adapters for *_, dora in pairs):
        raise UnsupportedModelError("rollout='fast' does not decode DoRA adapters; use rollout='default'.")
    if not any(adapters):
        return None
    lora_a = torch.cat([a for pairs in adapters for a, *_ in pairs]).to(dtype)
    blocks = [torch.cat([b * scaling for _, b, scaling, _ in pairs], dim=1) if pairs else lora_a.new_zeros(n, 0)
              for pairs, n in zip(adapters, rows, strict=True)]  # a module without an adapter: rows of zeros
    return lora_a, torch.block_diag(*blocks).to(dtype)


def fuse(modules, dtype) -> Linear:
    """One ``Linear`` computing the concatenated outputs of ``modules`` (which share their input)."""
    bases = [getattr(module, "base_layer", module) for module in modules]
    if any(getattr(base, "bias", None) is not None for base in bases):
        raise UnsupportedModelError("rollout='fast' decodes bias-free Llama projections only; use rollout='default'.")
    weights = [compat.dense_weight(base).to(dtype) for base in bases]
    rows = tuple(w.shape[0] for w in weights)
    lora = _fused_lora(modules, rows, dtype)
    if lora is None:
        return Linear(weights[0] if len(weights) == 1 else torch.cat(weights), sum(rows), rows=rows)
    return Linear(torch.cat([*weights, lora[0]]), sum(rows), lora[1], rows=rows)


def refresh_lora(linear: Linear, modules, dtype) -> bool:
    """Re-read the adapters of ``modules`` into ``linear`` in place (captured graphs read the same buffers);
    False, leaving ``linear`` as it was, when the adapter layout changed and the weights must be rebuilt."""
    lora = _fused_lora(modules, linear.rows, dtype)
    if lora is None or linear.lora_b is None:
        return lora is None and linear.lora_b is None
    lora_a = linear.weight[linear.out:]  # the A rows under the base rows
    if lora[0].shape != lora_a.shape or lora[1].shape != linear.lora_b.shape:
        return False
    lora_a.copy_(lora[0])
    linear.lora_b.copy_(lora[1])
    return True


# The element-wise pieces of a layer. On CUDA the decode step runs them torch.compile'd: each becomes one generated
# kernel instead of 2-6 eager ones, captured into the step's CUDA graph like any kernel.
def _add_rms_norm(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float):
    h = h + y
    return h, F.rms_norm(h, (h.shape[-1],), weight, eps)


def _rope_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, nq: int, nkv: int):
    """qkv [B,T,nq+2nkv,D] -> (q [B,T,nq,D] rotated, kv [2,B,T,nkv,D]: k rotated and v, ready for the cache)."""
    qk = qkv[:, :, : nq + nkv]
    half = qk.shape[-1] // 2
    rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
    qk = qk * cos[:, :, None] + rotated * sin[:, :, None]  # RoPE on q and k in one pass
    return qk[:, :, :nq], torch.stack((qk[:, :, nq:], qkv[:, :, nq + nkv:]))


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


POINTWISE = {"add_rms_norm": _add_rms_norm, "rope_kv": _rope_kv, "swiglu": _swiglu}


# -- decode attention: split-K ("flash decoding") in Triton ------------------------------------------------------
# SDPA's kernels tile 64+ query rows, but a decode step has rep = 2 per kv head (cuDNN: ~35 µs per layer at batch 36,
# docs/benchmarks/README.md). Each program here reads one block of keys/values of one (row, kv head), and a second
# kernel combines the blocks' softmax partials. Blocks past the filled length (read on the device, ``slot + 1``) exit
# at once, so one captured graph serves every length.

ATTN_BLOCK = 64  # cache slots per program of the first kernel


@functools.cache
def _triton_attention():
    import triton
    import triton.language as tl

    @triton.jit
    def partial_kernel(q_ptr, kv_ptr, mask_ptr, slot_ptr, acc_ptr, ml_ptr, scale,
                       stride_qb, stride_kvs, stride_kvb, stride_kvn, stride_mb, n_blocks,
                       NKV: tl.constexpr, REP: tl.constexpr, QROWS: tl.constexpr, D: tl.constexpr,
                       DP: tl.constexpr, BLOCK: tl.constexpr):
        bh = tl.program_id(0)  # row b, kv head h
        blk = tl.program_id(1)
        b = bh // NKV
        h = bh % NKV
        n_valid = tl.load(slot_ptr) + 1  # slots 0..slot hold keys (pads among them are masked)
        r = tl.arange(0, QROWS)  # the rep query heads of kv head h, padded to a tensor-core tile
        d = tl.arange(0, DP)  # head dim padded to a power of two (Sarashina 3B: 160 -> 256), masked
        dd = d < D
        n = blk * BLOCK + tl.arange(0, BLOCK)
        valid = n < n_valid  # a block past the filled slots loads nothing (masked loads move no bytes)
        q = tl.load(q_ptr + b * stride_qb + (h * REP + r)[:, None] * D + d[None, :],
                    mask=(r < REP)[:, None] & dd[None, :], other=0.0)  # [QROWS, DP]
        kv = kv_ptr + b * stride_kvb + n[:, None] * stride_kvn + h * D + d[None, :]
        k = tl.load(kv, mask=valid[:, None] & dd[None, :], other=0.0)  # [BLOCK, DP]
        v = tl.load(kv + stride_kvs, mask=valid[:, None] & dd[None, :], other=0.0)
        bias = tl.load(mask_ptr + b * stride_mb + n, mask=valid, other=0.0).to(tl.float32)
        scores = tl.dot(q, tl.trans(k)) * scale + bias[None, :]  # [QROWS, BLOCK], fp32 accumulation
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m = tl.max(scores, axis=1)
        p = tl.exp(scores - tl.where(m > float("-inf"), m, 0.0)[:, None])  # an empty block: p = 0, m = -inf
        out = (bh * n_blocks + blk) * REP + r
        keep = r < REP
        tl.store(ml_ptr + out * 2, m, mask=keep)
        tl.store(ml_ptr + out * 2 + 1, tl.sum(p, axis=1), mask=keep)
        tl.store(acc_ptr + out[:, None] * D + d[None, :], tl.dot(p.to(v.dtype), v), mask=keep[:, None] & dd[None, :])

    @triton.jit
    def combine_kernel(acc_ptr, ml_ptr, out_ptr, stride_ob, n_blocks,
                       NKV: tl.constexpr, REP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, NB: tl.constexpr):
        bh = tl.program_id(0)
        r = tl.program_id(1)
        b = bh // NKV
        h = bh % NKV
        i = tl.arange(0, NB)
        d = tl.arange(0, DP)
        dd = d < D
        live = i < n_blocks
        row = (bh * n_blocks + i) * REP + r
        m = tl.load(ml_ptr + row * 2, mask=live, other=float("-inf"))
        m_all = tl.max(m, axis=0)
        w = tl.where(m > float("-inf"), tl.exp(m - m_all), 0.0)
        total = tl.sum(w * tl.load(ml_ptr + row * 2 + 1, mask=live, other=0.0), axis=0)
        acc = tl.load(acc_ptr + row[:, None] * D + d[None, :], mask=live[:, None] & dd[None, :], other=0.0)
        o = tl.sum(w[:, None] * acc, axis=0) / total
        tl.store(out_ptr + b * stride_ob + (h * REP + r) * D + d, o.to(out_ptr.dtype.element_ty), mask=dd)

    def attend(q: torch.Tensor, kv_cache: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        _, batch, length, nkv, d = kv_cache.shape
        rep = q.shape[1] // nkv
        n_blocks = triton.cdiv(length, ATTN_BLOCK)
        acc = torch.empty(batch * nkv * n_blocks * rep, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(batch * nkv * n_blocks * rep, 2, dtype=torch.float32, device=q.device)
        out = torch.empty_like(q)
        partial_kernel[(batch * nkv, n_blocks)](
            q, kv_cache, mask, slot, acc, ml, d ** -0.5, q.stride(0), kv_cache.stride(0), kv_cache.stride(1),
            kv_cache.stride(2), mask.stride(0), n_blocks, NKV=nkv, REP=rep, QROWS=max(16, rep), D=d,
            DP=max(16, triton.next_power_of_2(d)), BLOCK=ATTN_BLOCK, num_warps=4)
        combine_kernel[(batch * nkv, rep)](acc, ml, out, out.stride(0), n_blocks, NKV=nkv, REP=rep, D=d,
                                           DP=triton.next_power_of_2(d), NB=triton.next_power_of_2(n_blocks),
                                           num_warps=4)
        return out

    return attend


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor):
    """q [B,nq,D] (one new token per row); kv_cache [2,B,L,nkv,D]; mask [B,L] additive; slot [1]: the last filled
    slot. softmax(q k^T / sqrt(D) + mask) v over slots 0..slot, [B,nq,D] (on CPU only under TRITON_INTERPRET=1)."""
    return _triton_attention()(q, kv_cache, mask, slot)


def split_k_agrees_with_sdpa(nkv: int, rep: int, head_dim: int, dtype, device) -> bool:
    """Run the split-K kernel once on random inputs of this shape against SDPA; False (and a warning) if it fails
    to build or disagrees, so that the rollout falls back to SDPA instead of decoding garbage."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    batch, length, slot = 2, 3 * ATTN_BLOCK, 2 * ATTN_BLOCK + 5
    kv = torch.randn(2, batch, length, nkv, head_dim, generator=gen).to(device, dtype)
    q = torch.randn(batch, nkv * rep, head_dim, generator=gen).to(device, dtype)
    mask = torch.zeros(batch, length, dtype=dtype, device=device)
    mask[0, :9] = torch.finfo(dtype).min
    try:
        out = decode_attention(q, kv, mask, torch.tensor([slot], device=device)).float()
    except Exception as err:  # no Triton, an unsupported GPU or shape: SDPA still decodes
        logger.warning("Split-K decode attention unavailable (%s: %s); using SDPA.", type(err).__name__, err)
        return False
    keys, values = (kv[i, :, : slot + 1].transpose(1, 2).float() for i in (0, 1))
    ref = F.scaled_dot_product_attention(q.view(batch, nkv, rep, head_dim).float(), keys, values,
                                         attn_mask=mask[:, None, None, : slot + 1].float()).reshape(out.shape)
    err = ((out - ref).norm() / ref.norm()).item()
    if not err < 2e-2:  # bf16 inputs: ~2e-3 expected
        logger.warning("Split-K decode attention disagrees with SDPA (relative error %.3g); using SDPA.", err)
        return False
    return True


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


@dataclass(eq=False)
class _Decoder:
    """A KV cache with its decode buffers and CUDA graphs (one per attention length), for one batch shape."""

    batch: int
    length: int
    steps: int
    caches: list[torch.Tensor]  # per layer [2, B, L, kv, D]: k and v
    cos: torch.Tensor
    sin: torch.Tensor
    state: dict[str, torch.Tensor]
    step: object  # step(attn_len): one decode step on the state
    forced: bool = False  # its step forces EOS at state["stop"] (the benchmark's realistic lengths)
    graphs: dict = field(default_factory=dict)
    warm: set = field(default_factory=set)


class FastRollout:
    """Decode a Llama-architecture (PEFT/Unsloth) causal LM from a static cache; ``generate`` returns token ids."""

    def __init__(self, model, *, eos_token_ids, pad_token_id: int, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, use_cuda_graph: bool | None = None,
                 compile_pointwise: bool | None = None, attention: str | None = None):
        lm = language_model(model)
        core = getattr(lm, "model", None)
        if core is None or not hasattr(core, "layers") or not hasattr(lm, "lm_head"):
            raise UnsupportedModelError(f"rollout='fast' needs a Llama-style causal LM, got {type(lm).__name__}.")
        cfg = lm.config
        if hasattr(core.layers[0].self_attn, "q_norm") or getattr(cfg, "model_type", "llama") not in FAST_ARCHITECTURES:
            raise UnsupportedModelError(
                f"rollout='fast' supports Llama-architecture models, not {cfg.model_type!r}; use rollout='default'.")
        self.lm, self.core = lm, core
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        norm = core.layers[0].input_layernorm
        self.eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        self.eos = torch.tensor(sorted({int(e) for e in eos_token_ids}))
        self.pad_token_id, self.max_new_tokens, self.use_cuda_graph = pad_token_id, max_new_tokens, use_cuda_graph
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.compile_pointwise, self._compiled = compile_pointwise, None  # None: see _decode_fns
        self.attention = attention  # "triton" (split-K) or "sdpa"; None: see _split_k_attention
        self._split_k_ok = None  # the kernel's one-time check against SDPA (a failing Triton falls back to SDPA)
        self.forced_lengths = None  # benchmark hook: batch size -> each row's length, its last token forced to EOS
        self.calls = 0
        self._layers: list[Layer] | None = None  # kept between rollouts when the base weights are frozen
        self._decoder: _Decoder | None = None  # kept between rollouts when its KV cache is small
        self._pool = self._stream = self._keeper = None  # one graph memory pool and capture stream for all captures

    # -- weights --------------------------------------------------------------------------------------------------
    def snapshot(self) -> list[Layer]:
        """The decode-time view of every layer, taken now: LoRA changes after each optimizer step."""
        dtype = self.core.embed_tokens.weight.dtype
        return [Layer(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach(),
                      *(fuse(group, dtype) for group in _projections(layer))) for layer in self.core.layers]

    def layers(self) -> list[Layer]:
        """The decode-time layers: dequantized once while the base weights are frozen (LoRA training), with the
        LoRA factors re-read before every rollout. A changed adapter layout drops the captured graphs."""
        dtype = self.core.embed_tokens.weight.dtype
        if self._layers is None:
            layers = self.snapshot()
            if not any(getattr(getattr(m, "base_layer", m).weight, "requires_grad", False)
                       for layer in self.core.layers for group in _projections(layer) for m in group):
                self._layers = layers
            return layers
        for layer, decoded in zip(self.core.layers, self._layers, strict=True):
            for group, linear in zip(_projections(layer), (decoded.qkv, decoded.o, decoded.gate_up, decoded.down),
                                     strict=True):
                if not refresh_lora(linear, group, dtype):  # adapters added or removed: rebuild everything
                    self.release()
                    return self.layers()
        return self._layers

    # -- one transformer layer over T new tokens per row ---------------------------------------------------------
    def _layer(self, h, x, layer: Layer, next_norm, cos, sin, kv_cache, slots, mask, attn_len: int, fns):
        """h [B,T,H] the residual stream, x = norm1(h); returns (h, x) for the next layer (x normed with
        ``next_norm``). cos/sin [B,T,D]; kv_cache [2,B,L,kv,D]; slots [T] cache rows written; mask [B,1,T,A]
        additive over the first A = ``attn_len`` cache rows, the only ones attended to."""
        batch, t, _ = h.shape
        nq, nkv, d = self.n_heads, self.n_kv, self.head_dim
        q, kv = fns["rope_kv"](layer.qkv(x).view(batch, t, nq + 2 * nkv, d), cos, sin, nq, nkv)
        # Token-major caches, k and v in one tensor: the new rows of both are written by one index_copy_.
        kv_cache.index_copy_(2, slots, kv)
        if "attention" in fns:  # decode on CUDA: the split-K kernel over the filled slots, read on the device
            out = fns["attention"](q.view(batch, nq, d), kv_cache, mask.view(batch, -1), slots).view(batch, 1, nq * d)
        else:
            # Grouped-query attention without repeating the cache: query head h reads kv head h // rep (HF
            # repeat_kv), so the rep query heads of one kv head become rep × T query rows against that kv head.
            rep = nq // nkv
            q = q.transpose(1, 2).reshape(batch, nkv, rep * t, d)  # one new token: a view, no copy
            if t > 1:  # (one new token: the [B,1,1,A] mask broadcasts over the rep query rows, no copy)
                mask = mask[:, :, None].expand(batch, 1, rep, t, attn_len).reshape(batch, 1, rep * t, attn_len)
            keys, values = kv_cache[0, :, :attn_len].transpose(1, 2), kv_cache[1, :, :attn_len].transpose(1, 2)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            out = out.view(batch, nq, t, d).transpose(1, 2).reshape(batch, t, nq * d)
        h, x = fns["add_rms_norm"](h, layer.o(out), layer.norm2, self.eps)
        return fns["add_rms_norm"](h, layer.down(fns["swiglu"](layer.gate_up(x))), next_norm, self.eps)

    def _forward(self, layers, tokens, positions, slots, mask, caches, cos_table, sin_table, attn_len: int,
                 fns=POINTWISE):
        h = F.embedding(tokens, self.core.embed_tokens.weight)
        cos, sin = cos_table[positions], sin_table[positions]
        # One fused kernel (float32 inside). LlamaRMSNorm rounds to bf16 before scaling instead: a rounding-level
        # difference, and four kernels fewer per norm (the compiled pieces use it too).
        x = F.rms_norm(h, (h.shape[-1],), layers[0].norm1, self.eps)
        norms = [layer.norm1 for layer in layers[1:]] + [self.core.norm.weight.detach()]  # final norm last
        for layer, next_norm, kv_cache in zip(layers, norms, caches, strict=True):
            h, x = self._layer(h, x, layer, next_norm, cos, sin, kv_cache, slots, mask, attn_len, fns)
        return sample_tokens(x[:, -1] @ self.lm.lm_head.weight.t(), self.temperature, self.top_k, self.top_p)

    def _decode_fns(self, device) -> dict:
        """The element-wise pieces (and the attention) of a decode step: compiled / Triton on CUDA by default."""
        use = self.compile_pointwise
        if use is None:  # compiled on CUDA unless SARASHINA_ROLLOUT_POINTWISE=0, eager on CPU (tests)
            use = device.type == "cuda" and os.environ.get("SARASHINA_ROLLOUT_POINTWISE", "1") != "0"
        if use and self._compiled is None:
            # dynamic=False: decode shapes are fixed per batch size. Inductor's own CUDA graphs stay off: these run
            # inside the engine's graph capture.
            self._compiled = {name: torch.compile(fn, dynamic=False, options={"triton.cudagraphs": False})
                              for name, fn in POINTWISE.items()}
        fns = dict(self._compiled if use else POINTWISE)
        if self._split_k_attention(device):
            fns["attention"] = decode_attention
        return fns

    def _split_k_attention(self, device) -> bool:
        wanted = self.attention == "triton"
        if self.attention is None:  # Triton on CUDA unless SARASHINA_ROLLOUT_ATTENTION=sdpa
            wanted = device.type == "cuda" and os.environ.get("SARASHINA_ROLLOUT_ATTENTION", "triton") != "sdpa"
        if wanted and self._split_k_ok is None:
            self._split_k_ok = split_k_agrees_with_sdpa(self.n_kv, self.n_heads // self.n_kv, self.head_dim,
                                                        self.core.embed_tokens.weight.dtype, device)
        return wanted and self._split_k_ok

    def _rope_tables(self, length: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, D] for positions 0..length-1, from the model's own inverse frequencies and scaling."""
        rotary = self.core.rotary_emb
        inv_freq = compat.rotary_inv_freq(rotary).to(device=device, dtype=torch.float32)
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)

    # -- a rollout -----------------------------------------------------------------------------------------------
    def _new_decoder(self, batch: int, length: int, steps: int, layers, dtype, device, forced: bool) -> _Decoder:
        cos, sin = self._rope_tables(length, dtype, device)
        # Zeros, not empty: stale or unwritten rows are masked, and 0 × masked row must not be 0 × NaN.
        caches = [torch.zeros(2, batch, length, self.n_kv, self.head_dim, dtype=dtype, device=device) for _ in layers]
        # Decode state lives in fixed buffers so that captured graphs read and advance it on the device.
        long = dict(dtype=torch.long, device=device)
        state = dict(token=torch.zeros(batch, **long), position=torch.zeros(batch, **long), slot=torch.zeros(1, **long),
                     step=torch.zeros(1, **long), mask=torch.zeros(batch, 1, 1, length, dtype=dtype, device=device),
                     out=torch.zeros(batch, steps, **long),
                     stop=torch.full((batch,), -1, **long))  # forced: the step that emits EOS
        fns = self._decode_fns(device)
        eos = int(self.eos[0])

        def step(attn_len: int):
            state["mask"].index_fill_(-1, state["slot"], 0.0)
            nxt = self._forward(layers, state["token"][:, None], state["position"][:, None], state["slot"],
                                state["mask"][..., :attn_len], caches, cos, sin, attn_len, fns)
            if forced:
                nxt = torch.where(state["step"] == state["stop"], eos, nxt)
            state["out"].index_copy_(1, state["step"], nxt[:, None])
            state["token"].copy_(nxt)
            for name in ("position", "slot", "step"):
                state[name].add_(1)

        return _Decoder(batch, length, steps, caches, cos, sin, state, step, forced=forced)

    def _capture(self, fn) -> torch.cuda.CUDAGraph:
        """``fn`` captured as a CUDA graph into one long-lived pool, without ``torch.cuda.graph``'s ``empty_cache()``
        (which would also empty the pinned-host cache every rollout)."""
        first = self._stream is None
        if first:
            self._stream = torch.cuda.Stream()
            # One pool for every capture, kept alive by a one-kernel graph that never dies: when all the graphs
            # of a pool die, the pool is released (and torch 2.11's pinned-host allocator asserts if its id is
            # captured into again), and dead pools stay reserved until the next empty_cache().
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            if first:
                self._keeper = (torch.cuda.CUDAGraph(), torch.zeros(1, device="cuda"))
                self._keeper[0].capture_begin(pool=self._pool)
                self._keeper[1].add_(1)
                self._keeper[0].capture_end()
            graph.capture_begin(pool=self._pool)
            try:
                fn()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self._stream)
        return graph

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """Completion token ids for each prompt, each cut after its first EOS token (kept), as TRL does."""
        self.calls += 1
        steps = max_new_tokens or self.max_new_tokens
        weight = self.core.embed_tokens.weight
        device, dtype = weight.device, weight.dtype
        graphs = self.use_cuda_graph if self.use_cuda_graph is not None else device.type == "cuda"
        batch, prompt_len = len(prompt_ids), max(len(p) for p in prompt_ids)
        layers = self.layers()
        forced = self.forced_lengths(batch) if self.forced_lengths is not None else None
        dec = self._decoder
        if (dec is None or (dec.batch, dec.steps, dec.forced) != (batch, steps, forced is not None)
                or dec.length < prompt_len + steps):
            self._decoder = dec = None  # freed before the next one is allocated
            length = -(-(prompt_len + steps) // CACHE_BUCKET) * CACHE_BUCKET
            dec = self._new_decoder(batch, length, steps, layers, dtype, device, forced is not None)

        # Left padding as in TRL: row b's prompt ends at column prompt_len - 1; positions count its real tokens.
        pads = [prompt_len - len(ids) for ids in prompt_ids]
        tokens = torch.tensor([[self.pad_token_id] * n + list(ids) for n, ids in zip(pads, prompt_ids, strict=True)],
                              dtype=torch.long, device=device)
        real = torch.arange(prompt_len, device=device)[None] >= torch.tensor(pads, device=device)[:, None]
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        neg = torch.finfo(dtype).min

        # Prefill over the prompt columns only: causal over real tokens; a pad row attends to itself so that it
        # stays finite (it is never read).
        cols = torch.arange(prompt_len, device=device)
        allowed = (cols[None, :] <= cols[:, None])[None] & real[:, None]
        allowed |= (cols[None, :] == cols[:, None])[None]
        prefill_mask = torch.zeros(batch, 1, prompt_len, prompt_len, dtype=dtype, device=device)
        prefill_mask.masked_fill_(~allowed[:, None], neg)
        first = self._forward(layers, tokens, positions, cols, prefill_mask, dec.caches, dec.cos, dec.sin,
                              prompt_len)

        state = dec.state
        if forced is not None:  # row b's completion ends with EOS as its forced[b]-th token
            state["stop"].copy_(torch.tensor(forced, dtype=torch.long) - 1)
            first = torch.where(state["stop"] == 0, int(self.eos[0]), first)
        state["token"].copy_(first)
        state["position"].copy_(positions[:, -1] + 1)
        state["slot"].fill_(prompt_len)
        state["step"].fill_(1)
        state["mask"].fill_(neg)  # cache rows of an earlier rollout, and rows not yet written, stay masked
        state["mask"][:, 0, 0, :prompt_len].masked_fill_(real, 0.0)
        state["out"].fill_(self.pad_token_id)
        state["out"][:, 0] = first

        eos = self.eos.to(device)
        split_k = self._split_k_attention(device)
        for i in range(1, steps):
            # Attend to the first ATTN_BUCKET multiple of cache rows that holds slot prompt_len + i - 1 (this step's).
            attn_len = (dec.length if split_k  # the kernel reads the filled length itself
                        else min(dec.length, -(-(prompt_len + i) // ATTN_BUCKET) * ATTN_BUCKET))
            graph = dec.graphs.get(attn_len)
            if graph is not None:
                graph.replay()
            elif graphs and attn_len in dec.warm:  # each length runs once eagerly (warm-up), then is captured
                graph = dec.graphs[attn_len] = self._capture(lambda n=attn_len: dec.step(n))
                graph.replay()
            else:
                dec.step(attn_len)
                dec.warm.add(attn_len)
            if i % EOS_CHECK_EVERY == 0 and torch.isin(state["out"][:, : i + 1], eos).any(1).all():
                break
        out = state["out"].tolist()
        cache_bytes = sum(c.numel() * c.element_size() for c in dec.caches)
        # Kept only over persistent layers: its graphs read their buffers.
        self._decoder = dec if self._layers is not None and cache_bytes <= KEEP_CACHE_BYTES else None
        return [self._until_eos(row) for row in out]

    def release(self) -> None:
        """Free the kept weights, KV cache and graphs (the next rollout rebuilds them)."""
        self._layers = self._decoder = None

    def _until_eos(self, row: list[int]) -> list[int]:
        eos = set(self.eos.tolist())
        return next((row[: i + 1] for i, token in enumerate(row) if token in eos), row)


FAST_ARCHITECTURES = ("llama", "mistral")  # config.model_type values FastRollout decodes


def language_model(model):  # the transformers model under a PEFT wrapper
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model) -> str | None:
    return getattr(getattr(language_model(model), "config", None), "model_type", None)


def unsupported(trainer) -> str | None:
    """What of the trainer's Llama model weights, else of its generation settings, the fast rollout does not decode or
    sample with; None if nothing (checked at trainer build)."""
    model = trainer.model
    config = getattr(language_model(model), "config", None)
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biased projections"
    if compat.sliding_window(config):
        return "a sliding attention window"  # the engine attends to the whole context
    if any(isinstance(dora := getattr(m, "use_dora", None), dict) and any(dora.values()) for m in model.modules()):
        return "DoRA adapters"
    found = [name for name, on in (("repetition_penalty", (trainer.repetition_penalty or 1.0) != 1.0),
                                   ("min_p", bool(trainer.min_p)), ("tools", bool(getattr(trainer, "tools", None))),
                                   ("generation_kwargs", bool(getattr(trainer.args, "generation_kwargs", None))))
             if on]
    return ", ".join(found) or None


def copy_bytes(model) -> int:
    """GPU memory the engine adds: a bf16 copy of every decoder projection (fused, 4-bit ones dequantized)."""
    c = language_model(model).config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * 2 * (c.num_attention_heads + c.num_key_value_heads)
    return 2 * c.num_hidden_layers * (attention + 3 * c.hidden_size * c.intermediate_size)


# Beyond the copy, what a training step still allocates after the model is loaded: the article's 3B recipe peaks at
# 4.3 GiB reserved on the default path and 9.9 on the fast one (docs/speed.md), of which the 4-bit model is ~2.2.
STEP_HEADROOM_BYTES = 2 << 30


def choose(trainer, asked: str, backend: str = "unsloth") -> str:
    """The rollout for the setting ``asked``: itself, or for 'auto' 'fast' only where the GPU suite checks it exact
    (a Llama model on a CUDA GPU through Unsloth, sampling it honours) and the card has room for its bf16 weights.
    ``backend``: the run's, resolved (the trainer's config, Unsloth's class in a process that imported it, has none)."""
    if asked != "auto":
        return asked
    args = trainer.args
    if args.use_vllm or getattr(args, "use_transformers_continuous_batching", False):
        return "vllm" if args.use_vllm else "paged"  # the user chose the engine that generates
    if not cuda_available():  # silently: the engine runs eagerly without CUDA (for tests), a CPU run misses nothing
        return "default"
    why = None
    if (kind := model_type(trainer.model)) != "llama":
        why = f"the fast one is checked on Llama models only, not this {kind} model"
    elif backend != "unsloth":
        why = f"the fast one is checked with --backend unsloth only, not {backend}"
    elif what := unsupported(trainer):
        why = f"the fast one does not decode or sample with {what}"
    else:
        free, _ = torch.cuda.mem_get_info(next(trainer.model.parameters()).device)
        need = copy_bytes(trainer.model) + STEP_HEADROOM_BYTES
        if free < need:
            why = f"the fast one needs about {need / 2**30:.1f} GiB free for its bf16 weights, {free / 2**30:.1f} here"
    if why is None:
        return "fast"
    # INFO, so that it is printed once (by the main process) under several processes, not once per rank.
    logger.info("rollout='auto' generates with the default rollout: %s (--rollout default silences this line).", why)
    return "default"


def install(trainer) -> FastRollout | None:
    """Make ``trainer`` (a TRL ``GRPOTrainer``) generate its completions with ``FastRollout``; return the engine, or
    None where the model's architecture is not one it decodes: the trainer keeps the default rollout."""
    if (kind := model_type(trainer.model)) not in FAST_ARCHITECTURES:
        logger.warning("rollout='fast' decodes %s models only; this %s model uses the default rollout.",
                       "/".join(FAST_ARCHITECTURES), kind)
        return None
    args = trainer.args
    if args.use_vllm or getattr(args, "use_transformers_continuous_batching", False):
        raise UnsupportedModelError("rollout='fast' replaces vLLM / continuous batching; turn those off.")
    if (what := unsupported(trainer)) is not None:
        raise UnsupportedModelError(f"rollout='fast' does not decode or sample with {what}: use rollout='default' "
                                    "(or 'auto', which picks it) for this run.")
    engine = FastRollout(trainer.model, eos_token_ids=trainer.eos_token_ids,
                         pad_token_id=trainer.processing_class.pad_token_id,
                         max_new_tokens=trainer.max_completion_length, temperature=trainer.temperature,
                         top_k=trainer.top_k or 0, top_p=trainer.top_p if trainer.top_p is not None else 1.0)

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images or multimodal_fields:
            raise UnsupportedModelError("rollout='fast' generates text only.")
        # The context the default path generates in (Unsloth's: inference mode in, training mode and gradient
        # checkpointing back out), so that the model is in the same state for the update whichever rollout ran.
        with compat.generation_context(trainer):
            return engine.generate(prompt_ids), None  # TRL's transformers path returns no logprobs either

    compat.replace_generation(trainer, generate_single_turn)
    trainer.fast_rollout = engine
    graph = engine.use_cuda_graph is not False and torch.cuda.is_available()
    logger.info("Fast rollout on: static KV cache%s.", " + CUDA graph" if graph else " (eager, no CUDA)")
    return engine
