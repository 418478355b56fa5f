"""Unit tests of app.py, run natively by `python3 -m unittest` (or pytest)
once `weir plugin build` has written the typed bindings to target/weir/py.
What the host would answer is stubbed: resources are subclassed, imported
functions patched with `unittest.mock`."""

import pathlib
import sys
import unittest
from unittest import mock  # noqa: F401 (stubs for host imports)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "target" / "weir" / "py"))

from componentize_py_types import Err  # noqa: E402

import app  # noqa: E402
from wit_world.exports import healthcheck  # noqa: E402
from wit_world.imports import io, types  # noqa: E402

BACKEND = types.Backend(0, "10.0.0.1:80", 1, 0, [])


class CheckTest(unittest.TestCase):
    def setUp(self) -> None:
        app.Healthcheck().init('{"timeout_ms": 500}')

    def test_a_backend_that_accepts_is_healthy(self) -> None:
        with mock.patch.object(io, "tcp_probe", return_value=b"") as probe:
            self.assertEqual(app.Healthcheck().check(BACKEND), healthcheck.Health_Healthy())
        probe.assert_called_once_with("10.0.0.1:80", b"", 0, 500)

    def test_a_refused_connection_is_unhealthy(self) -> None:
        refused = Err(types.Error_Other("connection refused"))
        with mock.patch.object(io, "tcp_probe", side_effect=refused):
            self.assertEqual(app.Healthcheck().check(BACKEND), healthcheck.Health_Unhealthy("connection refused"))


if __name__ == "__main__":
    unittest.main()
