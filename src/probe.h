/*-------------------------------------------------------------------------
 *
 * probe.h
 *		TLS probes of the network scan (probe.c) and the loop (scan.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_PROBE_H
#define CERTCTL_SCHED_PROBE_H

#include <sys/socket.h>

#include "datatype/timestamp.h"
#include "x509.h"

/* One endpoint to probe, and what came of it */
typedef struct Probe
{
	/* set by the caller */
	struct sockaddr_storage addr;
	socklen_t	addrlen;
	int			timeout_ms;		/* connect and handshake */
	int			target;			/* the caller's */
	const char *endpoint;		/* "a.b.c.d:port", "[v6]:port" */
	/* set by probe.c */
	bool		started;
	bool		done;			/* certificates read, or failed; not abandoned */
	char		error[256];		/* why it failed ("" when it did not) */
	int			ncerts;
	CertFields *certs;			/* every certificate the peer sent, leaf first */
} Probe;

typedef struct ProbeLimits
{
	int			concurrency;	/* handshakes in flight */
	TimestampTz stop_at;		/* soft stop: abandon what is in flight (0: none) */
	bool		(*stop_now) (void); /* abandon what is in flight now (SIGTERM); NULL: never */
	bool		(*stop_starting) (void);	/* start no more; NULL: never */
} ProbeLimits;

typedef struct ProbeRun
{
	int			succeeded;
	int			failed;
	int			capped;			/* > 0: descriptors ran out with this many in flight */
} ProbeRun;

extern void certctl_sched_probe_all(Probe *probes, int n, const ProbeLimits *limits, MemoryContext certs_cxt,
									ProbeRun *run);

#endif							/* CERTCTL_SCHED_PROBE_H */
