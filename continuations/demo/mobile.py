"""The demo client process's entry point: ``python -m continuations.demo.mobile ...``.

A separate module because code run as ``__main__`` would be serialised by value in
a continuation; imported from ``continuations.demo.client``, the continuation's
function is stored by reference, and the resuming process imports it.
"""

import sys

from continuations.demo.client import main

if __name__ == "__main__":
    sys.exit(main())
