"""PatchSet.subset: the one way to take some patches of a set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from memostudy.data.patches import PatchSet


def test_subset_keeps_volumes_ids_and_rows_together():
    ps = PatchSet(torch.arange(5.0).view(5, 1, 1, 1, 1), [f"p{i}" for i in range(5)],
                  pd.DataFrame({"patch_id": [f"p{i}" for i in range(5)], "subject": list("abcde")}), {"spacing": [1, 1, 2]})
    for idx in ([3, 0], np.array([3, 0]), torch.tensor([3, 0])):
        sub = ps.subset(idx)
        assert sub.ids == ["p3", "p0"] and sub.volumes.flatten().tolist() == [3.0, 0.0]
        assert sub.table["subject"].tolist() == ["d", "a"] and sub.table.index.tolist() == [0, 1]
        assert sub.info is ps.info and len(sub) == 2
