"""Every state and every legal transition of the protocol, in one place.

Sessions and links (transport connections) each have an enum and a table
``(state, trigger) -> next state``. A pair missing from a table is a local bug
(``InvalidTransitionError``): the core must never attempt it. Which record
types a link accepts in each state is tabled here too; a record that is not
legal in the link's state is the peer's fault and ends that link.
"""

from __future__ import annotations

import enum

from continuations.errors import InvalidTransitionError


class SessionState(enum.Enum):
    CONNECTING = "connecting"
    ESTABLISHED = "established"
    MIGRATING = "migrating"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"
    LOST = "lost"


class SessionTrigger(enum.Enum):
    ESTABLISH = "establish"  # the new-session handshake completed
    ATTACH_START = "attach_start"  # a re-attach began (client sent, server verified)
    ATTACH_DONE = "attach_done"  # the new attachment is confirmed and current
    ATTACH_ABANDON = "attach_abandon"  # the attempt failed but the old link still works
    PATH_LOST = "path_lost"  # no usable link left
    CLOSE = "close"  # orderly close, by either side
    EXPIRE = "expire"  # disconnected for longer than the linger time
    FAIL = "fail"  # the session cannot go on (e.g. the peer lost data we had freed)


_S = SessionState
_T = SessionTrigger

SESSION_TRANSITIONS: dict[tuple[SessionState, SessionTrigger], SessionState] = {
    (_S.CONNECTING, _T.ESTABLISH): _S.ESTABLISHED,
    (_S.CONNECTING, _T.CLOSE): _S.CLOSED,
    (_S.CONNECTING, _T.FAIL): _S.LOST,
    (_S.ESTABLISHED, _T.ATTACH_START): _S.MIGRATING,
    (_S.ESTABLISHED, _T.PATH_LOST): _S.DISCONNECTED,
    (_S.ESTABLISHED, _T.CLOSE): _S.CLOSED,
    (_S.ESTABLISHED, _T.FAIL): _S.LOST,
    (_S.MIGRATING, _T.ATTACH_START): _S.MIGRATING,
    (_S.MIGRATING, _T.ATTACH_DONE): _S.ESTABLISHED,
    (_S.MIGRATING, _T.ATTACH_ABANDON): _S.ESTABLISHED,
    (_S.MIGRATING, _T.PATH_LOST): _S.DISCONNECTED,
    (_S.MIGRATING, _T.CLOSE): _S.CLOSED,
    (_S.MIGRATING, _T.EXPIRE): _S.LOST,
    (_S.MIGRATING, _T.FAIL): _S.LOST,
    (_S.DISCONNECTED, _T.ATTACH_START): _S.MIGRATING,
    (_S.DISCONNECTED, _T.CLOSE): _S.CLOSED,
    (_S.DISCONNECTED, _T.EXPIRE): _S.LOST,
    (_S.DISCONNECTED, _T.FAIL): _S.LOST,
}

TERMINAL_SESSION_STATES = frozenset({SessionState.CLOSED, SessionState.LOST})


def next_session_state(state: SessionState, trigger: SessionTrigger) -> SessionState:
    try:
        return SESSION_TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransitionError(
            f"session cannot {trigger.value} while {state.value}"
        ) from None


class LinkState(enum.Enum):
    NEW = "new"  # server side: waiting for the first record
    HANDSHAKING = "handshaking"  # client side: hello or attach request sent
    CONFIRMING = "confirming"  # server side: answered, waiting for the client's first sealed record
    OPEN = "open"  # carrying sealed records for its session
    CLOSED = "closed"


class LinkTrigger(enum.Enum):
    SEND_FIRST = "send_first"  # client: hello or attach request queued
    ANSWER = "answer"  # server: server hello or attach accept queued
    CONFIRMED = "confirmed"  # server: the client's first sealed record verified
    ACCEPTED = "accepted"  # client: server hello or attach accept verified
    CLOSE = "close"


_L = LinkState
_LT = LinkTrigger

LINK_TRANSITIONS: dict[tuple[LinkState, LinkTrigger], LinkState] = {
    (_L.NEW, _LT.SEND_FIRST): _L.HANDSHAKING,
    (_L.NEW, _LT.ANSWER): _L.CONFIRMING,
    (_L.NEW, _LT.CLOSE): _L.CLOSED,
    (_L.HANDSHAKING, _LT.ACCEPTED): _L.OPEN,
    (_L.HANDSHAKING, _LT.CLOSE): _L.CLOSED,
    (_L.CONFIRMING, _LT.CONFIRMED): _L.OPEN,
    (_L.CONFIRMING, _LT.CLOSE): _L.CLOSED,
    (_L.OPEN, _LT.CLOSE): _L.CLOSED,
}


def next_link_state(state: LinkState, trigger: LinkTrigger) -> LinkState:
    try:
        return LINK_TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransitionError(f"link cannot {trigger.value} while {state.value}") from None


class RecordType(enum.IntEnum):
    """Outer record types; the byte on the wire."""

    CLIENT_HELLO = 0x01
    SERVER_HELLO = 0x02
    ATTACH_REQUEST = 0x03
    ATTACH_ACCEPT = 0x04
    REJECT = 0x05
    SEALED = 0x17


# Which records a link accepts in each state, by role. Anything else ends the link.
SERVER_ACCEPTS: dict[LinkState, frozenset[RecordType]] = {
    LinkState.NEW: frozenset({RecordType.CLIENT_HELLO, RecordType.ATTACH_REQUEST}),
    LinkState.CONFIRMING: frozenset({RecordType.SEALED}),
    LinkState.OPEN: frozenset({RecordType.SEALED}),
}
CLIENT_ACCEPTS: dict[LinkState, frozenset[RecordType]] = {
    LinkState.HANDSHAKING: frozenset(
        {RecordType.SERVER_HELLO, RecordType.ATTACH_ACCEPT, RecordType.REJECT}
    ),
    LinkState.OPEN: frozenset({RecordType.SEALED}),
}
