/*
 * Promela model of the `continuations` session protocol
 * (docs/design-notes.md; docs/verification.md explains what is checked and why).
 *
 * Two processes, Client and Server, talk over two bounded channels.  As in the
 * ECCP model, the unreliable network is not a process of its own: a send may
 * drop the message, deliver it once, or deliver it twice (inline `snd`), and a
 * receive may take the second message in the channel instead of the first
 * (inline `rcv`), which is how messages overtake each other.  Simulating the
 * network inside the endpoints avoids a network process whose interleavings
 * with the endpoints add states without adding behaviours.
 *
 * Abstractions (docs/verification.md has the longer argument):
 *  - Cryptography is a set of unforgeable capabilities.  Only the client can
 *    produce an ATTACH_REQUEST with a version it has not used before; the
 *    network can only replay what it has seen (the duplicate branch of `snd`).
 *    Every record carries the attachment version whose keys protect it; an end
 *    that does not hold those keys (old link, lost link, never-accepted
 *    attachment) ignores the record, which is what failed AEAD decryption does.
 *  - Each byte stream is N items; item k is the byte at offset k, and its value
 *    is k if the sender still holds it and BAD if it was already freed.
 *  - Time is nondeterminism: spurious timeouts are free choices, and a genuine
 *    timeout is Promela's `timeout` (the whole system is stuck).
 *
 * Bounding: every disruptive event (loss, duplication, reordering, spurious
 * timeout, migration, suspension) is allowed only while CHAOS holds, i.e.
 * while the client can still move to a higher attach version.  The last
 * version MAXV therefore runs on a quiet network, which is the fairness
 * assumption behind "the ends agree once the network is quiet": if they do
 * not, the system stalls with no way to recover and the quiescence assertion
 * in the client fires.
 *
 * Variants (compile-time macros):
 *  -DSEQUENCE_SEMANTICS  the server treats attach numbers as TCP-Migrate/HIP
 *                        style sequence numbers (session_broken.pml sets it);
 *                        spin must find a counterexample.
 *  -DLITERAL_RESUME      resume from exactly the offset the peer stated, as
 *                        the design notes literally say, instead of
 *                        max(stated, acked); spin finds the sender asked to
 *                        resend bytes it already freed.
 *  -DEARLY_DATA          the client sends stream data right after its confirm,
 *                        before the server has proved the session exists;
 *                        spin finds data delivered to a session the client
 *                        has already reported as failed.
 */

#ifndef N
#define N 2             /* items per stream direction */
#endif
#ifndef MAXV
#define MAXV 6          /* highest attach version: up to 6 re-attachments */
#endif
#ifndef MAXFAULT
#define MAXFAULT 2      /* losses + duplications + reorderings per run */
#endif
#ifndef CAP
#define CAP 3           /* messages in flight per direction */
#endif

#define NONE 255
#define BAD  254        /* value of a byte the sender no longer holds */

mtype = {
	HELLO, HELLO_OK,               /* new session, plaintext */
	ATT_REQ, ATT_ACC, REJECT,      /* re-attach, plaintext + HMAC */
	CONFIRM, DATA, ACK, PING, PONG, CLOSE, CLOSE_OK   /* encrypted records */
};

/* REJECT reasons, carried in the offset field */
#define R_STALE   0
#define R_UNKNOWN 1

/* { type, attachment version, offset, value } */
chan c2s = [CAP] of { mtype, byte, byte, byte };
chan s2c = [CAP] of { mtype, byte, byte, byte };

/* ---------------- client state ---------------- */
mtype = { C_HELLO, C_ATT, C_REATT, C_DEAD, C_DONE, C_FAILED };
mtype cst = C_HELLO;
byte cv = 0;            /* latest attach version the client has used */
byte clink = NONE;      /* attachment whose keys the client holds, NONE if none */
bool cestab = false;    /* the server has proved that the session exists */
bool cclosing = false;  /* CLOSE has been sent (and is re-sent after re-attach) */
bool cping = false;     /* a PING is outstanding */
byte csent = 0;         /* client->server stream: next offset to send on clink */
byte cacked = 0;        /*   lowest offset not yet acknowledged (bytes below are freed) */
byte crecv = 0;         /* server->client stream: next offset expected */

/* ---------------- server state ---------------- */
mtype = { S_NONE, S_OPEN, S_CLOSED };
mtype sess = S_NONE;
byte scur = 0;          /* committed attach version (session state, survives suspension) */
byte shigh = 0;         /* highest version ever accepted, pending or committed */
bool slink = false;     /* the server holds a live link for scur (link state) */
byte spend = NONE;      /* pending attach version (link state) */
byte ssent = 0;         /* server->client stream: next offset on the current link */
byte spsent = 0;        /*   next offset on the pending link */
byte sacked = 0;        /*   lowest offset not yet acknowledged */
byte srecv = 0;         /* client->server stream: next offset expected */

byte nfault = 0;        /* losses and duplications so far */
bool cprog = false;     /* set inside atomic steps, turned into a progress state outside */
bool sprog = false;

#define CHAOS   (cv < MAXV)
#define FAULT   (CHAOS && nfault < MAXFAULT)
#define MAX(a, b)  (a > b -> a : b)
#define VAL(off, acked) (off >= acked -> off : BAD)

#ifdef EARLY_DATA
#define DATA_OK true
#else
/* stream data waits until the server has proved the session exists */
#define DATA_OK cestab
#endif

#ifdef SEQUENCE_SEMANTICS
/* TCP-Migrate/HIP: attach n+1 only after n has finished; no skipping ahead. */
#define STALE(v) ((v) != scur + 1 || spend != NONE)
#else
/* Version semantics: anything newer than all versions seen supersedes, gaps
 * are fine.  The design notes say "stale if v <= current"; comparing against
 * the highest version ever accepted (pending included) also stops an old,
 * delayed request from replacing a newer pending one, and gives each version
 * at most one set of keys. */
#define STALE(v) ((v) <= shigh)
#endif

#ifdef LITERAL_RESUME
#define RESUME(stated, acked) (stated)
#else
/* The stated offset can be older than an ack that arrived on the other link. */
#define RESUME(stated, acked) MAX(stated, acked)
#endif

inline snd(ch, smt, sv, so, sx) {
	if
	:: FAULT -> nfault++                                 /* lost */
	:: FAULT && len(ch) + 2 <= CAP ->
		nfault++; ch ! smt, sv, so, sx; ch ! smt, sv, so, sx   /* duplicated / replayed */
	:: nfull(ch) -> ch ! smt, sv, so, sx
	:: full(ch) && CHAOS -> skip                        /* queue overflow: lost */
	/* Once the network is quiet, a full queue first sheds a leftover of a
	 * dead link (its TCP connection is gone, so is its data), and otherwise
	 * blocks the sender: back-pressure, as on a TCP link whose window is shut. */
	:: full(ch) && !CHAOS ->
		ch ? <t2, v2, o2, x2>;
		if
		:: v2 != cv -> ch ? t2, v2, o2, x2; ch ! smt, sv, so, sx
		:: else -> ch ! smt, sv, so, sx
		fi;
		t2 = 0; v2 = 0; o2 = 0; x2 = 0
	fi
}

inline rcv(ch) {
	if
	:: ch ? t, v, o, x
	:: FAULT && len(ch) >= 2 ->
		/* the second message overtakes the first */
		nfault++;
		ch ? t2, v2, o2, x2; ch ? t, v, o, x; ch ! t2, v2, o2, x2;
		t2 = 0; v2 = 0; o2 = 0; x2 = 0
	fi
}

/* Client starts attachment cv+1; its old link may or may not survive. */
inline reattach() {
	cv++;
	cst = C_REATT;
	cping = false;
	snd(c2s, ATT_REQ, cv, crecv, 0)
}

proctype Client()
{
	mtype t;
	byte v, o, x;
	mtype t2;
	byte v2, o2, x2;

	atomic { snd(c2s, HELLO, 0, 0, 0) }
	do
	:: atomic { nempty(s2c) -> rcv(s2c);
		if
		:: t == HELLO_OK ->
			if
			:: cst == C_HELLO ->
				cst = C_ATT; clink = 0;
				snd(c2s, CONFIRM, 0, crecv, 0)
			:: else     /* answer to a duplicated HELLO */
			fi
		:: t == ATT_ACC ->
			if
			:: cst == C_REATT && v == cv ->
				/* new keys: the old link is dropped, the server's
				 * stated offset acknowledges everything below it */
				cst = C_ATT; clink = v; cestab = true; cping = false;
				#ifdef LITERAL_RESUME
				assert(o >= cacked);   /* sender still holds the bytes it must resend */
				#endif
				cacked = MAX(cacked, o);
				csent = RESUME(o, cacked);
				snd(c2s, CONFIRM, v, crecv, 0);
				if
				:: cclosing -> snd(c2s, CLOSE, v, crecv, 0)
				:: else
				fi;
				cprog = true
			:: else     /* stale, superseded or duplicated accept */
			fi
		:: t == REJECT ->
			if
			:: cst == C_REATT && v == cv ->
				if
				:: o == R_UNKNOWN && cclosing -> cst = C_DONE   /* CLOSE_OK was lost */
				:: o == R_UNKNOWN && !cclosing ->
					/* the server never saw the confirm: the session
					 * never existed, unless the server proved it did */
					assert(!cestab);
					cst = C_FAILED
				:: o == R_STALE -> clink = NONE; cst = C_DEAD
				fi
			:: else
			fi
		:: t == DATA ->
			if
			:: v == clink ->
				cestab = true;
				if
				:: o == crecv ->
					assert(x == crecv);      /* in order, exactly once */
					crecv++;
					snd(c2s, ACK, v, crecv, 0);
					cprog = true
				:: o < crecv                   /* duplicate */
				:: o > crecv ->
					/* gap: a protocol error that ends the link */
					clink = NONE;
					if
					:: cst == C_ATT -> cst = C_DEAD
					:: else
					fi
				fi
			:: else
			fi
		:: t == ACK ->
			if
			:: v == clink ->
				cestab = true;
				cacked = MAX(cacked, o);
				csent = MAX(csent, cacked)
			:: else
			fi
		:: t == PONG ->
			if
			:: v == clink && cst == C_ATT && cping -> cping = false; cprog = true
			:: else
			fi
		:: t == CLOSE_OK ->
			if
			:: v == clink && cst == C_ATT && cclosing -> cst = C_DONE
			:: else
			fi
		:: else
		fi;
		t = 0; v = 0; o = 0; x = 0 }
		/* progress states must be real states, not inside an atomic step */
		if
		:: cprog -> progress_client: cprog = false
		:: else
		fi

	:: atomic { cst == C_ATT && clink != NONE && csent < N && !cclosing && DATA_OK ->
		x = VAL(csent, cacked);
		snd(c2s, DATA, clink, csent, x); csent++; x = 0 }

	/* idle: everything delivered both ways; heartbeat or orderly close */
	:: atomic { cst == C_ATT && cestab && !cclosing && !cping && cacked == N && crecv == N ->
		cping = true; snd(c2s, PING, clink, 0, 0) }
	:: atomic { cst == C_ATT && cestab && !cclosing && !cping && cacked == N && crecv == N ->
		cclosing = true; snd(c2s, CLOSE, clink, crecv, 0) }

	/* migration or a spurious dead-path timeout, with the old link still up
	 * (a suspension followed by a re-attach covers the old link being down) */
	:: atomic { CHAOS && (cst == C_ATT || cst == C_REATT) -> reattach() }
	/* client suspended and resumed: link state lost, session state kept */
	:: atomic { CHAOS && (cst == C_ATT || cst == C_REATT) ->
		clink = NONE; cping = false; cst = C_DEAD }
	/* a dead link (rejected attach, gap, suspension): back off and re-attach */
	:: atomic { cst == C_DEAD && CHAOS -> reattach() }

	/* genuine timeout: nothing in the whole system can move */
	:: atomic { timeout ->
		if
		:: cst == C_HELLO -> snd(c2s, HELLO, 0, 0, 0)
		:: cst != C_HELLO && CHAOS -> clink = NONE; reattach()
		:: else ->
			/* Quiet network, no fault or migration possible any more:
			 * the ends must agree on the attachment ... */
			assert(cst == C_ATT && clink == cv && sess == S_OPEN && slink && scur == cv);
			/* ... and agreement with nothing left to do is impossible
			 * (the client would ping or close), so this is a stall. */
			assert(false)
		fi }

	:: cst == C_DONE || cst == C_FAILED -> break
	od;

	if
	:: cst == C_DONE ->
		/* orderly close: both ends closed, every item delivered once */
		assert(sess == S_CLOSED && crecv == N && cacked == N && srecv == N)
	:: cst == C_FAILED ->
		/* the client reports "could not establish": nothing was delivered */
		assert(srecv == 0)
	fi
}

proctype Server()
{
	mtype t;
	byte v, o, x;
	mtype t2;
	byte v2, o2, x2;

end_server:
	do
	:: atomic { nempty(c2s) -> rcv(c2s);
		if
		:: t == HELLO ->
			/* stateless until the confirm: half-open handshakes are free */
			snd(s2c, HELLO_OK, 0, 0, 0)
		:: t == ATT_REQ ->
			if
			:: sess != S_OPEN -> snd(s2c, REJECT, v, R_UNKNOWN, 0)
			:: sess == S_OPEN && STALE(v) -> snd(s2c, REJECT, v, R_STALE, 0)
			:: sess == S_OPEN && !STALE(v) ->
				/* a stale attach never supersedes a newer one */
				assert(v > scur);
				spend = v; shigh = v;
				/* the stated offset is an ack (possibly old) */
				#ifdef LITERAL_RESUME
				assert(o >= sacked);    /* sender still holds the bytes it must resend */
				#endif
				sacked = MAX(sacked, o);
				ssent = MAX(ssent, sacked);
				spsent = RESUME(o, sacked);
				snd(s2c, ATT_ACC, v, srecv, 0)
			fi
		:: t == CONFIRM || t == DATA || t == ACK || t == PING || t == CLOSE ->
			/* an encrypted record: which keys (if any) open it? */
			if
			:: sess == S_NONE && v == 0 ->
				/* the client's confirm on the handshake link creates
				 * the session; the server proves it with a record */
				sess = S_OPEN; scur = 0; shigh = 0; slink = true; ssent = 0;
				snd(s2c, ACK, 0, srecv, 0)
			:: sess == S_OPEN && spend != NONE && v == spend ->
				/* first record under the pending keys: commit */
				assert(v > scur);
				scur = v; slink = true; ssent = spsent; spend = NONE;
				sprog = true
			:: else
			fi;
			if
			:: sess == S_OPEN && slink && v == scur ->
				if
				:: t == CONFIRM || t == ACK ->
					sacked = MAX(sacked, o); ssent = MAX(ssent, sacked)
				:: t == DATA ->
					if
					:: o == srecv ->
						assert(x == srecv);      /* in order, exactly once */
						assert(cst != C_FAILED);  /* not into a session the client gave up */
						srecv++;
						snd(s2c, ACK, v, srecv, 0);
						sprog = true
					:: o < srecv                   /* duplicate */
					:: o > srecv -> slink = false  /* gap ends the link */
					fi
				:: t == PING -> snd(s2c, PONG, v, 0, 0)
				:: t == CLOSE ->
					sacked = MAX(sacked, o);
					assert(srecv == N && sacked == N);
					sess = S_CLOSED; slink = false; spend = NONE;
					snd(s2c, CLOSE_OK, v, 0, 0)
				fi
			:: else       /* no keys for it: undecryptable, ignored */
			fi
		:: else
		fi;
		t = 0; v = 0; o = 0; x = 0 }
		if
		:: sprog -> progress_server: sprog = false
		:: else
		fi

	:: atomic { sess == S_OPEN && slink && ssent < N ->
		x = VAL(ssent, sacked);
		snd(s2c, DATA, scur, ssent, x); ssent++; x = 0 }
	/* the pending link retransmits at once, before the commit */
	:: atomic { sess == S_OPEN && spend != NONE && spsent < N ->
		x = VAL(spsent, sacked);
		snd(s2c, DATA, spend, spsent, x); spsent++; x = 0 }

	/* server suspended and resumed (or its address replaced): all link state
	 * is lost, the session state (scur, shigh, offsets, unacked data) is kept */
	:: atomic { CHAOS && sess == S_OPEN && (slink || spend != NONE) ->
		slink = false; spend = NONE }
	/* pending attach times out before the client's confirm arrives */
	:: atomic { CHAOS && spend != NONE -> spend = NONE }
	od
}

init {
	atomic {
		run Server();
		run Client()
	}
}
