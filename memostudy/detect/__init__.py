"""Copy detection for volumes from any model: never imports :mod:`memostudy.ldm` or :mod:`memostudy.study`.

:mod:`.views` makes the changed versions of a volume (flips, rotations, shifts, blur, contrast, noise);
:mod:`.detector` trains the self-supervised contrastive encoder (its config: architecture and training);
:mod:`.matching` is how it compares volumes (its own config: latent map searched over orientations and
shifts, or the 32-d embedding); :mod:`.similarity` is the nearest-neighbour search; :mod:`.baseline` the
pixel correlation of Akbar et al.; :mod:`.alignment` the aligned pixel correlation; :mod:`.metrics` the
thresholds, fractions and intervals; :mod:`.registry` names every detector once; :mod:`.assessment` puts
them together for one train / reference / synthetic triple and returns typed results (the audit's files
are :mod:`memostudy.report.audit`); :mod:`.validation` measures the detectors on known copies. Toward copies the detector was never
trained on: :mod:`.families` makes copies under the broad definition (rigid motion at any angle, elastic
deformation, resampling, contrast, bias, blur, noise, partial overlap) and generator-like novel volumes with
MONAI's random transforms; :mod:`.calibration` gives conformal p-values, Benjamini-Hochberg decisions and a
reference degraded to the synthetic set's smoothness (the assessment reports both beside the percentile rule);
:mod:`.evidence` is what each flagged copy is reported with (training volume, score, p-value, the change found).
:mod:`.registration` verifies a shortlist by SimpleITK registration (rigid, affine, optional B-spline) and reports
the change found; it is the optional detector "registered", off by default (it did not beat the pixel baseline).

Every module but :mod:`.registration` (3D only) takes 3D volumes ``(N, 1, D, H, W)`` and 2D images ``(N, 1, H, W)``
alike and reads the spatial rank from the tensors: a square has 8 orientations (the dihedral group D4) where a
cube has 48, the detector's encoder is 2D when it was trained on images (``DetectorConfig.spatial_dims``, set from
the training data and kept in its checkpoint), shifts and changes have one entry per spatial axis.
"""
