"""`twistd` with every journal write held until the test lets it through.

Run as a script by tests/process.py (`spawn(..., held=True)`), in place of
the twistd script. Each journal append first prints HOLDING and waits for
one byte on stdin; end of stdin lets every write through from then on.
Nothing can be acknowledged while a write is held, so a test knows which
replies can only have come after what it did next (a signal, say).
"""

import os
import sys
import threading

HOLDING = b"journal write held"


def main() -> None:
    sys.path.pop(0)  # tests/ itself: its http.py would shadow the standard one.
    from twisted.scripts.twistd import run

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

    sys.argv[0] = "twistd"
    run()


if __name__ == "__main__":
    main()
