"""Tiny study fixtures: a 16^3 phantom data set, the ``test-16`` LDM preset, a two-epoch detector, and
one study run made in-process once per test session (about 10 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memostudy.data.phantom import write_phantom_dataset
from memostudy.study.config import MemorizationConfig, memorization_config
from memostudy.study.memorization import MemorizationResult, run_memorization

TINY_DETECTOR = {"channels": [8, 16], "input_pool": 2, "latent_size": 4, "hidden": 32, "batch_size": 8, "lr": 0.01,
                 "epochs": 2}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A phantom data set: 8 training and 8 validation patches of 16^3."""
    return write_phantom_dataset(tmp_path_factory.mktemp("study") / "phantoms", n_train=8, n_validation=8, size=16)


@pytest.fixture(scope="session")
def tiny_config(tiny_data, tmp_path_factory) -> MemorizationConfig:
    """The study config of the tiny run: test-16 preset, tiny detector, 50 bootstrap replicates."""
    return memorization_config(preset="test-16", data=str(tiny_data), detector=TINY_DETECTOR,
                               assessment={"n_boot": 50}, runs_dir=str(tmp_path_factory.mktemp("runs")),
                               progress=False)


@pytest.fixture(scope="session")
def tiny_result(tiny_config) -> MemorizationResult:
    """One finished study run on the tiny data (the LDM, detector and samples stay in the runs folder)."""
    return run_memorization(tiny_config)
