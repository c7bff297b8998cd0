from __future__ import annotations

import sys

from scope_probe.main import main

sys.exit(main())
