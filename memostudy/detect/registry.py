"""The copy detectors by name: one line-up for the assessment and the validation alike.

Every detector answers one question for a set of query volumes: which training volume is each one's
nearest, and how similar is it (higher = more similar; each detector has its own scale, so each gets
its own threshold, calibrated on real reference volumes scored the same way):

- ``"contrastive"``: the trained detector, compared as a :class:`~memostudy.detect.matching.CompareConfig`
  says (latent map searched over orientations and shifts, or the 32-d embedding);
- ``"contrastive-32d"``: the papers' 32-d embedding of the same detector, one vector per volume;
- ``"pixel"``: the maximum voxel Pearson correlation (Akbar et al., :mod:`memostudy.detect.baseline`);
- ``"pixel-oriented"``: the same, searched over every flip and 90-degree rotation of the query;
- ``"blocks"``: the mean of the best half of the voxel correlations of 8^3 blocks at the same place
  (:mod:`memostudy.detect.blocks`): the definition's "at least half of its voxels", so partial copies and
  locally changed ones score like whole copies;
- ``"blocks-oriented"``: the same score with the query in its best flip or 90-degree rotation, on a shortlist of
  pairs preselected on pooled volumes (:func:`memostudy.detect.blocks.block_oriented_nearest_both`);
- ``"blocks-either"``: a copy for either "blocks" or "blocks-oriented": the higher of the two reference
  percentile ranks, as "combined" below (so flipped and rotated copies are found without every novel volume's
  best of 48 orientations raising the plain score's threshold);
- ``"aligned"``: the aligned pixel correlation (:mod:`memostudy.detect.alignment`) on a shortlist from the
  32-d embedding and the oriented pixel correlation;
- ``"combined"``: a copy for either "contrastive" or "aligned": the higher of the two reference
  percentile ranks (:func:`memostudy.detect.metrics.combine_nearest`), so it needs the reference set;
- ``"registered"`` (optional, not in :data:`DETECTORS`: seconds per query): the shortlist of "aligned"
  verified by rigid then affine registration with SimpleITK, scored by the median local correlation over
  the synthetic volume's voxels (:mod:`memostudy.detect.registration`).

:class:`Searches` runs them for named query sets against one training set, each search once, sharing
the vectors and embeddings the detectors have in common.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from memostudy.detect.alignment import (
    AlignConfig,
    Alignment,
    aligned_search,
    candidates,
    oriented_correlations,
    smooth,
)
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.blocks import BlockConfig, block_nearest_both, block_oriented_nearest_both
from memostudy.detect.detector import Detector, embed, embed_latents
from memostudy.detect.matching import CompareConfig, base_vectors, query_vectors
from memostudy.detect.metrics import combine_nearest
from memostudy.detect.registration import RegisterConfig, registered_nearest
from memostudy.detect.similarity import Nearest, nearest, set_nearest

#: every detector, in the order results are reported
DETECTORS = ("contrastive", "contrastive-32d", "pixel", "pixel-oriented", "blocks", "blocks-oriented", "blocks-either",
             "aligned", "combined")
#: detectors run only when asked for by name (their cost is seconds per query)
OPTIONAL_DETECTORS = ("registered",)
#: detectors that need no trained detector (:attr:`Searches.detector` may be None for these)
TRAINING_FREE = ("pixel", "pixel-oriented", "blocks", "blocks-oriented", "blocks-either")
#: the name of the training set among :class:`Searches`' volume sets
TRAIN = "train"


@dataclass
class Searches:
    """Nearest-neighbour searches of the :data:`DETECTORS` between named query sets and one training
    set, computed on first use and kept.

    Attributes:
        detector: the trained contrastive detector (None when only detectors that need none are searched:
            the pixel correlations and the block correlation).
        train: (Nt, 1, D, H, W) training volumes (the searched set).
        queries: name -> (N, 1, D, H, W) query volumes of the same shape (e.g. "synthetic", "reference").
        compare: how the contrastive detector compares volumes.
        metric: similarity of vectors, "pearson" or "msd" (the pixel detectors are always Pearson).
        align: settings of the aligned correlation.
        register: settings of the registered correlation (``"registered"``; its shortlist size too).
        reference: the name of the query set of real reference volumes ("combined" ranks against it).
        batch_size: volumes per detector forward pass.
        progress: progress bars (with ETA) for the encodings, embeddings, oriented correlations and aligned
            and registered searches.
    """

    detector: Detector | None
    train: torch.Tensor
    queries: dict[str, torch.Tensor]
    compare: CompareConfig = field(default_factory=CompareConfig)
    metric: str = "pearson"
    align: AlignConfig = field(default_factory=AlignConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    blocks: BlockConfig = field(default_factory=BlockConfig)
    reference: str = "reference"
    batch_size: int = 64
    progress: bool = False
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def nearest(self, name: str, query: str) -> Nearest:
        """Detector ``name``: each volume of query set ``query`` -> its nearest training volume."""
        return self._search(name, query, False)

    def reverse(self, name: str, query: str) -> Nearest:
        """Detector ``name``: each training volume -> its nearest volume of query set ``query`` (the
        assessment's copy candidates); values and indices index the query set."""
        return self._search(name, query, True)

    def _search(self, name: str, query: str, reverse: bool) -> Nearest:
        if name not in _SEARCH:
            raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS + OPTIONAL_DETECTORS)}")
        if query not in self.queries:
            raise ValueError(f"unknown query set {query!r}; have {', '.join(self.queries)}")
        if self.detector is None and name not in TRAINING_FREE:
            raise ValueError(f"detector {name!r} needs a trained contrastive detector and none was given; without one "
                             f"only {', '.join(TRAINING_FREE)} run")
        return self._once((name, query, reverse), lambda: _SEARCH[name](self, query, reverse))

    def _once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def keep(self, key: Any, value: Any) -> None:
        """Keep what a search found besides its nearest scores (alignments, registered changes) under ``key``."""
        self._cache[key] = value

    def kept(self, key: Any, default: Any = None) -> Any:
        """What :meth:`keep` kept under ``key`` (``default`` if nothing)."""
        return self._cache.get(key, default)

    def volumes(self, name: str) -> torch.Tensor:
        """The training set (:data:`TRAIN`) or a query set by name."""
        return self.train if name == TRAIN else self.queries[name]

    def alignments(self, query: str) -> dict[tuple[int, int], Alignment]:
        """The alignments the "aligned" detector found for query set ``query`` against the training set, by
        (query index, training index), if it has run (else empty): the evidence of a flagged copy reuses them
        rather than aligning the same pair again."""
        found = self.kept(("alignments", query, False), [])
        return {(i, a.base_index): a for i, a in enumerate(found)}

    def embedding(self, name: str) -> torch.Tensor:
        """(N, 32) normalised embeddings of the training set (:data:`TRAIN`) or a query set; a query set's are
        pooled from its oriented latent maps (:meth:`oriented`) when the contrastive search uses them."""
        if name != TRAIN and self._shares_latents():
            return self._once(("embedding", name), lambda: embed_latents(self.detector, self.oriented(name)))
        return self._once(("embedding", name), lambda: embed(self.detector, self.volumes(name), self.batch_size,
                                                             self.compare.orientation_pooling, self.progress))

    def oriented(self, query: str) -> torch.Tensor:
        """(K, N, F) the contrastive detector's vectors of query set ``query``
        (:func:`memostudy.detect.matching.query_vectors`: its latent maps in each of K orientations), computed
        once: the contrastive search and the orientation-pooled embedding both use them."""
        return self._once(("oriented", query), lambda: query_vectors(self.detector, self.queries[query], self.compare,
                                                                     self.batch_size, self.progress))

    def _shares_latents(self) -> bool:
        return self.compare.representation == "latent" and self.compare.orientation_pooling


def _pair(query: str, reverse: bool) -> tuple[str, str]:
    """(searched from, searched in): query -> train, or train -> query."""
    return (TRAIN, query) if reverse else (query, TRAIN)


def _contrastive(s: Searches, query: str, reverse: bool) -> Nearest:
    # one search gives both directions: the query's orientations against the training volumes' shifts
    base = s._once("base_vectors", lambda: base_vectors(s.detector, s.train, s.compare, s.batch_size, s.progress))
    both = s._once(("contrastive", query), lambda: set_nearest(s.oriented(query), base, s.metric))
    return both[1] if reverse else both[0]


def _embedding_32d(s: Searches, query: str, reverse: bool) -> Nearest:
    a, b = _pair(query, reverse)
    return nearest(s.embedding(a), s.embedding(b), s.metric)


def _pixel(oriented: bool) -> Callable[[Searches, str, bool], Nearest]:
    def search(s: Searches, query: str, reverse: bool) -> Nearest:
        a, b = _pair(query, reverse)
        return pixel_nearest(s.volumes(a), s.volumes(b), orientations=oriented, progress=s.progress)

    return search


def _blocks(s: Searches, query: str, reverse: bool) -> Nearest:
    # one pass gives both directions (the block score is symmetric)
    both = s._once(("blocks", query), lambda: block_nearest_both(s.queries[query], s.train, s.blocks, progress=s.progress))
    return both[1] if reverse else both[0]


def _blocks_oriented(s: Searches, query: str, reverse: bool) -> Nearest:
    both = s._once(("blocks-oriented", query), lambda: block_oriented_nearest_both(s.queries[query], s.train, s.blocks,
                                                                                     progress=s.progress))
    return both[1] if reverse else both[0]


def _blocks_either(s: Searches, query: str, reverse: bool) -> Nearest:
    refs = (s.nearest("blocks", s.reference), s.nearest("blocks-oriented", s.reference))
    return combine_nearest(refs, (s._search("blocks", query, reverse), s._search("blocks-oriented", query, reverse)),
                           same_scale=True)


def _smoothed_oriented(s: Searches, query: str, reverse: bool) -> torch.Tensor:
    """The aligned shortlist's oriented correlations of query set ``query`` with the training set (smoothed), computed
    once for both directions (:func:`memostudy.detect.alignment.oriented_correlations`)."""
    m = s._once(("smoothed-oriented", query), lambda: oriented_correlations(
        smooth(s.queries[query], s.align.sigma), smooth(s.train, s.align.sigma), progress=s.progress))
    return m.T if reverse else m


def _aligned(s: Searches, query: str, reverse: bool) -> Nearest:
    a, b = _pair(query, reverse)
    q, base = s.volumes(a), s.volumes(b)
    shortlist = candidates(q, base, s.align, s.embedding(a), s.embedding(b), _smoothed_oriented(s, query, reverse))
    found, alignments = aligned_search(q, base, shortlist, s.align, progress=s.progress)
    s.keep(("alignments", query, reverse), alignments)
    return found


def _registered(s: Searches, query: str, reverse: bool) -> Nearest:
    # the synthetic (query-set) volume is always the fixed image: the score counts its voxels
    a, b = _pair(query, reverse)
    q, base = s.volumes(a), s.volumes(b)
    k = dataclasses.replace(s.align, shortlist=s.register.shortlist)
    shortlist = candidates(q, base, k, s.embedding(a), s.embedding(b), _smoothed_oriented(s, query, reverse))
    found = registered_nearest(q, base, shortlist, s.register, progress=s.progress,
                               score_on="base" if reverse else "query")
    s.keep(("registered-changes", query, reverse), found.changes)
    return found.nearest


def registered_changes(s: Searches, query: str, reverse: bool = False) -> list[Any]:
    """The :class:`~memostudy.detect.registration.Change` per volume of the ``"registered"`` search (run first)."""
    s._search("registered", query, reverse)
    return s.kept(("registered-changes", query, reverse))


def _combined(s: Searches, query: str, reverse: bool) -> Nearest:
    refs = (s.nearest("contrastive", s.reference), s.nearest("aligned", s.reference))
    return combine_nearest(refs, (s._search("contrastive", query, reverse), s._search("aligned", query, reverse)))


_SEARCH: dict[str, Callable[[Searches, str, bool], Nearest]] = {
    "contrastive": _contrastive, "contrastive-32d": _embedding_32d, "pixel": _pixel(False),
    "pixel-oriented": _pixel(True), "blocks": _blocks, "blocks-oriented": _blocks_oriented,
    "blocks-either": _blocks_either, "aligned": _aligned, "combined": _combined,
    "registered": _registered,
}
