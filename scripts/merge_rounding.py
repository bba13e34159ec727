"""What a bf16 merge (W + s·B·A rounded to bf16, as TRL's vLLM path does) loses of the LoRA update: the share of
delta entries below half a bf16 ulp of their weight, which the merge rounds away entirely.

    uv run python -m scripts.merge_rounding        # CPU, seconds; prints a JSON table

A model, not a measurement of a trained run: W ~ N(0, 0.02) (the scale of the 3B's random init and of typical LLM
projections), A as PEFT initialises it (kaiming-uniform, bound 1/sqrt(in)), and every B entry moved by lr per
optimizer step (Adam's largest typical step; real steps are smaller, so the shares below are lower bounds).
Settings: the article's lr 5e-6, r = alpha = 32 (scale 1), a 2560 x 2560 projection.
"""

import json

import torch

torch.manual_seed(0)
IN = OUT = 2560
R, LR, SCALE = 32, 5e-6, 1.0
w = (torch.randn(OUT, IN) * 0.02).to(torch.bfloat16)
a = torch.empty(R, IN).uniform_(-(IN ** -0.5), IN ** -0.5)
signs = torch.randint(0, 2, (OUT, R)).float() * 2 - 1
rows = []
for steps in (1, 10, 50, 100, 250, 500, 1000):
    delta = SCALE * (signs * LR * steps) @ a  # fp32
    merged = (w.float() + delta).to(torch.bfloat16)
    lost = (merged == w).float().mean().item()  # the merge left the weight unchanged: this update is invisible
    rel = ((merged.float() - w.float()) - delta).norm() / delta.norm()
    rows.append(dict(steps=steps, share_of_entries_rounded_away=round(lost, 4),
                     relative_error_of_merged_delta=round(rel.item(), 4)))
print(json.dumps(rows, indent=1))
