"""How every command of this project ends: a user's mistake is one line on standard error and exit
status 2; ``--debug`` shows its traceback instead."""
from __future__ import annotations

import sys
from typing import Callable

from lrml.errors import UserError


def run(command: Callable[[list[str]], int], argv: list[str] | None, prog: str) -> int:
    """Run ``command(argv)``, turning a ``UserError`` into ``prog: error: message`` unless ``--debug`` is given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return command(argv)
    except UserError as error:
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
