from __future__ import annotations

import sys

from scope_app.main import main

sys.exit(main())
