/*
 * Promela model of the `continuations` session protocol (docs/protocol.md).  docs/verification.md says what is checked,
 * what is abstracted away, and what the counterexamples mean.
 *
 * Two processes, Client and Server, talk over two bounded channels.  As in the
 * ECCP model, the unreliable network is not a process of its own: a send may
 * drop the message, deliver it once, or deliver it twice (inline `snd`), and a
 * receive may take the oldest message of another link before the messages
 * queued ahead of it (inline `rcv`).  A network process would only add
 * interleavings that change nothing the endpoints can observe.
 *
 * Abstractions:
 *  - Cryptography is a set of unforgeable capabilities.  Only the client can
 *    produce an ATTACH_REQUEST with a version it has not used before; the
 *    network can only replay what it has seen (the duplicate branch of `snd`).
 *    Every record carries the attachment version whose keys protect it; an end
 *    that does not hold those keys (old link, lost link, never-accepted
 *    attachment) ignores the record, which is what failed AEAD decryption does.
 *  - Each byte stream is N items; item k is the byte at offset k.  Its value
 *    is k while the sender still holds it and BAD once it has been freed.
 *  - Time is nondeterminism: a spurious timeout is a free choice, a genuine
 *    one is Promela's `timeout` (nothing in the whole system can move).
 *  - A sender transmits everything it holds from its resume offset as soon as
 *    a link is usable (a burst), and a receiver acknowledges once it has the
 *    whole stream (acks are cumulative, so intermediate ones only free memory
 *    earlier; the offsets in ATTACH_REQUEST/ATTACH_ACCEPT are acks too).
 *  - A link is a TCP connection: order within a link is kept, so a lost
 *    message there is the link dying, which the receiver sees as a gap.
 *
 * Bounding: every disruptive event (loss, duplication, overtaking, spurious
 * timeout, migration, suspension, hello expiry) is allowed only while CHAOS
 * holds, i.e. while the client can still move to a higher attach version, and
 * losses, duplications and overtakings share a budget of MAXFAULT.  The last
 * version, MAXV, therefore runs on a quiet network.  That is the fairness
 * assumption behind "the ends agree once the network is quiet": if they do
 * not, the system stalls with no way out and the quiescence assertion in the
 * client fires (or spin reports an invalid end state).  After every step the
 * network also forgets traffic that no receiver will ever act on (`purge`),
 * which merges states that differ only in such leftovers.
 *
 * Variants (compile-time macros, see verification/check.sh):
 *  -DSEQUENCE_SEMANTICS  the server treats attach numbers as TCP-Migrate/HIP
 *                        sequence numbers (session_broken.pml sets this);
 *                        spin must find a counterexample.
 *  -DLITERAL_RESUME      resume from exactly the offset the peer stated, as
 *                        the design notes literally say, instead of
 *                        max(stated, acked): spin finds a sender asked to
 *                        resend bytes it has already freed.
 *  -DLATE_CONFIRM        a confirm on a still-open hello link creates the
 *                        session even after the server forgot that answered
 *                        hello (what endpoint.py's _confirm_new_session does
 *                        when the hello was evicted by max_pending_handshakes):
 *                        spin finds the client's data delivered into a session
 *                        the server had already told the client it does not
 *                        know, i.e. one the client has given up.
 */

#ifndef N
#define N 2             /* items per stream direction */
#endif
#ifndef MAXV
#define MAXV 6          /* highest attach version: up to 6 re-attachments */
#endif
#ifndef MAXFAULT
#define MAXFAULT 2      /* losses + duplications + overtakings per run */
#endif
#ifndef CAP
#define CAP 3           /* messages in flight per direction */
#endif

#define NONE 255
#define BAD  254        /* value of a byte the sender has already freed */

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
byte clink = NONE;      /* attachment whose keys the client holds */
bool cestab = false;    /* the server has proved that the session exists */
bool cclosing = false;  /* CLOSE sent; it is sent again after a re-attach */
bool cping = false;     /* a PING is outstanding */
byte cacked = 0;        /* client->server stream: bytes below are acked and freed */
byte crecv = 0;         /* server->client stream: next offset expected */

/* ---------------- server state ---------------- */
mtype = { S_NONE, S_OPEN, S_CLOSED };
mtype sess = S_NONE;
byte scur = 0;          /* committed attach version; session state, survives suspension */
byte shigh = 0;         /* highest version ever accepted, pending or committed */
bool slink = false;     /* the server holds the link of attachment scur (link state) */
byte spend = NONE;      /* pending attach version (link state) */
byte sacked = 0;        /* server->client stream: bytes below are acked and freed */
byte srecv = 0;         /* client->server stream: next offset expected */
bool semb = false;      /* an answered hello is remembered ("embryo"; no session yet) */
bool shello = false;    /* the link that hello came on is still open */

byte nfault = 0;
byte lossmask = 0;      /* bit v: a message of attachment v was lost */
bool cprog = false;     /* set inside atomic steps, turned into progress states outside */
bool sprog = false;

#define CHAOS   (cv < MAXV)
#define FAULT   (CHAOS && nfault < MAXFAULT)
#define MAX(a, b)  (a > b -> a : b)
#define VAL(off, acked) (off >= acked -> off : BAD)

#ifdef SEQUENCE_SEMANTICS
/* TCP-Migrate/HIP: attach n+1 only once n has finished; no skipping ahead. */
#define STALE(v) (v != scur + 1 || spend != NONE)
#else
/* Version semantics: anything newer than every version seen supersedes, gaps
 * are fine.  The design notes say "stale if v <= current"; comparing with the
 * highest version ever accepted (pending included) also stops an old, delayed
 * request from replacing a newer pending attach, and gives each version at
 * most one ATTACH_ACCEPT, hence one set of keys. */
#define STALE(v) (v <= shigh)
#endif

#ifdef LITERAL_RESUME
#define RESUME(stated, acked) stated
#else
/* A stated offset can be older than an ack that came over another link. */
#define RESUME(stated, acked) MAX(stated, acked)
#endif

#ifdef LATE_CONFIRM
#define CONFIRM_OK shello
#else
/* the confirm creates the session only while the answered hello is remembered */
#define CONFIRM_OK semb
#endif

inline snd(ch, smt, sv, so, sx) {
	if
	:: FAULT -> nfault++; lossmask = lossmask | (1 << sv)  /* lost */
	:: FAULT && len(ch) + 2 <= CAP ->
		nfault++; ch ! smt, sv, so, sx; ch ! smt, sv, so, sx   /* duplicated / replayed */
	:: nfull(ch) -> ch ! smt, sv, so, sx
	:: full(ch) && CHAOS -> lossmask = lossmask | (1 << sv) /* queue overflow: lost */
	/* Once the network is quiet a full queue first sheds the oldest message
	 * if it belongs to an older link (the client has moved on from it), and
	 * otherwise blocks the sender: back-pressure, as on a TCP link with a
	 * shut window.  Blocking on everything would deadlock the model: both
	 * ends can sit in a send with both queues full of old-link traffic. */
	:: full(ch) && !CHAOS ->
		ch ? <t2, v2, o2, x2>;
		if
		:: v2 != cv ->
			ch ? t2, v2, o2, x2; lossmask = lossmask | (1 << v2);
			ch ! smt, sv, so, sx
		:: else -> ch ! smt, sv, so, sx
		fi;
		t2 = 0; v2 = 0; o2 = 0; x2 = 0
	fi
}

inline rcv(ch) {
	if
	:: ch ? t, v, o, x
	:: FAULT && len(ch) >= 2 ->
		/* Links are independent TCP connections: the oldest message of
		 * another link may overtake everything queued before it.  Within
		 * a link TCP keeps the order (and a record out of order would
		 * fail its AEAD sequence check, i.e. a dead link: loss covers it). */
		ch ? <t2, v2, o2, x2>;
		select(vv : 0 .. MAXV);
		if
		:: vv != v2 && ch ?? [t, eval(vv), o, x] ->
			ch ?? t, eval(vv), o, x; v = vv; nfault++
		:: else -> ch ? t, v, o, x
		fi;
		vv = 0; t2 = 0; v2 = 0; o2 = 0; x2 = 0
	fi
}

/* burst of everything still unacknowledged, from offset `from` */
inline csend_from(from) {
	k = from;
	do
	:: k < N -> w = VAL(k, cacked); snd(c2s, DATA, clink, k, w); k++
	:: else -> break
	od;
	k = 0; w = 0
}
inline ssend_from(lnk, from) {
	k = from;
	do
	:: k < N -> w = VAL(k, sacked); snd(s2c, DATA, lnk, k, w); k++
	:: else -> break
	od;
	k = 0; w = 0
}

/*
 * Dead traffic.  A message that its receiver ignores now and will ignore for
 * ever (it belongs to a link that is gone, answers a request the client has
 * given up, ...) changes nothing when it arrives; it only makes states that
 * differ in such leftovers look different.  So after every step the network
 * forgets those messages, as it forgets the packets of a closed connection.
 * Nothing is lost that a receiver would act on: ATT_REQs that could still
 * create a pending attach (kept unless v <= current, which any server rule
 * rejects for ever), records under keys that an end holds or may still get
 * (a superseded or timed-out pending attach never comes back with the same
 * keys: a new ATTACH_ACCEPT means a new server ephemeral), and answers to
 * the client's current attempt all stay.
 */
#define C2S_DEAD(mt, ver) \
	((mt == HELLO && cst != C_HELLO) || \
	 (mt == ATT_REQ && ver < cv && \
	  (sess == S_CLOSED || (sess == S_OPEN && ver <= scur))) || \
	 (mt != HELLO && mt != ATT_REQ && \
	  !(ver == spend || (ver == scur && slink) || (sess == S_NONE && ver == 0 && CONFIRM_OK))))
#define S2C_DEAD(mt, ver) \
	(cst == C_DONE || cst == C_FAILED || \
	 (mt == HELLO_OK && cst != C_HELLO) || \
	 ((mt == ATT_ACC || mt == REJECT) && (ver != cv || cst != C_REATT)) || \
	 (mt != HELLO_OK && mt != ATT_ACC && mt != REJECT && \
	  ver != clink && !(ver == cv && cst == C_REATT)))

#define PURGE(ch, DEAD) \
	k = len(ch); \
	do \
	:: k > 0 -> \
		ch ? t2, v2, o2, x2; \
		if \
		:: DEAD(t2, v2) \
		:: else -> ch ! t2, v2, o2, x2 \
		fi; \
		k-- \
	:: else -> break \
	od; \
	t2 = 0; v2 = 0; o2 = 0; x2 = 0
/* Loss marks matter only for links some end may still read: the client's
 * current link and latest attempt, the server's current and pending ones. */
#define LIVE_LINKS \
	((clink != NONE -> 1 << clink : 0) | (1 << cv) | \
	 (slink -> 1 << scur : 0) | (spend != NONE -> 1 << spend : 0) | \
	 (sess == S_NONE -> 1 : 0))

#ifdef NO_PURGE
#define purge() skip
#else
#define purge() d_step { PURGE(c2s, C2S_DEAD); PURGE(s2c, S2C_DEAD); \
                         lossmask = lossmask & LIVE_LINKS }
#endif

#define IDLE (cst == C_ATT && cestab && !cclosing && !cping && cacked == N && crecv == N)
/* Once no fault or migration can happen and nothing is in flight, both ends
 * must hold the same attachment, and it must be the client's latest. */
#define QUIET_AGREEMENT \
	(CHAOS || len(c2s) > 0 || len(s2c) > 0 || \
	 (clink == cv && sess == S_OPEN && slink && scur == cv && spend == NONE))

/* the client starts attachment cv+1 (its old link, if any, stays up) */
inline reattach() {
	cv++;
	cst = C_REATT;
	cping = false;
	snd(c2s, ATT_REQ, cv, crecv, 0)
}

/* the server has proved the session exists (a record of its own, or an accept) */
#define established() cestab = true

proctype Client()
{
	mtype t;
	byte v, o, x;
	mtype t2;
	byte v2, o2, x2;
	byte k, w;       /* burst cursor and value */
	byte vv;         /* link chosen to overtake */

	atomic { snd(c2s, HELLO, 0, 0, 0); purge() }
	do
	:: atomic { nempty(s2c) && cst != C_DONE && cst != C_FAILED -> rcv(s2c);
		if
		:: t == HELLO_OK ->
			if
			:: cst == C_HELLO ->
				/* the client holds the keys: confirm, and data at once */
				cst = C_ATT; clink = 0;
				snd(c2s, CONFIRM, 0, crecv, 0);
				csend_from(0)
			:: else     /* answer to a duplicated HELLO */
			fi
		:: t == ATT_ACC ->
			if
			:: cst == C_REATT && v == cv ->
				/* new keys; the old link is dropped; the server's
				 * stated offset acknowledges everything below it */
				cst = C_ATT; clink = v; cping = false;
#ifdef LITERAL_RESUME
				assert(o >= cacked);    /* the bytes to resend are still held */
#endif
				x = RESUME(o, cacked);
				cacked = MAX(cacked, o);
				snd(c2s, CONFIRM, v, crecv, 0);
				cestab = true;     /* an accept proves the session exists */
				csend_from(x);
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
					/* signed "unknown session": the client gives up.  The
					 * server must never say so of a session it has proved
					 * to exist (servers forget sessions only on close). */
					assert(!cestab);
					cst = C_FAILED
				:: o == R_STALE -> clink = NONE; cst = C_DEAD
				fi
			:: else
			fi
		:: t == DATA ->
			if
			:: v == clink ->
				established();
				if
				:: o == crecv ->
					assert(x == crecv);      /* in order, exactly once */
					crecv++;
					if
					:: crecv == N -> snd(c2s, ACK, v, crecv, 0)
					:: else
					fi;
					cprog = true
				:: o < crecv ->
					/* duplicate: ack again, or a sender whose acks went
					 * to a link it has left would wait forever */
					if
					:: crecv == N -> snd(c2s, ACK, v, crecv, 0)
					:: else
					fi
				:: o > crecv ->
					/* gap: only a lost message on this very link can cause
					 * one (senders resume from true lower bounds); it ends
					 * the link, as that loss would on TCP */
					assert(lossmask & (1 << v));
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
			:: v == clink -> established(); cacked = MAX(cacked, o)
			:: else
			fi
		:: t == PONG ->
			if
			:: v == clink && cst == C_ATT && cping -> cping = false; cprog = true
			:: else
			fi
		:: t == CLOSE_OK ->
			if
			:: v == clink && cst == C_ATT && cclosing ->
				/* both ends closed the same attachment */
				assert(sess == S_CLOSED && scur == v);
				cst = C_DONE
			:: else
			fi
		:: else
		fi;
		t = 0; v = 0; o = 0; x = 0;
		purge() }
		/* progress states have to be real states, not inside an atomic step */
		if
		:: cprog -> progress_client: cprog = false
		:: else
		fi

	/* idle (everything delivered both ways): heartbeat or orderly close */
	:: atomic { IDLE -> assert(QUIET_AGREEMENT);
		cping = true; snd(c2s, PING, clink, 0, 0); purge() }
	:: atomic { IDLE -> assert(QUIET_AGREEMENT);
		cclosing = true; snd(c2s, CLOSE, clink, crecv, 0); purge() }

	/* migration, or a spurious dead-path timeout, with the old link still up */
	:: atomic { CHAOS && (cst == C_ATT || cst == C_REATT) -> reattach(); purge() }
	/* client suspended and resumed: link state (keys, pending attempt) is
	 * lost, session state kept; on resume it re-attaches at once.  Doing both
	 * in one step loses nothing: while suspended the client sends nothing and
	 * ignores everything, and the server cannot tell when the request left. */
	:: atomic { CHAOS && (cst == C_ATT || cst == C_REATT) -> clink = NONE; reattach(); purge() }
	/* the link is dead (rejected attach, gap, suspension): re-attach */
	:: atomic { cst == C_DEAD && CHAOS -> reattach(); purge() }

	/* genuine timeout: nothing in the whole system can move */
	:: atomic { timeout ->
		if
		:: cst == C_HELLO -> snd(c2s, HELLO, 0, 0, 0)
		:: cst != C_HELLO && CHAOS -> clink = NONE; reattach()
		:: else ->
			/* Quiet network and no fault or migration can happen any
			 * more: the ends must agree on the current attachment ... */
			assert(cst == C_ATT && clink == cv && sess == S_OPEN && slink && scur == cv);
			/* ... and agreeing with nothing left to do is impossible (the
			 * client would ping or close), so this is a stalled stream. */
			assert(false)
		fi;
		purge() }

	:: cst == C_DONE || cst == C_FAILED -> break
	od;

	if
	:: cst == C_DONE ->
		/* orderly close: both ends closed, every item delivered */
		assert(sess == S_CLOSED && crecv == N && cacked == N && srecv == N)
	:: cst == C_FAILED ->
		/* "could not establish" reported: nothing was delivered */
		assert(srecv == 0)
	fi;
	clink = NONE;
end_client:
	do  /* gone: whatever still arrives is ignored */
	:: s2c ? t, v, o, x -> t = 0; v = 0; o = 0; x = 0
	od
}

proctype Server()
{
	mtype t;
	byte v, o, x;
	mtype t2;
	byte v2, o2, x2;
	byte k, w;       /* burst cursor and value */
	byte vv;         /* link chosen to overtake */

end_server:
	do
	:: atomic { nempty(c2s) -> rcv(c2s);
		if
		:: t == HELLO ->
			/* no session state until the confirm, only a bounded, expiring
			 * memory of the answered hello */
			if
			:: sess == S_NONE -> semb = true; shello = true
			:: else
			fi;
			snd(s2c, HELLO_OK, 0, 0, 0)
		:: t == ATT_REQ ->
			if
			:: sess == S_NONE && semb ->
				/* the confirm never came, but the client holds the keys:
				 * an authentic request completes the session (no link yet)
				 * and the hello link is closed, its confirm now moot */
				sess = S_OPEN; scur = 0; shigh = 0; slink = false;
				semb = false; shello = false
			:: else
			fi;
			if
			:: sess != S_OPEN -> snd(s2c, REJECT, v, R_UNKNOWN, 0)
			:: sess == S_OPEN && STALE(v) -> snd(s2c, REJECT, v, R_STALE, 0)
			:: sess == S_OPEN && !STALE(v) ->
				/* a stale attach never supersedes a newer one, and each
				 * version is answered at most once (so a captured request
				 * works at most once, and a version means one set of keys) */
				assert(v > scur && v > shigh);
				spend = v; shigh = v;
#ifdef LITERAL_RESUME
				assert(o >= sacked);    /* the bytes to resend are still held */
#endif
				x = RESUME(o, sacked);
				sacked = MAX(sacked, o);   /* the stated offset is an ack */
				snd(s2c, ATT_ACC, v, srecv, 0);
				/* retransmission under the new keys, before the commit */
				ssend_from(spend, x)
			fi
		:: t == CONFIRM || t == DATA || t == ACK || t == PING || t == CLOSE ->
			/* an encrypted record: which keys, if any, open it? */
			if
			:: sess == S_NONE && v == 0 && CONFIRM_OK ->
				/* the confirm on the hello link creates the session;
				 * the server proves it with a record of its own */
				sess = S_OPEN; scur = 0; shigh = 0; slink = true;
				semb = false; shello = false;
				snd(s2c, ACK, 0, srecv, 0);
				ssend_from(0, 0)
			:: sess == S_OPEN && spend != NONE && v == spend ->
				/* first record under the pending keys: commit */
				assert(v > scur);
				scur = v; slink = true; spend = NONE;
				sprog = true
			:: else
			fi;
			if
			:: sess == S_OPEN && slink && v == scur ->
				if
				:: t == CONFIRM || t == ACK -> sacked = MAX(sacked, o)
				:: t == DATA ->
					if
					:: o == srecv ->
						assert(x == srecv);        /* in order, exactly once */
						assert(cst != C_FAILED);   /* not into a session the client gave up */
						srecv++;
						if
						:: srecv == N -> snd(s2c, ACK, v, srecv, 0)
						:: else
						fi;
						sprog = true
					:: o < srecv ->                  /* duplicate: ack again */
						if
						:: srecv == N -> snd(s2c, ACK, v, srecv, 0)
						:: else
						fi
					:: o > srecv ->                  /* gap: see the client */
						assert(lossmask & (1 << v));
						slink = false
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
		t = 0; v = 0; o = 0; x = 0;
		purge() }
		if
		:: sprog -> progress_server: sprog = false
		:: else
		fi

	/* server suspended and resumed, or its address replaced: all link state
	 * is lost; session state (scur, shigh, offsets, unacked data) is kept */
	:: atomic { CHAOS && sess == S_OPEN && (slink || spend != NONE) ->
		slink = false; spend = NONE; purge() }
	/* an unconfirmed hello times out: its link is closed, its memory dropped */
	:: atomic { CHAOS && sess == S_NONE && (semb || shello) ->
		semb = false; shello = false; purge() }
	/* the answered hello is evicted early (max_pending_handshakes), link open */
	:: atomic { CHAOS && sess == S_NONE && semb && shello -> semb = false; purge() }
	/* a pending attach times out before the client's confirm arrives */
	:: atomic { CHAOS && spend != NONE -> spend = NONE; purge() }
	od
}

init {
	atomic {
		run Server();
		run Client()
	}
}
