from __future__ import annotations

import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))  # the seeded trace generators
