"""Coverage-guided fuzzing of the wire decoders (records, handshake messages, frames).

    python fuzz/fuzz_wire.py -max_total_time=60 -max_len=70000

Invariant: only FrameError / VersionError escape a decoder; what decodes encodes back
to the same bytes; the record decoder is independent of how its input is split.
"""

from _launch import main

if __name__ == "__main__":
    main("wire")
