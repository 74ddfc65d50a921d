"""The study: trains LDMs, samples them, measures memorization, and runs the notebooks and sweeps.

:mod:`.memorization` holds the study config, the cache of trained models and the orchestration of one
study run; :mod:`.experiments` runs one setting per LDM variant; :mod:`.quality` measures sample quality
(MS-SSIM diversity, Fréchet distance); :mod:`.runner` executes a notebook with papermill and exports its
report; :mod:`.sweep` runs a grid of notebook runs and :mod:`.aggregate` summarises it over seeds.
"""
