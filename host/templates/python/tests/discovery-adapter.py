"""Unit tests of app.py, run natively by `python3 -m unittest` (or pytest)
once `weir plugin build` has written the typed bindings to target/weir/py.
What the host would answer is stubbed: resources are subclassed, imported
functions patched with `unittest.mock`."""

import pathlib
import sys
import unittest
from unittest import mock  # noqa: F401 (stubs for host imports)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "target" / "weir" / "py"))

import app  # noqa: E402
from wit_world.exports import discovery  # noqa: E402


class DiscoverTest(unittest.TestCase):
    def test_the_configured_addresses_are_discovered(self) -> None:
        app.Discovery().init('{"addresses": ["10.0.0.1:80", "10.0.0.2:80"]}')
        found = app.Discovery().discover()
        self.assertEqual(found, [discovery.Discovered(a, 1, 0, []) for a in ("10.0.0.1:80", "10.0.0.2:80")])


if __name__ == "__main__":
    unittest.main()
