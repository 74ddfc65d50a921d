"""Evidence of flagged copies: which training volume, score, p-value and the change found."""

from __future__ import annotations

import json

import numpy as np
import torch

from memostudy.detect.alignment import AlignConfig
from memostudy.detect.assessment import copy_evidence
from memostudy.detect.calibration import blur, copy_decisions
from memostudy.detect.evidence import EVIDENCE_COLUMNS, CopyEvidence, evidence_table
from memostudy.detect.similarity import Nearest
from memostudy.detect.views import orient, orientations, translate


def _fields(n: int, size: int, seed: int) -> torch.Tensor:
    x = blur(torch.randn(n, 1, size, size, size, generator=torch.Generator().manual_seed(seed)), 1.5)
    return x / x.std()


def test_a_flagged_copy_reports_the_flip_and_shift_that_made_it():
    train = _fields(5, 16, seed=0)
    flip_d = 4  # orientations()[4]: axes in order, the first (D) reversed
    assert orientations()[flip_d].flips == (True, False, False)
    copy = translate(orient(train[[3]], orientations()[flip_d]), -torch.tensor([[0.0, 2.0, -1.0]]))
    synthetic = torch.cat([_fields(2, 16, seed=5), copy])
    # a detector's search as the assessment sees it: synthetic 2 -> training 3 at a score above every reference
    s2t = Nearest(torch.tensor([0.2, 0.4, 0.99]), torch.tensor([0, 1, 3]))
    d = copy_decisions(s2t.values, np.linspace(0.0, 0.5, 99), q=0.05)  # smallest p 1/100 <= q / 3: BH flags it
    pct = np.array([False, False, True])
    ev = copy_evidence({"pixel": (s2t, d, pct)}, train, synthetic, [f"t{i}" for i in range(5)], ["a", "b", "c"],
                       AlignConfig(subvoxel=(0.0,), blurs=(0.0,)))
    assert len(ev) == 1
    e = ev[0]
    assert (e.synthetic_id, e.train_id, e.detector, e.is_copy, e.bh_copy) == ("c", "t3", "pixel", True, True)
    assert e.p_value == 1 / 100 and e.score == np.float32(0.99)
    assert e.change["orientation"] == flip_d and e.change["flips"] == [True, False, False]
    assert e.change["shift_voxels"] == [0.0, 2.0, -1.0] and e.change["aligned_correlation"] > 0.999
    # without alignment settings the evidence says nothing about the change
    assert copy_evidence({"pixel": (s2t, d, pct)}, train, synthetic, [f"t{i}" for i in range(5)], ["a", "b", "c"],
                         None)[0].change == {}


def test_evidence_table_flattens_any_change():
    rows = [CopyEvidence("s1", "t1", "aligned", 0.9, 0.01, 0.02, True, True, {"orientation": 4, "shift_voxels": [1.0, 0.0, 0.0]}),
            CopyEvidence("s2", "t0", "registration", 0.8, 0.03, 0.04, True, False, {"rotation_degrees": 12.5}),
            CopyEvidence("s3", "t2", "pixel", 0.7, 0.04, 0.05, True, False)]
    df = evidence_table(rows)
    assert list(df.columns[:len(EVIDENCE_COLUMNS)]) == list(EVIDENCE_COLUMNS)
    assert set(df.columns[len(EVIDENCE_COLUMNS):]) == {"change_orientation", "change_shift_voxels", "change_rotation_degrees"}
    assert json.loads(df.loc[0, "change_shift_voxels"]) == [1.0, 0.0, 0.0] and df.loc[1, "change_rotation_degrees"] == 12.5
    assert df["bh_copy"].tolist() == [1, 0, 0] and np.isnan(df.loc[2, "change_orientation"])
    assert list(evidence_table([]).columns) == list(EVIDENCE_COLUMNS)


def test_a_flagged_2d_copy_reports_the_flip_and_shift_that_made_it():
    train = _fields(5, 16, seed=0)[:, :, 8].contiguous()  # 2D images (5, 1, 16, 16)
    flip_w = 1  # orientations(2)[1]: axes in order, the second (W) reversed
    assert orientations(2)[flip_w].flips == (False, True)
    copy = translate(orient(train[[3]], orientations(2)[flip_w]), -torch.tensor([[2.0, -1.0]]))
    synthetic = torch.cat([_fields(2, 16, seed=5)[:, :, 8], copy])
    s2t = Nearest(torch.tensor([0.2, 0.4, 0.99]), torch.tensor([0, 1, 3]))
    d = copy_decisions(s2t.values, np.linspace(0.0, 0.5, 99), q=0.05)
    ev = copy_evidence({"aligned": (s2t, d, np.array([False, False, True]))}, train, synthetic,
                       [f"t{i}" for i in range(5)], ["a", "b", "c"], AlignConfig(subvoxel=(0.0,), blurs=(0.0,)))
    (e,) = ev
    assert (e.synthetic_id, e.train_id) == ("c", "t3")
    assert e.change["orientation"] == flip_w and e.change["flips"] == [False, True] and e.change["permutation"] == [0, 1]
    assert e.change["shift_voxels"] == [2.0, -1.0] and e.change["aligned_correlation"] > 0.999
    row = evidence_table(ev).iloc[0]
    assert json.loads(row["change_flips"]) == [False, True] and json.loads(row["change_shift_voxels"]) == [2.0, -1.0]


def test_evidence_reuses_the_aligned_searchs_alignments_and_gets_the_same_change(monkeypatch):
    from memostudy.detect import assessment
    from memostudy.detect.alignment import aligned_search

    train = _fields(5, 16, seed=0)
    copy = translate(orient(train[[3]], orientations()[4]), -torch.tensor([[0.0, 2.0, -1.0]]))
    synthetic = torch.cat([_fields(2, 16, seed=5), copy])
    cfg = AlignConfig(subvoxel=(0.0,), blurs=(0.0,))
    s2t = Nearest(torch.tensor([0.2, 0.4, 0.99]), torch.tensor([0, 1, 3]))
    d = copy_decisions(s2t.values, np.linspace(0.0, 0.5, 99), q=0.05)
    pct = np.array([False, False, True])
    args = ({"pixel": (s2t, d, pct)}, train, synthetic, [f"t{i}" for i in range(5)], ["a", "b", "c"], cfg)
    fresh = copy_evidence(*args)[0].change
    _, found = aligned_search(synthetic, train, torch.arange(5).expand(3, 5), cfg)
    known = {(i, a.base_index): a for i, a in enumerate(found)}
    assert (2, 3) in known
    calls = []
    real = assessment.align_pairs
    monkeypatch.setattr(assessment, "align_pairs", lambda q, b, pairs, c, **kw: calls.append(list(pairs)) or real(q, b, pairs, c))
    reused = copy_evidence(*args, known=known)[0].change
    assert reused == fresh and calls in ([], [[]])  # the flagged pair was not aligned again
