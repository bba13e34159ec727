"""The fast rollout path: GRPO completions decoded from a static KV cache, one CUDA graph per token.

    Settings(rollout="fast")                    # notebook: ROLLOUT = "fast"
    sarashina-grpo train --rollout fast         # CLI
    sarashina-grpo bench                        # measures it against the article's Unsloth path

Why: GRPO time is almost all generation, and the Unsloth/TRL ``generate`` loop is bound by host overhead (hundreds
of small kernel launches and Python per token), not by the GPU. Here the whole decode step (embedding, every layer,
sampling, bookkeeping) is captured once per rollout as one CUDA graph and replayed for every token, so the GPU runs
close to its weight-reading floor.

What stays the same: ``install(trainer)`` swaps only TRL's rollout hook (``compat.GENERATE_METHOD``). TRL still
tokenizes the prompts, decodes, scores the rewards and computes the loss; the policy is the same model with its LoRA
adapters applied *unmerged* (``x W + s (x A) B``, as in training, so tiny early LoRA updates are not rounded away in a
bf16 merge), sampled with the trainer's temperature / top-k / top-p and cut after the first EOS token, like TRL does.
4-bit base weights are dequantized to bf16 for the rollout, which is what bitsandbytes does inside each matmul anyway.

Between rollouts the engine keeps the dequantized base weights (frozen; the LoRA factors are re-read into fixed
buffers before every rollout) and, when the KV cache is small (``KEEP_CACHE_BYTES``: the 6-completion case), the
cache and its captured graphs too. Graphs are captured without ``torch.cuda.graph``'s ``empty_cache()`` (which
would also empty the pinned-host cache every rollout), into one long-lived pool. Decoding attends only to the
filled part of the cache, one graph per ``ATTN_BUCKET`` of length (docs/benchmarks/README.md has the measurements).

Supports Llama-architecture models (Sarashina 2.2) without biases; anything else raises ``UnsupportedModelError``
when the trainer is built. ``SARASHINA_ROLLOUT_COMPILE=1`` also compiles the per-layer function (experimental).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import compat

logger = logging.getLogger(__name__)

EOS_CHECK_EVERY = 32  # tokens between host syncs that look for "every row has finished"
CACHE_BUCKET = 128  # KV-cache length is rounded up to this: fewer distinct shapes, aligned attention masks
ATTN_BUCKET = 128  # decode attends to the cache's first multiple of this many slots that holds every filled one
KEEP_CACHE_BYTES = 2**30  # a KV cache (and its graphs) up to this size stays allocated for the next rollout


class UnsupportedModelError(ValueError):
    """The fast rollout cannot decode this model or these generation settings; use rollout='default'."""


@dataclass
class Linear:
    """A projection (or q/k/v, gate/up fused) as decoded: base weight plus unmerged, pre-scaled LoRA."""

    weight: torch.Tensor  # [out, in]
    lora_a: torch.Tensor | None = None  # [R, in]: the A matrices of the fused projections, stacked
    lora_b: torch.Tensor | None = None  # [out, R]: scaling × B, block-diagonal over the fused projections
    rows: tuple[int, ...] = ()  # output rows of each fused projection

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
    return compat.dense_weight(base).to(dtype)


def _lora_parts(module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, scaling × B) of each active adapter; none when adapters are off or already merged into the base."""
    parts = []
    for lora_a, lora_b, scaling, dora in compat.lora_pairs(module):
        if dora:
            raise UnsupportedModelError("rollout='fast' does not decode DoRA adapters; use rollout='default'.")
        parts.append((lora_a, lora_b * scaling))
    return parts


def _fused_lora(modules, rows: tuple[int, ...], dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(stacked A, block-diagonal scaling × B) of the fused ``modules``; None when none has an active adapter."""
    parts = [(i, a, b) for i, m in enumerate(modules) for a, b in _lora_parts(m)]
    if not parts:
        return None
    lora_a = torch.cat([a for _, a, _ in parts]).to(dtype)
    lora_b = lora_a.new_zeros(sum(rows), lora_a.shape[0])
    row_starts = [0]
    for r in rows:
        row_starts.append(row_starts[-1] + r)
    col = 0
    for i, a, b in parts:
        lora_b[row_starts[i]:row_starts[i + 1], col:col + a.shape[0]] = b.to(dtype)
        col += a.shape[0]
    return lora_a, lora_b


def fuse(modules, dtype) -> Linear:
    """One ``Linear`` computing the concatenated outputs of ``modules`` (which share their input)."""
    weights = [_dense_weight(m, dtype) for m in modules]
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)
    rows = tuple(w.shape[0] for w in weights)
    lora = _fused_lora(modules, rows, dtype)
    return Linear(weight, rows=rows) if lora is None else Linear(weight, *lora, rows=rows)


def refresh_lora(linear: Linear, modules, dtype) -> bool:
    """Re-read the adapters of ``modules`` into ``linear``, in place when the shapes allow (captured graphs read the
    same buffers); False when the buffers had to be replaced."""
    lora = _fused_lora(modules, linear.rows, dtype)
    if lora is None or linear.lora_a is None:
        same = lora is None and linear.lora_a is None
    else:
        same = lora[0].shape == linear.lora_a.shape and lora[1].shape == linear.lora_b.shape
    if same and lora is not None:
        linear.lora_a.copy_(lora[0])
        linear.lora_b.copy_(lora[1])
    elif not same:
        linear.lora_a, linear.lora_b = lora if lora is not None else (None, None)
    return same


def _frozen(module) -> bool:
    return not getattr(getattr(module, "base_layer", module).weight, "requires_grad", False)


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


@dataclass(eq=False)
class _Decoder:
    """A KV cache with its decode buffers and CUDA graphs (one per attention length), for one batch shape."""

    batch: int
    length: int
    steps: int
    caches: list[tuple[torch.Tensor, torch.Tensor]]
    cos: torch.Tensor
    sin: torch.Tensor
    state: dict[str, torch.Tensor]
    step: object  # step(attn_len): one decode step on the state
    graphs: dict = field(default_factory=dict)
    warm: set = field(default_factory=set)


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
        self._layers: list[Layer] | None = None  # kept between rollouts when the base weights are frozen
        self._decoder: _Decoder | None = None  # kept between rollouts when its KV cache is small
        self._pool = self._stream = self._keeper = None  # one graph memory pool and capture stream for all captures

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

    def _modules(self, layer):
        a, m = layer.self_attn, layer.mlp
        return [a.q_proj, a.k_proj, a.v_proj], [a.o_proj], [m.gate_proj, m.up_proj], [m.down_proj]

    def layers(self) -> list[Layer]:
        """The decode-time layers: dequantized once while the base weights are frozen (LoRA training), with the
        LoRA factors re-read before every rollout. A changed adapter layout drops the captured graphs."""
        dtype = self.core.embed_tokens.weight.dtype
        if self._layers is None:
            layers = self.snapshot()
            if all(_frozen(m) for layer in self.core.layers for group in self._modules(layer) for m in group):
                self._layers = layers
            return layers
        same = True
        for layer, decoded in zip(self.core.layers, self._layers, strict=True):
            for group, linear in zip(self._modules(layer), (decoded.qkv, decoded.o, decoded.gate_up, decoded.down),
                                     strict=True):
                same &= refresh_lora(linear, group, dtype)
        if not same:
            self._decoder = None
        return self._layers

    # -- one transformer layer over T new tokens per row ---------------------------------------------------------
    def _layer(self, h, layer: Layer, cos, sin, k_cache, v_cache, slots, mask, attn_len: int):
        """h [B,T,H]; cos/sin [B,T,D]; caches [B,L,kv,D]; slots [T] cache rows written; mask [B,1,T,A] additive
        over the first A = ``attn_len`` cache rows, the only ones attended to."""
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
        if t > 1:
            mask = mask[:, :, None].expand(batch, 1, rep, t, attn_len).reshape(batch, 1, rep * t, attn_len)
        # (one new token: the [B,1,1,A] mask broadcasts over the rep query rows, no copy)
        keys, values = k_cache[:, :attn_len].transpose(1, 2), v_cache[:, :attn_len].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.view(batch, nq, t, d).transpose(1, 2).reshape(batch, t, nq * d)
        h = h + layer.o(out)
        gate, up = layer.gate_up(_rms_norm(h, layer.norm2, self.eps)).chunk(2, dim=-1)
        return h + layer.down(F.silu(gate) * up)

    def _forward(self, layers, tokens, positions, slots, mask, caches, cos_table, sin_table, attn_len: int,
                 layer_fn=None):
        h = F.embedding(tokens, self.core.embed_tokens.weight)
        cos, sin = cos_table[positions], sin_table[positions]
        for layer, (k_cache, v_cache) in zip(layers, caches, strict=True):
            h = (layer_fn or self._layer)(h, layer, cos, sin, k_cache, v_cache, slots, mask, attn_len)
        h = _rms_norm(h[:, -1], self.core.norm.weight, self.eps)
        return sample_tokens(h @ self.lm.lm_head.weight.t(), self.temperature, self.top_k, self.top_p)

    def _rope_tables(self, length: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, D] for positions 0..length-1, from the model's own inverse frequencies and scaling."""
        rotary = self.core.rotary_emb
        # Unsloth's rotary module rebuilds inv_freq from the config (transformers 5 may leave the buffer stale).
        inv_freq = compat.rotary_inv_freq(rotary).to(device=device, dtype=torch.float32)
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)

    # -- a rollout -----------------------------------------------------------------------------------------------
    def _new_decoder(self, batch: int, length: int, steps: int, layers, dtype, device) -> _Decoder:
        cos, sin = self._rope_tables(length, dtype, device)
        # Zeros, not empty: stale or unwritten rows are masked, and 0 × masked row must not be 0 × NaN.
        caches = [tuple(torch.zeros(2, batch, length, self.n_kv, self.head_dim, dtype=dtype, device=device))
                  for _ in layers]
        # Decode state lives in fixed buffers so that captured graphs read and advance it on the device.
        state = dict(
            token=torch.zeros(batch, dtype=torch.long, device=device),
            position=torch.zeros(batch, dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device), step=torch.zeros(1, dtype=torch.long, device=device),
            mask=torch.zeros(batch, 1, 1, length, dtype=dtype, device=device),
            out=torch.zeros(batch, steps, dtype=torch.long, device=device),
        )

        def step(attn_len: int):
            state["mask"].index_fill_(-1, state["slot"], 0.0)
            nxt = self._forward(layers, state["token"][:, None], state["position"][:, None], state["slot"],
                                state["mask"][..., :attn_len], caches, cos, sin, attn_len, self._layer_fn)
            state["out"].index_copy_(1, state["step"], nxt[:, None])
            state["token"].copy_(nxt)
            state["position"].add_(1)
            state["slot"].add_(1)
            state["step"].add_(1)

        return _Decoder(batch, length, steps, caches, cos, sin, state, step)

    def _capture(self, fn) -> torch.cuda.CUDAGraph:
        """``fn`` captured as a CUDA graph, without ``torch.cuda.graph``'s ``empty_cache()`` (see module doc)."""
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
        dec = self._decoder
        if dec is None or (dec.batch, dec.steps) != (batch, steps) or dec.length < prompt_len + steps:
            self._decoder = dec = None  # freed before the next one is allocated
            length = -(-(prompt_len + steps) // CACHE_BUCKET) * CACHE_BUCKET
            dec = self._new_decoder(batch, length, steps, layers, dtype, device)

        # Left padding as in TRL: row b's prompt ends at column prompt_len - 1; positions count its real tokens.
        tokens = torch.full((batch, prompt_len), self.pad_token_id, dtype=torch.long)
        real = torch.zeros(batch, prompt_len, dtype=torch.bool)
        for row, ids in enumerate(prompt_ids):
            tokens[row, prompt_len - len(ids):] = torch.tensor(ids)
            real[row, prompt_len - len(ids):] = True
        tokens, real = tokens.to(device), real.to(device)
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
        state["token"].copy_(first)
        state["position"].copy_(positions[:, -1] + 1)
        state["slot"].fill_(prompt_len)
        state["step"].fill_(1)
        state["mask"].fill_(neg)  # cache rows of an earlier rollout, and rows not yet written, stay masked
        state["mask"][:, 0, 0, :prompt_len].masked_fill_(real, 0.0)
        state["out"].fill_(self.pad_token_id)
        state["out"][:, 0] = first

        eos = self.eos.to(device)
        for i in range(1, steps):
            # Attend to the first ATTN_BUCKET multiple of cache rows that holds slot prompt_len + i - 1 (this step's).
            attn_len = min(dec.length, -(-(prompt_len + i) // ATTN_BUCKET) * ATTN_BUCKET)
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
        cache_bytes = sum(k.numel() * k.element_size() for pair in dec.caches for k in pair)
        # Kept only over persistent layers: its graphs read their buffers.
        self._decoder = dec if self._layers is not None and cache_bytes <= KEEP_CACHE_BYTES else None
        return [self._until_eos(row) for row in out]

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

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images or multimodal_fields:
            raise UnsupportedModelError("rollout='fast' generates text only.")
        # The context the default path generates in (Unsloth's: inference mode in, training mode and gradient
        # checkpointing back out), so that the model is in the same state for the update whichever rollout ran.
        with compat.generation_context(trainer):
            return engine.generate(prompt_ids), None  # TRL's transformers path returns no logprobs either

    compat.replace_generation(trainer, generate_single_turn)
    trainer.fast_rollout = engine
    logger.info("Fast rollout on: static KV cache%s.", " + CUDA graph" if engine.use_cuda_graph is not False else "")
    return engine
