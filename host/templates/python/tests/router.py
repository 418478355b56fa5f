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
from wit_world.exports import route  # noqa: E402
from wit_world.imports import http  # noqa: E402


class Request(http.Request):
    """The host's side of `request`: what the router asks beyond host and path."""

    def header(self, name: str) -> str | None:
        return None


class RouteTest(unittest.TestCase):
    def setUp(self) -> None:
        app.Route().init('{"prefix": "/api/", "pool": "api"}')

    def test_the_prefix_picks_the_pool(self) -> None:
        decision = app.Route().route_request(Request(), "shop.test", "/api/users")
        self.assertEqual(decision, route.Decision_Forward(route.Forward("api", None, [], [])))

    def test_other_paths_match_nothing(self) -> None:
        self.assertEqual(app.Route().route_request(Request(), "shop.test", "/"), route.Decision_NoMatch())


if __name__ == "__main__":
    unittest.main()
