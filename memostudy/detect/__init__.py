"""Copy detection for volumes from any model: never imports :mod:`memostudy.ldm` or :mod:`memostudy.study`.

:mod:`.views` makes the changed versions of a volume (flips, rotations, shifts, blur, contrast, noise);
:mod:`.detector` trains the self-supervised contrastive encoder; :mod:`.matching` searches its latent map
over orientations and shifts; :mod:`.similarity` is the nearest-neighbour search; :mod:`.baseline` the
pixel correlation of Akbar et al.; :mod:`.alignment` the aligned pixel correlation; :mod:`.metrics` the
thresholds, fractions and intervals; :mod:`.assessment` puts them together for one train / reference /
synthetic triple; :mod:`.validation` measures the detectors on known copies.
"""
