"""A child process of the runtime test app: records the notifications it receives."""

import signal
import sys
import time

log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
signal.signal(signal.SIGUSR1, lambda *_: log.write("disconnect\n"))
signal.signal(signal.SIGUSR2, lambda *_: log.write("resume\n"))
log.write("started\n")
for _ in range(6000):  # bounded: 10 minutes at most
    time.sleep(0.1)
