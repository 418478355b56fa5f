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
from wit_world.exports import access  # noqa: E402
from wit_world.imports import http, types  # noqa: E402


class Request(http.Request):
    """The host's side of `request`: the request's headers."""

    def __init__(self, headers: dict[str, str]):
        self.headers = headers

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def client(ip: tuple[int, int, int, int]) -> types.Connection:
    def address(ip: tuple[int, int, int, int], port: int) -> types.SocketAddress:
        return types.SocketAddress(types.IpAddress_Ipv4(ip), port)

    return types.Connection(address(ip, 40000), address((127, 0, 0, 1), 8080), 0, types.Protocol.HTTP, None, None, None)


class AccessTest(unittest.TestCase):
    def setUp(self) -> None:
        app.Access().init('{"header": "x-blocked"}')

    def test_a_request_with_the_header_is_denied(self) -> None:
        verdict = app.Access().check_request(client((192, 0, 2, 1)), Request({"x-blocked": "1"}))
        self.assertIsInstance(verdict, access.Verdict_Deny)
        self.assertEqual(verdict.value.status, 403)

    def test_others_are_allowed(self) -> None:
        self.assertEqual(app.Access().check_request(client((192, 0, 2, 1)), Request({})), access.Verdict_Allow())


if __name__ == "__main__":
    unittest.main()
