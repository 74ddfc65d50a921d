"""What a person sees: figures, slice viewers, HTML pages, and the checks on them.

:mod:`.figures` draws histograms, ROC curves and validation tables (plotly); :mod:`.viewer` the slice
viewers (8-bit frames) and the labelling widget; :mod:`.page` builds every self-contained HTML page and
embeds figures; :mod:`.format` writes values into tables and JSON; :mod:`.export` turns an executed
notebook into a report and keeps the reports index; :mod:`.audit` writes ``memostudy audit``'s files;
:mod:`.browser` opens a report in headless Chromium; :mod:`.leaks` scans a report for training voxels.
"""
