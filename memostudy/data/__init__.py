"""Data: from a manifest to tagged patches.

A manifest (:mod:`.manifest`) names real volumes and their checksums, and is checked against the
schema of :mod:`.manifest_schema` before anything runs; :mod:`.sources` obtains them
through the package registries; :mod:`.prepare` resamples, maps intensities and cuts patches tagged with
subject, origin and split (keyed on its inputs, built aside and renamed into place under a lock);
:mod:`.patches` loads a prepared set (or a subset of it); :mod:`.volume_io`
reads and writes single volumes (NIfTI, NRRD, DICOM, NumPy) with one-line errors; :mod:`.augment` is the LDM's
flip/rotate augmentation; :mod:`.phantom` makes small synthetic data sets for tests.
"""
