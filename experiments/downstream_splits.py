"""The phantom splits of the downstream experiment, in one place so every stage agrees on them.

Phantom case ``k`` is the slice of the patient drawn from seed ``k``, so disjoint seed ranges are
patient-disjoint sets:

- training cases of seed ``s`` at ``N`` real cases: seeds ``TRAIN_BASE + SEED_STRIDE * s + i`` for
  ``i < N`` (the 16-case set is the first 16 of the 64-case set of the same seed);
- the test set: seeds ``TEST_BASE + i`` for ``i < num_test``, shared by every arm and seed.

The bundle's demo checkpoint was trained on seeds 0-319: none of these ranges touches it, and no
experiment arm uses it: each arm's generator is trained on that arm's real training cases only.
"""

from __future__ import annotations

TRAIN_BASE = 10_000
SEED_STRIDE = 1_000
TEST_BASE = 90_000
MAX_N_REAL = SEED_STRIDE


def train_base_seed(seed: int) -> int:
    """Phantom seed of the first training case of experiment seed ``seed``."""
    if seed < 0:
        raise ValueError(f"experiment seed must be >= 0, got {seed}.")
    return TRAIN_BASE + SEED_STRIDE * seed


def train_seeds(n_real: int, seed: int) -> list[int]:
    """Phantom seeds of the ``n_real`` real training cases of experiment seed ``seed``."""
    if not 1 <= n_real <= MAX_N_REAL:
        raise ValueError(f"n_real must be in [1, {MAX_N_REAL}], got {n_real}.")
    base = train_base_seed(seed)
    return list(range(base, base + n_real))


def held_out_seeds(num_test: int) -> list[int]:
    """Phantom seeds of the held-out test set."""
    return list(range(TEST_BASE, TEST_BASE + num_test))


def generator_name(n_real: int, seed: int) -> str:
    """File stem of the generator trained on ``train_seeds(n_real, seed)``."""
    return f"gen_n{n_real}_s{seed}"
