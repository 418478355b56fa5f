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
from wit_world.exports import balance  # noqa: E402
from wit_world.imports import pool  # noqa: E402


class Pool(pool.PoolView):
    """The host's side of `pool-view`: the request's headers."""

    def __init__(self, headers: dict[str, str]):
        self.headers = headers

    def request_header(self, name: str) -> str | None:
        return self.headers.get(name)


def context(sequence: int) -> balance.PickContext:
    return balance.PickContext(pool=0, eligible_count=3, sequence=sequence, client_hash=0, eligible_mask=0b111)


class PickTest(unittest.TestCase):
    def setUp(self) -> None:
        app.Balance().init('{"offset": 1}')

    def test_picks_go_round_the_eligible_backends(self) -> None:
        picks = [app.Balance().pick(Pool({}), context(seq), None) for seq in range(4)]
        self.assertEqual(picks, [balance.Choice_EligibleIndex(i) for i in (1, 2, 0, 1)])

    def test_x_pick_names_an_eligible_backend(self) -> None:
        self.assertEqual(app.Balance().pick(Pool({"x-pick": "2"}), context(0), None), balance.Choice_EligibleIndex(2))
        self.assertEqual(app.Balance().pick(Pool({"x-pick": "9"}), context(0), None), balance.Choice_EligibleIndex(1))


if __name__ == "__main__":
    unittest.main()
