"""The pairedness score on real FDG-PET/CT patients: the real triplet beats five broken pairings, per patient.

Eight of the 36 sarcoma patients (every 4th in sorted order), every 4th tumour slice; the full run over all
patients and slices is ``python benchmarks/pairedness_real.py`` (docs/metrics.md). Skipped where the folder is
absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pairedness_real


def test_real_triplets_beat_every_broken_pairing_per_patient(sts_data_dir):
    patients = pairedness_real.load_patients(sts_data_dir, max_patients=8, patient_step=4, slice_step=4)
    assert len(patients) == 8 and all(patients.values())
    scores = pairedness_real.patient_scores(pairedness_real.corrupt(patients))
    table = pairedness_real.corruption_table(scores)
    for name in pairedness_real.CORRUPTIONS:
        row = table[name]["score"]
        assert row["num_patients"] == 8
        assert row["fraction_real_above"] >= 0.8, (name, row)
        assert row["mean_gap"] >= 0.15, (name, row)
    assert pairedness_real.criterion_met(table)
    # the earlier 40 % SUVmax Dice does not hold here: a flat PET scores about as high as the real one
    assert table["pet_flat"]["lesion_dice"]["mean_gap"] < 0.15
