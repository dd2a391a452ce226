"""Bugs found once, pinned down."""

from __future__ import annotations

from sansio import Net


def test_final_ack_is_sent_even_when_the_stream_is_forgotten_at_once() -> None:
    """Both halves finished: the receiver forgot the stream on the FIN and used to drop the
    last ack, so the sender kept the bytes in its replay buffer forever."""
    net = Net(11)
    net.connect()
    net.pump()
    client = net.client.session
    sid = client.open_stream()
    client.send(sid, b"q" * 1000)
    net.pump()
    server = net.server_session()
    server.send(sid, b"r" * 500, end_stream=True)
    net.pump()  # the server's half is done and acknowledged
    client.send(sid, b"s" * 70_000, end_stream=True)
    net.pump()
    assert bytes(net.received[("server", sid)]) == b"q" * 1000 + b"s" * 70_000
    assert client.buffered == 0
    assert client.unacknowledged(sid) == 0
    assert sid not in client.streams and sid not in server.streams
