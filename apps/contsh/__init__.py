"""contsh: a remote shell whose sessions survive cuts, address changes, suspension of
the client to disk, kill -9 of the client and restarts of the server.

``contshd`` serves; ``contsh`` logs in. Guide: docs/shell.md.
"""
