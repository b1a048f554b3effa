"""What the tests share besides fixtures (those live in tests/conftest.py). No tests here: a test module imports
helpers, never another test module."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "storyadapter" / "examples"
