"""``python -m memostudy`` (and ``torchrun -m memostudy train ...``): the ``memostudy`` command."""

import sys

from memostudy.cli import main

sys.exit(main())
