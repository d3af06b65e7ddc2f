"""``python -m livedata`` is the ``livedata`` command."""

import sys

from livedata.cli.main import main

sys.exit(main())
