"""Training learns: on CPU, GRPO through the project's own trainer raises the strict-format rate of a warm-started
tiny model on held-out prompts, and the japanese_purity reward raises Japanese purity beyond what the format
rewards alone do, without collapsing the format. Figures for several seeds are in docs/learning.md."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

# The proof runs on one torch thread (ProofSettings.threads); one seed repeats exactly only on one kind of CPU: on
# another the float sums differ and the trajectory drifts (2026-12-07, an AMD EPYC: seed 0's format+purity run lost
# the strict layout, 0.48 → 0.00, at this commit and at 8df6949 alike). So the claims are checked over three seeds:
# what held on every run recorded in docs/learning.md holds on each seed, and the two claims that one run of nine
# broke hold on two seeds of three. Held-out rates are measured on 270 sampled outputs (about ±3% each).
SEEDS = (0, 1, 2)
MIN_STRICT_GAIN = 0.15  # seen: +0.20 to +0.54 without the purity reward, −0.48 to +0.54 with it
MIN_PURITY_GAIN = 0.10  # seen: +0.14 to +0.29 think purity with the purity reward
MIN_FINAL_PURITY = 0.80  # seen: 0.85 to 0.97 with the purity reward, 0.52 to 0.92 without
MOST = 2  # of the three seeds


@pytest.fixture(scope="module")
def proofs(tmp_path_factory, repo_root):
    """The experiment for each seed, run as its own process (``python -m scripts.learning_proof``, from the
    repository root): inside the shared pytest process, after the other tests, a seed once took another trajectory
    (docs/learning.md), so the proof is kept apart from their state."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("learning")
    done = subprocess.run([sys.executable, "-m", "scripts.learning_proof", "--seeds", *map(str, SEEDS), "--out",
                           str(out)], cwd=repo_root, capture_output=True, text=True, timeout=2900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"seed{seed}" / "proof.json").read_text(encoding="utf-8")) for seed in SEEDS]


def gain(proof, run: str, metric: str) -> float:
    return proof[run][metric] - proof["before"][metric]


def test_warm_start_is_partly_compliant(proofs):
    # GRPO can only amplify what groups sample: some, not all, outputs must already be strict.
    assert all(0.10 <= p["before"]["strict_format_rate"] <= 0.70 for p in proofs)


def test_grpo_raises_the_strict_format_rate(proofs):
    assert all(gain(p, "format", "strict_format_rate") >= MIN_STRICT_GAIN for p in proofs)


def test_purity_reward_raises_think_purity(proofs):
    assert all(gain(p, "format+purity", "think_purity_mean") >= MIN_PURITY_GAIN for p in proofs)


def test_purity_reward_raises_purity_more_than_format_rewards_alone(proofs):
    # same start, same seed; on one seed of nine runs the two ended level (0.86 against 0.87)
    assert sum(p["format+purity"]["think_purity_mean"] > p["format"]["think_purity_mean"] for p in proofs) >= MOST


def test_purity_reward_brings_thinking_to_mostly_japanese(proofs):
    assert all(p["format+purity"]["think_purity_mean"] >= MIN_FINAL_PURITY for p in proofs)


def test_purity_reward_does_not_collapse_the_format(proofs):
    # With the purity reward added, the strict-format rate still rises by the same margin on most seeds.
    assert sum(gain(p, "format+purity", "strict_format_rate") >= MIN_STRICT_GAIN for p in proofs) >= MOST
