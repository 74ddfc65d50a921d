"""The table of random streams: distinct seeds, generators equal to the old global seeding, no global side effects."""

from __future__ import annotations

import pytest
import torch

from memostudy.seeds import Stream, derive_seed, generator, initial_weights, stream_seed


def test_derived_streams_differ_per_stream_and_index():
    seeds = {stream_seed(s, 7, 3) for s in (Stream.BATCH_ORDER, Stream.STEP, Stream.SAMPLING)}
    assert len(seeds) == 3
    assert stream_seed(Stream.STEP, 7, 3) != stream_seed(Stream.STEP, 7, 4)
    assert stream_seed(Stream.STEP, 7, 3) == derive_seed(7, 2, 3)


def test_offset_rows_keep_their_published_values():
    assert stream_seed(Stream.STAGE_AUTOENCODER, 5) == 5
    assert stream_seed(Stream.STAGE_DIFFUSION, 5) == 6
    assert stream_seed(Stream.INTENSITY_SUBSAMPLE, 5) == 0
    with pytest.raises(ValueError):
        stream_seed(Stream.DETECTOR_INIT, 5, 1)


def test_generator_draws_what_the_global_rng_drew_after_manual_seed():
    g = generator(Stream.SAMPLING, 3, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(Stream.SAMPLING, 3, 1))
        expected = torch.randn(5)
    assert torch.equal(torch.randn(5, generator=g), expected)


def test_initial_weights_depend_on_the_seed_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    with initial_weights(Stream.DETECTOR_INIT, 1):
        a = torch.nn.Linear(4, 4).weight.detach().clone()
    assert torch.equal(torch.get_rng_state(), state)
    with initial_weights(Stream.DETECTOR_INIT, 1):
        b = torch.nn.Linear(4, 4).weight.detach().clone()
    with initial_weights(Stream.DETECTOR_INIT, 2):
        c = torch.nn.Linear(4, 4).weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)
