"""What a person sees: figures, slice viewers, HTML pages, and the checks on them.

:mod:`.figures` draws histograms, ROC curves and validation tables (plotly); :mod:`.viewer` the slice
viewers and the labelling widget; :mod:`.export` turns an executed notebook into a self-contained HTML
report and keeps the reports index; :mod:`.browser` opens a report in headless Chromium;
:mod:`.leaks` scans a report for training voxels.
"""
