"""`twistd` with every journal write held until the test lets it through.

Run as a script by tests/process.py (`spawn(..., held=True)`), in place of
the twistd script. Each journal append first prints HOLDING and waits for
one byte on stdin; end of stdin lets every write through from then on.
Nothing can be acknowledged while a write is held, so a test knows which
replies can only have come after what it did next (a signal, say).

It also prints READ_WAIT_OVER when shutdown's READ_BEFORE_CLOSE wait has
ended, just before ChatService goes on (to flush, then close every client):
a test that lets writes through only after that line knows the wait alone
cannot have acknowledged its sends, so only the flush can. Private hook:
relies on chatbox/service.py calling `deferLater` by its module-level name;
if that changes, the line never comes and the waiting test times out.
"""

import os
import sys
import threading
from typing import Any

HOLDING = b"journal write held"
READ_WAIT_OVER = b"read-before-close wait over"


def main() -> None:
    sys.path.pop(0)  # tests/ itself: its http.py would shadow the standard one.
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime
    from twisted.scripts.twistd import run

    from chatbox import service
    from chatbox.local import datafile

    lock = threading.Lock()
    through = False
    append = datafile.Journal.append

    def held_append(self: datafile.Journal, data: bytes) -> None:
        nonlocal through
        with lock:
            if not through:
                os.write(1, HOLDING + b"\n")
                through = os.read(0, 1) == b""
        append(self, data)

    datafile.Journal.append = held_append  # type: ignore[method-assign]

    later = service.deferLater

    def marked_later(
        clock: IReactorTime, delay: float, *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        def over(result: object) -> object:
            if delay == service.READ_BEFORE_CLOSE:
                os.write(1, READ_WAIT_OVER + b"\n")
            return result

        # Added before ChatService awaits it, so the line is written before
        # _stop resumes (and, without its flush, closes every client).
        return later(clock, delay, *args, **kwargs).addCallback(over)

    service.deferLater = marked_later
    sys.argv[0] = "twistd"
    run()


if __name__ == "__main__":
    main()
