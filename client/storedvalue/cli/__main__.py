"""``python -m storedvalue.cli``: the same as the ``storedvalue`` command."""

import sys

from storedvalue.cli import main

sys.exit(main())
