"""The study: trains LDMs, samples them, measures memorization, and runs the notebooks and sweeps.

:mod:`.config` is the study config (one :class:`~.config.MemorizationConfig` per assessment);
:mod:`.cache` keeps trained LDMs, detectors and samples, content-addressed by config;
:mod:`.memorization` orders the steps of one study run; :mod:`.experiments` runs one setting per LDM
variant; :mod:`.quality` measures sample quality (MS-SSIM diversity, Fréchet distance);
:mod:`.copying` adds continuous copying statistics (Cliff's delta, C_T, authenticity) to the thresholded
fractions; :mod:`.checkpoints` chooses a checkpoint under a memorization level or stops training above it;
:mod:`.candidates` and :mod:`.tables` hold what the notebooks show (copy candidates, label agreement,
result tables); :mod:`.records` is the run record (``summary.json``) every notebook writes;
:mod:`.runner` executes a notebook with papermill and exports its report, with :mod:`.progress` showing
the package's progress lines in the terminal; :mod:`.sweep` runs a grid of notebook runs (in-process, or as
jobs through :mod:`.executors`: submitit's local or Slurm executor) and :mod:`.aggregate` summarises it
over seeds (paired differences, trend test); :mod:`.log` prints the study's one-line status messages.
"""
