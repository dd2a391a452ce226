"""The counting service from the MTCP slides, on continuations.

The server keeps one counter per session in the shared attribute store; the
client sends numbered increments and checks every reply. Whatever happens to
the path, or to the client process (suspended to disk, resumed elsewhere), each
increment is counted exactly once. Guide: docs/runtime.md.
"""
