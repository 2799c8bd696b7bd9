"""Command-line pieces the scripts share (plain Python, no JAX): one-line argument errors and
comma-separated list flags."""

from __future__ import annotations

import argparse
from typing import Callable

_NAMES = {int: "integers", float: "numbers", str: "names"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it ("error: --flag: ..."), status 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"error: {message.removeprefix('argument ')} (see --help)\n")


def comma_list(typ: type) -> Callable[[str], list]:
    """An argparse `type` for 'a,b,c' (or spaces) -> [typ(a), typ(b), typ(c)]."""
    def parse(text: str) -> list:
        try:
            return [typ(x) for x in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {_NAMES.get(typ, typ.__name__)}, got '{text}'")
    return parse
