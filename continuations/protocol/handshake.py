"""Building and checking the four handshake messages. Pure: randomness is passed in."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuations.errors import AuthenticationError
from continuations.protocol.keys import (
    Ephemeral,
    Random,
    TrafficKeys,
    attach_traffic_keys,
    check_proof,
    new_session_secrets,
    prove,
    public_bytes,
    sign_host,
    transcript_hash,
    verify_host,
)
from continuations.protocol.wire import (
    NONCE_LEN,
    SESSION_ID_LEN,
    AttachAccept,
    AttachRequest,
    ClientHello,
    ResumePoint,
    ServerHello,
)

_REQUEST = b"attach request"
_ACCEPT = b"attach accept"


@dataclass(frozen=True, slots=True)
class Secrets:
    """What a completed handshake yields for one attachment."""

    resume_key: bytes
    keys: TrafficKeys


def start_hello(rng: Random) -> tuple[Ephemeral, ClientHello]:
    eph = Ephemeral(rng)
    return eph, ClientHello(client_random=rng(NONCE_LEN), client_public=eph.public)


def answer_hello(
    hello: ClientHello, rng: Random, host_key: Ed25519PrivateKey
) -> tuple[ServerHello, Secrets]:
    eph = Ephemeral(rng)
    unsigned = ServerHello(
        session_id=rng(SESSION_ID_LEN),
        server_random=rng(NONCE_LEN),
        server_public=eph.public,
        host_key=public_bytes(host_key),
        signature=b"",
    )
    th = transcript_hash(hello.encode(), unsigned.signed_part())
    shared = eph.agree(hello.client_public)
    resume_key, keys = new_session_secrets(shared, th)
    signed = ServerHello(
        session_id=unsigned.session_id,
        server_random=unsigned.server_random,
        server_public=unsigned.server_public,
        host_key=unsigned.host_key,
        signature=sign_host(host_key, th),
    )
    return signed, Secrets(resume_key, keys)


def finish_hello(eph: Ephemeral, hello: ClientHello, answer: ServerHello) -> Secrets:
    """Client side: verify the host signature, derive the session's secrets."""
    th = transcript_hash(hello.encode(), answer.signed_part())
    verify_host(answer.host_key, th, answer.signature)
    resume_key, keys = new_session_secrets(eph.agree(answer.server_public), th)
    return Secrets(resume_key, keys)


def start_attach(
    *, session_id: bytes, version: int, resume_key: bytes, resume: ResumePoint, rng: Random
) -> tuple[Ephemeral, AttachRequest]:
    eph = Ephemeral(rng)
    unproved = AttachRequest(
        session_id=session_id,
        attach_version=version,
        client_nonce=rng(NONCE_LEN),
        client_public=eph.public,
        resume=resume,
        proof=b"",
    )
    proof = prove(resume_key, _REQUEST, unproved.proved_part())
    return eph, AttachRequest(
        session_id=session_id,
        attach_version=version,
        client_nonce=unproved.client_nonce,
        client_public=eph.public,
        resume=resume,
        proof=proof,
    )


def request_is_authentic(request: AttachRequest, resume_key: bytes) -> bool:
    return check_proof(resume_key, _REQUEST, request.proved_part(), request.proof)


def answer_attach(
    request: AttachRequest, *, resume_key: bytes, resume: ResumePoint, rng: Random
) -> tuple[AttachAccept, TrafficKeys]:
    """Server side, after the request's proof verified."""
    eph = Ephemeral(rng)
    unproved = AttachAccept(
        server_nonce=rng(NONCE_LEN), server_public=eph.public, resume=resume, proof=b""
    )
    proof = prove(resume_key, _ACCEPT, request.encode() + unproved.proved_part())
    accept = AttachAccept(
        server_nonce=unproved.server_nonce, server_public=eph.public, resume=resume, proof=proof
    )
    shared = eph.agree(request.client_public)
    th = transcript_hash(request.encode(), accept.encode())
    return accept, attach_traffic_keys(resume_key, shared, th)


def finish_attach(
    eph: Ephemeral, request: AttachRequest, accept: AttachAccept, resume_key: bytes
) -> TrafficKeys:
    """Client side: verify the server's proof, derive the attachment's keys."""
    if not check_proof(resume_key, _ACCEPT, request.encode() + accept.proved_part(), accept.proof):
        raise AuthenticationError("server's attach proof does not verify")
    th = transcript_hash(request.encode(), accept.encode())
    return attach_traffic_keys(resume_key, eph.agree(accept.server_public), th)
