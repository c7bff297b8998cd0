from __future__ import annotations

import sys

from scope.cli import main

sys.exit(main())
