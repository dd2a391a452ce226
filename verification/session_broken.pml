/*
 * Deliberately broken variant: the server treats attach numbers with
 * *sequence* semantics, as TCP-Migrate and HIP do (ECCP, "Sequence # semantics
 * are dangerous"): it only accepts attach n+1, and only once attach n has
 * finished.  The client is unchanged: every new link gets a fresh, higher
 * number.  A request that is lost, or overtaken by the client's next one,
 * leaves the server waiting for a number the client will never send again,
 * and the ends can no longer agree.  verification/check.sh requires spin to
 * find a counterexample here; docs/verification.md walks through it.
 */
#define SEQUENCE_SEMANTICS
#include "session.pml"
