"""memostudy: does this generative model copy patients out of its training set?

The package reads like the study: data -> autoencoder -> diffusion -> sampling -> detector ->
similarity -> metrics -> report. Each step is one module named for it.
"""

__version__ = "0.1.0"

import os as _os

if _os.environ.get("MEMOSTUDY_PROGRESS"):  # a kernel of memostudy.study.runner: bars go to its terminal
    from memostudy.study.progress import install as _install

    _install()
