"""``python -m minimaldask.image build ...``."""

import sys

from minimaldask.image.cli import main

sys.exit(main())
