"""DAPO's dynamic sampling (``Settings.dynamic_sampling``): a group whose completions all earn the same reward has
zero advantage and teaches nothing, so ``install`` replaces it with a group with a spread from up to ``max_rounds``
further generation batches of random training prompts; groups still missing are filled with dropped ones, so the
batch keeps its size. TensorBoard gets ``train/dynamic_sampling/flat_groups``, ``…/extra_rollouts``, ``…/flat_kept``.
"""

from __future__ import annotations

import logging
import random

from . import compat
from .project import SettingsError

logger = logging.getLogger(__name__)

# A group is flat when its advantages span less than this. Flat groups get identical advantages in every TRL
# aggregation mode (0 with sum_then_normalize, a batch-wide constant with normalize_then_sum); any real spread
# gives at least the rewards' own granularity (0.001 for xmlcount's trailing text), or about 1 when scaled by std.
FLAT_SPREAD = 1e-6
# Dimension 1 of these is the prompt (left-padded); of the other per-row 2-D tensors, the completion (right-padded).
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
# Images come with per-image tensors whose rows are not the batch's rows: those batches are not regrouped.
IMAGE_KEYS = ("pixel_values", "image_grid_thw", "num_images")


def flat_groups(advantages, group_size: int) -> list[bool]:
    """For each group of ``group_size`` consecutive completions: True when its advantages are all (nearly) equal."""
    grouped = advantages.view(-1, group_size)
    return ((grouped.amax(dim=1) - grouped.amin(dim=1)) < FLAT_SPREAD).tolist()


def merge(parts: list[tuple[dict, list[int]]], group_size: int, pad_token_id: int) -> dict:
    """One scored batch from the chosen groups of several (TRL's output dicts), padded as TRL pads."""
    import torch
    import torch.nn.functional as F

    chosen = []  # of each part, the rows of its groups of each tensor that holds one entry per completion
    for batch, groups in parts:
        if groups:
            rows, device = batch["advantages"].size(0), batch["advantages"].device
            index = torch.tensor([g * group_size + i for g in groups for i in range(group_size)], device=device)
            chosen.append({k: v.index_select(0, index) for k, v in batch.items()
                           if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.size(0) == rows})
    merged = {}
    # In the first batch's key order: TRL's shuffle takes the batch size from the first value. What is not per row
    # (a count, a flag) is the first batch's; the token count is recounted below.
    for key, value in parts[0][0].items():
        if key not in chosen[0]:
            merged[key] = value
            continue
        tensors = [c[key] for c in chosen]
        if tensors[0].dim() >= 2:
            width = max(t.size(1) for t in tensors)
            value = pad_token_id if key.endswith("_ids") else 1 if key == "tool_mask" else 0
            pads = [(width - t.size(1), 0) if key in PROMPT_KEYS else (0, width - t.size(1)) for t in tensors]
            tensors = [F.pad(t, pad, value=value) for t, pad in zip(tensors, pads, strict=True)]
        merged[key] = torch.cat(tensors, dim=0)
    merged["num_items_in_batch"] = (merged["completion_mask"] * merged.get("tool_mask", 1)).sum()  # TRL's loss tokens
    return merged


class DynamicSampling:
    """The wrapped scoring step; ``totals`` sums what it did over the run."""

    def __init__(self, trainer, score, *, max_rounds: int, seed: int):
        self.trainer, self.score, self.max_rounds, self.seed = trainer, score, max_rounds, seed
        self.totals = {"batches": 0, "flat_groups": 0, "extra_rollouts": 0, "flat_kept": 0}

    def __call__(self, inputs):
        batch = self.score(inputs)
        if not self.trainer.model.training:  # TRL's own evaluation loop: leave it as it is
            return batch
        if any(key in batch for key in IMAGE_KEYS):
            raise SettingsError("dynamic_sampling handles text-only batches; this one has images.")
        size = self.trainer.num_generations
        flat = flat_groups(batch["advantages"], size)
        kept = [g for g, is_flat in enumerate(flat) if not is_flat]
        dropped = [g for g, is_flat in enumerate(flat) if is_flat]
        parts, need, extra = [(batch, kept)], len(dropped), 0
        # Its own stream, seeded by the step: training's data order and sampling stay as they were, and a resumed
        # run draws the same fresh prompts as an uninterrupted one.
        draw = random.Random(f"{self.seed}-{self.trainer.state.global_step}")
        dataset = self.trainer.train_dataset
        for _ in range(self.max_rounds if need else 0):
            picks = [draw.randrange(len(dataset)) for _ in flat]
            fresh = self.score([dict(dataset[i]) for i in picks for _ in range(size)])
            extra += len(flat) * size
            spread = [g for g, is_flat in enumerate(flat_groups(fresh["advantages"], size)) if not is_flat]
            parts.append((fresh, spread[:need]))
            need -= len(spread[:need])
            if not need:
                break
        parts[0] = (batch, kept + dropped[:need])  # groups nothing replaced: the batch keeps its size
        for key, value in (("flat_groups", len(dropped)), ("extra_rollouts", extra), ("flat_kept", need)):
            self.totals[key] += value
            compat.log_metric(self.trainer, f"dynamic_sampling/{key}", float(value))
        self.totals["batches"] += 1
        if all(not groups for _, groups in parts[1:]):  # nothing replaced: the batch as it was
            return batch
        return merge(parts, size, self.trainer.processing_class.pad_token_id)


def install(trainer, *, max_rounds: int, seed: int) -> DynamicSampling:
    """Wrap ``trainer``'s scoring step with dynamic sampling; return the wrapper (its ``totals``)."""
    if trainer.accelerator.num_processes > 1:
        raise SettingsError("dynamic_sampling runs on one process: under accelerate launch each process would drop "
                            "different groups. Drop --dynamic-sampling, or train on one process.")
    wrapper = DynamicSampling(trainer, compat.scoring_step(trainer), max_rounds=max_rounds, seed=seed)
    compat.replace_scoring_step(trainer, wrapper)
    logger.info("Dynamic sampling on: groups without reward spread replaced, up to %d extra generation batches "
                "per step.", max_rounds)
    return wrapper
