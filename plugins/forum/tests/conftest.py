"""The forum tests' helpers live in forum_helpers (a unique name: every test directory of the
repository shares one module namespace under --import-mode=importlib)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
