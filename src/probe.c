/*-------------------------------------------------------------------------
 *
 * probe.c
 *		TLS handshakes with many endpoints at once, on the I/O core (io.c):
 *		non-blocking connect, then SSL_connect, each bounded by its own
 *		timeout; the certificates each peer presents, read by x509.c.
 *
 * The handshakes are certctl's: no verification, no SNI (the endpoints are
 * IP addresses), every certificate the peer sends kept.  Unlike certctl's
 * Go client, which speaks TLS 1.2 and 1.3 only, legacy peers are accepted:
 * every protocol version and cipher the local OpenSSL allows, at security
 * level 0, with legacy renegotiation.
 *
 * Every socket is counted with AcquireExternalFD(); when none is left, fewer
 * handshakes run at once (reported in ProbeRun.capped) and the rest wait.
 * Sockets, SSL objects and the SSL_CTX are freed on every path, errors
 * included.  The egress policy (egress.c) is checked again before connect.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "mb/pg_wchar.h"

#include "io.h"
#include "probe.h"

/* the largest certificate chain accepted, and the most text recorded for one endpoint */
#define MAX_CHAIN_BYTES		65536
#define MAX_RECORDED_BYTES	(256 * 1024)

/* the state of one handshake in flight */
typedef enum ProbeStep
{
	STEP_WAITING = 0,			/* not started */
	STEP_CONNECTING,
	STEP_HANDSHAKE,
	STEP_DONE
} ProbeStep;

typedef struct InFlight
{
	Probe	   *p;
	ProbeStep	step;
	int			fd;
	SSL		   *ssl;
	TimestampTz deadline;
	bool		watched;
} InFlight;

typedef struct ProbeState
{
	Probe	   *probes;
	int			n;
	int			next;			/* first probe not started */
	InFlight   *slots;
	int			nslots;
	int			in_flight;
	const ProbeLimits *limits;
	IoCore	   *io;
	SSL_CTX    *ctx;
	MemoryContext certs_cxt;	/* where the certificates' fields go */
	ProbeRun   *run;
} ProbeState;

/* Creates the SSL_CTX of a run: no verification, every version and cipher OpenSSL allows, legacy renegotiation. */
static SSL_CTX *
make_ctx(void)
{
	SSL_CTX    *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create an OpenSSL context")));
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_security_level(ctx, 0);
	(void) SSL_CTX_set_min_proto_version(ctx, 0);	/* the lowest this OpenSSL has */
	(void) SSL_CTX_set_cipher_list(ctx, "ALL:@SECLEVEL=0");
	SSL_CTX_set_options(ctx, SSL_OP_LEGACY_SERVER_CONNECT);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_max_cert_list(ctx, MAX_CHAIN_BYTES);	/* Go's handshake messages are as large at most */
	ERR_clear_error();
	return ctx;
}

/* Frees a slot's SSL object and socket (giving the descriptor back), and stops watching it. */
static void
release_slot(ProbeState *ps, InFlight *s)
{
	if (s->ssl)
	{
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	if (s->fd >= 0)
	{
		if (s->watched)
			certctl_sched_io_forget(ps->io, s->fd);
		close(s->fd);
		s->fd = -1;
		certctl_sched_io_release_fd();
	}
	s->watched = false;
	if (s->step != STEP_WAITING && s->step != STEP_DONE)
		ps->in_flight--;
	s->step = STEP_WAITING;
	s->p = NULL;
}

/* Ends a probe with an error (printf-style) and frees its slot. */
static void
fail_probe(ProbeState *ps, InFlight *s, const char *fmt,...)
pg_attribute_printf(3, 4);

static void
fail_probe(ProbeState *ps, InFlight *s, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(s->p->error, sizeof(s->p->error), fmt, ap);
	va_end(ap);
	s->p->done = true;
	ps->run->failed++;
	release_slot(ps, s);
}

/* The last OpenSSL error of this thread, as text ("unknown" if none). */
static const char *
ssl_error_text(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	if (e == 0)
		return "the connection was closed";
	ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

/* Returns how much text a certificate's fields take (what the results carry for it). */
static size_t
recorded_bytes(const CertFields *c)
{
	size_t		n = strlen(c->common_name) + strlen(c->serial_number) + strlen(c->issuer_dn) +
		strlen(c->subject_dn) + strlen(c->pem_data) + 256;

	for (int i = 0; i < c->nsans; i++)
		n += strlen(c->sans[i]) + 4;
	return n;
}

/* Returns whether a certificate's text has a character outside ASCII (which a database not in UTF-8 may not store). */
static bool
has_non_ascii(const CertFields *c)
{
	const char *texts[4] = {c->common_name, c->issuer_dn, c->subject_dn, c->serial_number};

	for (int i = 0; i < 4; i++)
		for (const char *p = texts[i]; *p; p++)
			if ((unsigned char) *p >= 0x80)
				return true;
	return false;
}

/*
 * Reads the peer's certificates into the probe (fields by x509.c) and ends
 * it; fails it, as Go's client would fail the handshake, when a certificate
 * cannot be read or the leaf's key is of a type crypto/tls refuses, and when
 * what there is to record is more than this endpoint may take.
 */
static void
finish_probe(ProbeState *ps, InFlight *s)
{
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(s->ssl);
	int			n = chain ? sk_X509_num(chain) : 0;
	MemoryContext old = MemoryContextSwitchTo(ps->certs_cxt);
	Probe	   *p = s->p;
	char		why[256];
	size_t		bytes = 0;

	p->certs = palloc0(sizeof(CertFields) * Max(n, 1));
	p->ncerts = 0;
	for (int i = 0; i < n; i++)
	{
		CertFields *c = &p->certs[p->ncerts];

		if (!certctl_sched_x509_fields(sk_X509_value(chain, i), c, why, sizeof(why)))
		{
			MemoryContextSwitchTo(old);
			fail_probe(ps, s, "certificate %d of the chain cannot be recorded: %s", i, why);
			return;
		}
		if (i == 0 && strcmp(c->key_algorithm, "RSA") != 0 && strcmp(c->key_algorithm, "ECDSA") != 0 &&
			strcmp(c->key_algorithm, "Ed25519") != 0)
		{
			MemoryContextSwitchTo(old);
			fail_probe(ps, s, "tls: server's certificate contains an unsupported type of public key");
			return;
		}
		if (GetDatabaseEncoding() != PG_UTF8 && has_non_ascii(c))
		{
			MemoryContextSwitchTo(old);
			fail_probe(ps, s, "certificate %d of the chain has text outside ASCII, which the database's encoding (%s) cannot be trusted to store",
					   i, GetDatabaseEncodingName());
			return;
		}
		bytes += recorded_bytes(c);
		p->ncerts++;
	}
	MemoryContextSwitchTo(old);
	if (n == 0)
	{
		fail_probe(ps, s, "the peer sent no certificate");
		return;
	}
	if (bytes > MAX_RECORDED_BYTES)
	{
		fail_probe(ps, s, "the peer's certificates are too large to record (%zu bytes of text)", bytes);
		return;
	}
	p->done = true;
	ps->run->succeeded++;
	release_slot(ps, s);
}

/* Watches a slot's socket for the events its step needs. */
static bool
watch(ProbeState *ps, InFlight *s, uint32 events)
{
	if (!certctl_sched_io_watch(ps->io, s->fd, events, s, s->watched))
		return false;
	s->watched = true;
	return true;
}

/* Drives a slot's handshake as far as it goes without blocking. */
static void
step_handshake(ProbeState *ps, InFlight *s)
{
	int			rc;
	char		buf[256];

	ERR_clear_error();
	rc = SSL_connect(s->ssl);
	if (rc == 1)
	{
		finish_probe(ps, s);
		return;
	}
	switch (SSL_get_error(s->ssl, rc))
	{
		case SSL_ERROR_WANT_READ:
			if (!watch(ps, s, EPOLLIN))
				fail_probe(ps, s, "could not watch the socket: %m");
			return;
		case SSL_ERROR_WANT_WRITE:
			if (!watch(ps, s, EPOLLOUT))
				fail_probe(ps, s, "could not watch the socket: %m");
			return;
		case SSL_ERROR_SYSCALL:
			if (errno != 0 && ERR_peek_error() == 0)
			{
				fail_probe(ps, s, "TLS handshake failed: %m");
				return;
			}
			/* FALLTHROUGH */
		default:
			fail_probe(ps, s, "TLS handshake failed: %s", ssl_error_text(buf, sizeof(buf)));
			return;
	}
}

/* A connecting socket became writable: the connection is made, or failed. */
static void
step_connected(ProbeState *ps, InFlight *s)
{
	int			err = 0;
	socklen_t	len = sizeof(err);

	if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0)
	{
		errno = err;
		fail_probe(ps, s, "could not connect: %m");
		return;
	}
	s->ssl = SSL_new(ps->ctx);
	if (s->ssl == NULL || !SSL_set_fd(s->ssl, s->fd))
	{
		fail_probe(ps, s, "could not create a TLS connection");
		return;
	}
	SSL_set_connect_state(s->ssl);
	s->step = STEP_HANDSHAKE;
	step_handshake(ps, s);
}

/*
 * Starts probe p in slot s: a socket (counted), a non-blocking connect.
 * Returns false, leaving p waiting, when no descriptor is left.
 */
static bool
start_probe(ProbeState *ps, InFlight *s, Probe *p)
{
	const struct sockaddr *addr = (const struct sockaddr *) &p->addr;
	const char *why = certctl_sched_egress_refusal(addr);

	s->p = p;
	s->fd = -1;
	s->ssl = NULL;
	s->watched = false;
	s->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->timeout_ms);
	p->started = true;
	s->step = STEP_CONNECTING;
	ps->in_flight++;
	if (why != NULL)
	{
		fail_probe(ps, s, "address refused: %s addresses are not allowed", why);
		return true;
	}
	if (!certctl_sched_io_acquire_fd())
	{
		p->started = false;
		s->step = STEP_WAITING;
		s->p = NULL;
		ps->in_flight--;
		return false;
	}
	s->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
	{
		certctl_sched_io_release_fd();
		fail_probe(ps, s, "could not create a socket: %m");
		return true;
	}
	if (connect(s->fd, addr, p->addrlen) == 0)
	{
		step_connected(ps, s);
		return true;
	}
	if (errno != EINPROGRESS)
	{
		fail_probe(ps, s, "could not connect: %m");
		return true;
	}
	if (!watch(ps, s, EPOLLOUT))
		fail_probe(ps, s, "could not watch the socket: %m");
	return true;
}

/* Starts waiting probes in free slots, as far as descriptors allow; notes a cap. */
static void
start_probes(ProbeState *ps)
{
	if (ps->limits->stop_starting && ps->limits->stop_starting())
		return;
	for (int i = 0; i < ps->nslots && ps->next < ps->n; i++)
	{
		if (ps->slots[i].step != STEP_WAITING)
			continue;
		if (!start_probe(ps, &ps->slots[i], &ps->probes[ps->next]))
		{
			if (ps->in_flight == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
						 errmsg("no file descriptor left for the network scan"),
						 errhint("Raise max_files_per_process.")));
			ps->run->capped = Max(ps->run->capped, ps->in_flight);
			return;
		}
		ps->next++;
	}
}

/* IoReadyFn: a socket is ready: take its slot's next step. */
static void
on_ready(void *ptr, uint32 events, void *arg)
{
	ProbeState *ps = (ProbeState *) arg;
	InFlight   *s = (InFlight *) ptr;

	if (s->p == NULL)
		return;
	if (s->step == STEP_CONNECTING)
		step_connected(ps, s);
	else if (s->step == STEP_HANDSHAKE)
		step_handshake(ps, s);
}

/* Ends the probes whose timeout has passed; returns the next deadline (0: none). */
static TimestampTz
expire(ProbeState *ps, TimestampTz now)
{
	TimestampTz next = 0;

	for (int i = 0; i < ps->nslots; i++)
	{
		InFlight   *s = &ps->slots[i];

		if (s->step != STEP_CONNECTING && s->step != STEP_HANDSHAKE)
			continue;
		if (s->deadline <= now)
			fail_probe(ps, s, "timed out after %d ms while %s", s->p->timeout_ms,
						s->step == STEP_CONNECTING ? "connecting" : "in the TLS handshake");
		else if (next == 0 || s->deadline < next)
			next = s->deadline;
	}
	return next;
}

/* Runs the probes until all are done, the soft stop comes, or the stop flag is raised. */
static void
drive(ProbeState *ps)
{
	const ProbeLimits *lim = ps->limits;

	for (;;)
	{
		TimestampTz now;
		TimestampTz next;
		long		wait;

		now = GetCurrentTimestamp();
		if ((lim->stop_at != 0 && now >= lim->stop_at) || (lim->stop_now && lim->stop_now()))
			return;
		start_probes(ps);
		if (ps->in_flight == 0 && (ps->next >= ps->n || (lim->stop_starting && lim->stop_starting())))
			return;
		next = expire(ps, now);
		if (lim->stop_at != 0 && (next == 0 || lim->stop_at < next))
			next = lim->stop_at;
		wait = next == 0 ? -1 : (next <= now ? 0 : (long) ((next - now + 999) / 1000));
		if (ps->in_flight > 0 || wait == 0)
		{
			if (certctl_sched_io_wait(ps->io, wait, on_ready, ps))
				CHECK_FOR_INTERRUPTS();
		}
		(void) expire(ps, GetCurrentTimestamp());
	}
}

/*
 * Probes n endpoints, at most limits->concurrency at once (fewer when the
 * descriptors run out: run->capped then says how many ran at once), each
 * bounded by its timeout_ms.  At limits->stop_at, or when limits->stop_now()
 * says so, the probes in flight are abandoned: they stay started && !done,
 * like those never started.  Certificates are allocated in certs_cxt.
 * Interrupts (the run's cancel) propagate after every socket is closed.
 */
void
certctl_sched_probe_all(Probe *probes, int n, const ProbeLimits *limits, MemoryContext certs_cxt, ProbeRun *run)
{
	ProbeState	ps;

	memset(&ps, 0, sizeof(ps));
	memset(run, 0, sizeof(*run));
	ps.probes = probes;
	ps.n = n;
	ps.limits = limits;
	ps.certs_cxt = certs_cxt;
	ps.run = run;
	ps.nslots = Max(Min(limits->concurrency, n), 1);
	ps.slots = palloc0(sizeof(InFlight) * ps.nslots);
	for (int i = 0; i < ps.nslots; i++)
		ps.slots[i].fd = -1;

	PG_TRY();
	{
		ps.io = certctl_sched_io_start();
		ps.ctx = make_ctx();
		drive(&ps);
	}
	PG_FINALLY();
	{
		for (int i = 0; i < ps.nslots; i++)
			release_slot(&ps, &ps.slots[i]);
		if (ps.ctx)
			SSL_CTX_free(ps.ctx);
		ERR_clear_error();
		certctl_sched_io_finish(ps.io);
	}
	PG_END_TRY();
}
