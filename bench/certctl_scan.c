/*
 * bench/certctl_scan.c: certctl's network scan algorithm, re-implemented in C (figure 8's baseline)
 *
 * What certctl's server does on each run of its network scan loop (NetworkScanService.ScanAllTargets at HEAD, see
 * docs/certctl-versions.md section 7 and docs/network-scan.md): every enabled target of network_scan_targets, one
 * target after another; per target its CIDRs expanded into addresses (at most 12 host bits; network and broadcast
 * dropped from a range of more than two addresses), each address crossed with each port; the endpoints probed by a
 * pool of 50 at once, each a TCP connection plus a TLS handshake bounded together by the target's timeout_ms (Go's
 * tls.DialWithDialer with net.Dialer{Timeout}, InsecureSkipVerify, no SNI for an IP address, TLS 1.2 and 1.3), every
 * certificate the peer sends turned into an entry (SHA-256 fingerprint, PEM, names, dates, key), the connection
 * closed (close_notify); then the target's writes, one autocommit statement per round trip as certctl's
 * repositories make them: the target's UPDATE; if any certificate was found, the discovery_scans INSERT, one upsert
 * per certificate, the audit INSERT.
 *
 * Deliberate differences, none of which changes the work done per endpoint: certctl at HEAD drops loopback
 * addresses before probing (this benchmark's servers are on loopback; certctl 4d59fd1 did not drop them); the TLS
 * library is OpenSSL (as certctl_sched's), not Go's crypto/tls; the pool is 50 threads taking the next endpoint
 * in turn (certctl: a goroutine per endpoint behind a 50-slot semaphore, which starts them in the same order); the
 * DNs are OpenSSL's RFC 2253 text, not Go's pkix.Name.String().
 *
 * usage: certctl_scan CONNINFO [CONCURRENCY]   (default 50, certctl's)
 * prints one line: "<targets> <endpoints> <succeeded> <failed> <certificates> <new> <seconds> <probe seconds>
 * <cpu seconds>": seconds from the target list to the last write, probe seconds the probing alone (all targets),
 * cpu the process's user + system time (all threads, getrusage).
 *
 * build: cc -O2 -pthread -o certctl_scan certctl_scan.c -I$(pg_config --includedir) -L$(pg_config --libdir) \
 *        -lpq -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static PGconn *conn;
static SSL_CTX *ctx;
static long id_counter;

/* one discovered certificate, as certctl's DiscoveredCertEntry */
typedef struct Entry
{
	char		fingerprint[65];
	char	   *common_name;
	char	   *sans;			/* a text[] literal, NULL when the certificate has no DNS name */
	char	   *serial;
	char	   *issuer_dn;
	char	   *subject_dn;
	char		not_before[32];
	char		not_after[32];
	const char *key_algorithm;
	char		key_size[12];
	int			is_ca;
	char	   *pem;
	const char *source_path;
} Entry;

/* one endpoint and its outcome */
typedef struct Endpoint
{
	char		addr[64];		/* "ip:port" */
	struct sockaddr_in sa;
	char		error[160];		/* empty: succeeded */
	Entry	   *entries;
	int			nentries;
} Endpoint;

/* the endpoints of the target being scanned, taken in turn by the pool */
static Endpoint *eps;
static int neps;
static int next_ep;
static int timeout_ms;
static pthread_mutex_t next_lock = PTHREAD_MUTEX_INITIALIZER;

static double
mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Go's time.Now() as a timestamptz literal */
static char *
wall_now(char *buf)
{
	struct timespec ts;
	struct tm	tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(buf, 32, "%Y-%m-%d %H:%M:%S", &tm);
	sprintf(buf + strlen(buf), ".%06ld+00", ts.tv_nsec / 1000);
	return buf;
}

/* certctl's generateID at HEAD: prefix-<UnixNano>-<counter> */
static char *
gen_id(const char *prefix, char *buf)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	sprintf(buf, "%s-%lld%09ld-%ld", prefix, (long long) ts.tv_sec, ts.tv_nsec, ++id_counter);
	return buf;
}

/* One statement, one round trip (extended protocol, like Go's database/sql); exits on error. */
static PGresult *
q(const char *sql, int n, const char *const *params)
{
	PGresult   *r = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "certctl_scan: %s\n%s\n", PQerrorMessage(conn), sql);
		exit(1);
	}
	return r;
}

static double
ms_left(double deadline)
{
	double		left = (deadline - mono()) * 1000;

	return left > 0 ? left : 0;
}

/* Waits until fd is ready for events or the deadline passes; returns 1 if ready. */
static int
wait_fd(int fd, short events, double deadline)
{
	struct pollfd p = {fd, events, 0};
	int			rc;

	do
		rc = poll(&p, 1, (int) (ms_left(deadline) + 0.999));
	while (rc < 0 && errno == EINTR);
	return rc > 0;
}

/* The text of an X509 name, RFC 2253 (a stand-in for Go's pkix.Name.String(): the same amount of work) */
static char *
name_text(X509_NAME *name)
{
	BIO		   *b = BIO_new(BIO_s_mem());
	char	   *data;
	long		len;
	char	   *out;

	X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
	len = BIO_get_mem_data(b, &data);
	out = strndup(data, len);
	BIO_free(b);
	return out;
}

/* Go's Time.UTC().Format(time.RFC3339) */
static void
time_text(const ASN1_TIME *t, char *buf)
{
	struct tm	tm;

	memset(&tm, 0, sizeof(tm));
	ASN1_TIME_to_tm(t, &tm);
	strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* tlsCertToEntry: the entry of one certificate a peer presented */
static void
cert_entry(X509 *x, const char *addr, Entry *e)
{
	unsigned char md[32];
	unsigned int mdlen;
	X509_NAME  *subj = X509_get_subject_name(x);
	int			i = -1,
				last = -1;
	BIO		   *b;
	char	   *data;
	long		len;
	BIGNUM	   *bn;
	EVP_PKEY   *pk = X509_get0_pubkey(x);
	GENERAL_NAMES *gens;

	memset(e, 0, sizeof(*e));
	X509_digest(x, EVP_sha256(), md, &mdlen);
	for (unsigned int k = 0; k < mdlen; k++)
		sprintf(e->fingerprint + 2 * k, "%02x", md[k]);
	while ((i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) >= 0)
		last = i;				/* Go keeps the last CN */
	if (last >= 0)
	{
		unsigned char *utf8 = NULL;
		int			n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, last)));

		e->common_name = strndup(n > 0 ? (char *) utf8 : "", n > 0 ? n : 0);
		OPENSSL_free(utf8);
	}
	else
		e->common_name = strdup("");
	gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	if (gens)
	{
		size_t		cap = 3,
					used = 1;

		e->sans = malloc(cap);
		strcpy(e->sans, "{");
		for (int k = 0; k < sk_GENERAL_NAME_num(gens); k++)
		{
			GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, k);
			const char *s;
			int			n;

			if (g->type != GEN_DNS)
				continue;
			s = (const char *) ASN1_STRING_get0_data(g->d.dNSName);
			n = ASN1_STRING_length(g->d.dNSName);
			cap = used + n + 8;
			e->sans = realloc(e->sans, cap);
			used += sprintf(e->sans + used, "%s\"%.*s\"", used > 1 ? "," : "", n, s);
		}
		strcat(e->sans, "}");
		if (used == 1)
		{
			free(e->sans);
			e->sans = NULL;		/* lib/pq sends a nil slice as NULL */
		}
		GENERAL_NAMES_free(gens);
	}
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	data = BN_bn2hex(bn);
	for (char *c = data; *c; c++)
		*c = (*c >= 'A' && *c <= 'F') ? *c - 'A' + 'a' : *c;
	{
		char	   *d = data;

		while (d[0] == '0' && d[1])
			d++;				/* SerialNumber.Text(16): no leading zeros */
		e->serial = strdup(d);
	}
	OPENSSL_free(data);
	BN_free(bn);
	e->issuer_dn = name_text(X509_get_issuer_name(x));
	e->subject_dn = name_text(subj);
	time_text(X509_get0_notBefore(x), e->not_before);
	time_text(X509_get0_notAfter(x), e->not_after);
	switch (pk ? EVP_PKEY_get_base_id(pk) : 0)
	{
		case EVP_PKEY_RSA:
			e->key_algorithm = "RSA";
			break;
		case EVP_PKEY_EC:
			e->key_algorithm = "ECDSA";
			break;
		case EVP_PKEY_ED25519:
			e->key_algorithm = "Ed25519";
			break;
		default:
			e->key_algorithm = "0";
	}
	sprintf(e->key_size, "%d", pk && e->key_algorithm[0] != '0' ? EVP_PKEY_get_bits(pk) : 0);
	e->is_ca = (X509_get_extension_flags(x) & EXFLAG_CA) != 0;	/* basicConstraints cA */
	b = BIO_new(BIO_s_mem());
	PEM_write_bio_X509(b, x);
	len = BIO_get_mem_data(b, &data);
	e->pem = strndup(data, len);
	BIO_free(b);
	e->source_path = addr;
}

/* probeTLS: connect + TLS handshake within timeout_ms, the peer's certificates read, the connection closed */
static void
probe(Endpoint *ep)
{
	double		deadline = mono() + timeout_ms / 1000.0;
	int			fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	SSL		   *ssl = NULL;
	int			err = 0;
	socklen_t	len = sizeof(err);

	if (fd < 0)
	{
		snprintf(ep->error, sizeof(ep->error), "dial tcp %s: socket: %s", ep->addr, strerror(errno));
		return;
	}
	if (connect(fd, (struct sockaddr *) &ep->sa, sizeof(ep->sa)) < 0)
	{
		if (errno != EINPROGRESS)
		{
			snprintf(ep->error, sizeof(ep->error), "dial tcp %s: connect: %s", ep->addr, strerror(errno));
			goto done;
		}
		if (!wait_fd(fd, POLLOUT, deadline))
		{
			snprintf(ep->error, sizeof(ep->error), "dial tcp %s: i/o timeout", ep->addr);
			goto done;
		}
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0)
		{
			snprintf(ep->error, sizeof(ep->error), "dial tcp %s: connect: %s", ep->addr, strerror(err));
			goto done;
		}
	}
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	for (;;)
	{
		int			rc = SSL_connect(ssl);
		int			e;

		if (rc == 1)
			break;
		e = SSL_get_error(ssl, rc);
		if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) ||
			!wait_fd(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline))
		{
			snprintf(ep->error, sizeof(ep->error), e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ?
					 "%s: i/o timeout" : "%s: remote error: handshake failure", ep->addr);
			ERR_clear_error();
			goto done;
		}
	}
	{
		STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);

		ep->nentries = chain ? sk_X509_num(chain) : 0;
		ep->entries = calloc(ep->nentries + 1, sizeof(Entry));
		for (int i = 0; i < ep->nentries; i++)
			cert_entry(sk_X509_value(chain, i), ep->addr, &ep->entries[i]);
	}
	SSL_shutdown(ssl);			/* conn.Close(): close_notify */
done:
	if (ssl)
		SSL_free(ssl);
	ERR_clear_error();
	close(fd);
}

/* one of the pool: takes the next endpoint until none is left */
static void *
pool_worker(void *arg)
{
	(void) arg;
	for (;;)
	{
		int			i;

		pthread_mutex_lock(&next_lock);
		i = next_ep < neps ? next_ep++ : -1;
		pthread_mutex_unlock(&next_lock);
		if (i < 0)
			return NULL;
		probe(&eps[i]);
	}
}

/* expandCIDR, without the reserved-address filter: a CIDR (at most 12 host bits) or a single IPv4 address */
static int
expand_cidr(const char *cidr, unsigned int **out)
{
	char		ip[64];
	const char *slash = strchr(cidr, '/');
	struct in_addr a;
	int			bits = 32,
				n = 0;
	unsigned int base;

	snprintf(ip, sizeof(ip), "%.*s", slash ? (int) (slash - cidr) : (int) strlen(cidr), cidr);
	if (inet_pton(AF_INET, ip, &a) != 1)
		return 0;
	if (slash)
		bits = atoi(slash + 1);
	if (32 - bits > 12)
		return 0;				/* more than 4096 hosts: skipped */
	base = ntohl(a.s_addr) & (bits == 0 ? 0 : ~0u << (32 - bits));
	n = 1 << (32 - bits);
	*out = malloc(sizeof(unsigned int) * n);
	for (int i = 0; i < n; i++)
		(*out)[i] = base + i;
	if (n > 2)
	{
		memmove(*out, *out + 1, sizeof(unsigned int) * (n - 2));
		n -= 2;					/* network and broadcast */
	}
	return n;
}

/* Parses a PostgreSQL array literal of plain elements ({a,b,c}) into its elements; free *out and (*out)[0]. */
static int
split_array(const char *lit, char ***out)
{
	char	   *s = strdup(lit + 1);
	int			n = 0;

	s[strlen(s) - 1] = '\0';
	*out = malloc(sizeof(char *) * (strlen(lit) + 1));
	(*out)[0] = s;
	for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ","))
		(*out)[n++] = tok;
	return n;
}

/* JSON array of the target's CIDRs (plain strings) */
static char *
json_strings(char **v, int n)
{
	size_t		cap = 16;
	char	   *out;

	for (int i = 0; i < n; i++)
		cap += strlen(v[i]) + 4;
	out = malloc(cap);
	strcpy(out, "[");
	for (int i = 0; i < n; i++)
		sprintf(out + strlen(out), "%s\"%s\"", i ? "," : "", v[i]);
	strcat(out, "]");
	return out;
}

int
main(int argc, char **argv)
{
	int			concurrency = argc > 2 ? atoi(argv[2]) : 50;
	long		t_endpoints = 0,
				t_ok = 0,
				t_failed = 0,
				t_certs = 0,
				t_new = 0;
	double		t0,
				probe_s = 0;
	PGresult   *targets;
	struct rusage ru;

	if (argc < 2 || concurrency < 1)
	{
		fprintf(stderr, "usage: certctl_scan CONNINFO [CONCURRENCY]\n");
		return 2;
	}
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "certctl_scan: %s", PQerrorMessage(conn));
		return 1;
	}
	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);	/* InsecureSkipVerify */
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);	/* Go's client defaults: TLS 1.2 and 1.3 */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

	t0 = mono();
	/* networkScanRepo.ListEnabled */
	targets = q("SELECT id, name, cidrs, ports, enabled, scan_interval_hours, timeout_ms, last_scan_at, "
				"last_scan_duration_ms, last_scan_certs_found, created_at, updated_at FROM network_scan_targets "
				"WHERE enabled = TRUE ORDER BY created_at DESC", 0, NULL);
	for (int t = 0; t < PQntuples(targets); t++)
	{
		double		start = mono();
		char	  **cidrs,
				  **ports;
		int			ncidrs = split_array(PQgetvalue(targets, t, 2), &cidrs);
		int			nports = split_array(PQgetvalue(targets, t, 3), &ports);
		int			found = 0,
					failed = 0,
					fresh = 0;
		pthread_t  *pool;
		int			nthreads;
		char		now[32],
					dur[16],
					count[16],
					upd[32];
		char		scan_id[64];

		timeout_ms = atoi(PQgetvalue(targets, t, 6));
		/* expandEndpoints: per CIDR, per address, per port */
		eps = calloc(1, sizeof(Endpoint));
		neps = 0;
		for (int c = 0; c < ncidrs; c++)
		{
			unsigned int *ips = NULL;
			int			n = expand_cidr(cidrs[c], &ips);

			eps = realloc(eps, sizeof(Endpoint) * (neps + n * nports + 1));
			for (int i = 0; i < n; i++)
				for (int p = 0; p < nports; p++)
				{
					Endpoint   *ep = &eps[neps++];
					char		ip[INET_ADDRSTRLEN];
					struct in_addr a = {htonl(ips[i])};

					memset(ep, 0, sizeof(*ep));
					inet_ntop(AF_INET, &a, ip, sizeof(ip));
					snprintf(ep->addr, sizeof(ep->addr), "%s:%s", ip, ports[p]);
					ep->sa.sin_family = AF_INET;
					ep->sa.sin_addr = a;
					ep->sa.sin_port = htons(atoi(ports[p]));
				}
			free(ips);
		}
		/* scanEndpoints: at most CONCURRENCY probes at once */
		next_ep = 0;
		nthreads = concurrency < neps ? concurrency : neps;
		pool = malloc(sizeof(pthread_t) * (nthreads + 1));
		for (int i = 0; i < nthreads; i++)
			pthread_create(&pool[i], NULL, pool_worker, NULL);
		for (int i = 0; i < nthreads; i++)
			pthread_join(pool[i], NULL);
		free(pool);
		probe_s += mono() - start;
		/* collectScanResults */
		for (int i = 0; i < neps; i++)
			if (eps[i].error[0])
				failed++;
			else
				found += eps[i].nentries;
		sprintf(dur, "%d", (int) ((mono() - start) * 1000));
		sprintf(count, "%d", found);
		{
			/* networkScanRepo.UpdateScanResults: always */
			const char *p[] = {wall_now(now), dur, count, wall_now(upd), PQgetvalue(targets, t, 0)};

			PQclear(q("UPDATE network_scan_targets SET last_scan_at = $1, last_scan_duration_ms = $2, "
					  "last_scan_certs_found = $3, updated_at = $4 WHERE id = $5", 5, p));
		}
		if (found > 0)
		{
			/* ProcessDiscoveryReport: the scan row, one upsert per certificate, the audit event */
			char		errs[16],
						started[32],
						audit_id[64];
			char	   *dirs = json_strings(cidrs, ncidrs);
			char	   *details = malloc(strlen(dirs) + 256);
			struct timespec ts;
			struct tm	tm;

			wall_now(now);
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec -= atoi(dur) / 1000;
			gmtime_r(&ts.tv_sec, &tm);
			strftime(started, sizeof(started), "%Y-%m-%d %H:%M:%S+00", &tm);
			sprintf(errs, "%d", failed);
			{
				const char *p[] = {gen_id("dscan", scan_id), "server-scanner", PQgetvalue(targets, t, 2), count,
					"0", errs, dur,
				started, now};

				PQclear(q("INSERT INTO discovery_scans (id, agent_id, directories, certificates_found, "
						  "certificates_new, errors_count, scan_duration_ms, started_at, completed_at) "
						  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING", 9, p));
			}
			for (int i = 0; i < neps; i++)
				for (int k = 0; k < eps[i].nentries && !eps[i].error[0]; k++)
				{
					Entry	   *e = &eps[i].entries[k];
					char		id[64];
					const char *p[] = {gen_id("dcert", id), e->fingerprint, e->common_name, e->sans, e->serial,
						e->issuer_dn, e->subject_dn, e->not_before, e->not_after, e->key_algorithm, e->key_size,
						e->is_ca ? "true" : "false", e->pem, e->source_path, "network", "server-scanner", scan_id,
					"Unmanaged", now, now, now, now};
					PGresult   *r = q("INSERT INTO discovered_certificates (id, fingerprint_sha256, common_name, "
									  "sans, serial_number, issuer_dn, subject_dn, not_before, not_after, "
									  "key_algorithm, key_size, is_ca, pem_data, source_path, source_format, "
									  "agent_id, discovery_scan_id, status, first_seen_at, last_seen_at, "
									  "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
									  "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) "
									  "ON CONFLICT (fingerprint_sha256, agent_id, source_path) DO UPDATE SET "
									  "last_seen_at = EXCLUDED.last_seen_at, discovery_scan_id = "
									  "EXCLUDED.discovery_scan_id, updated_at = NOW() RETURNING (xmax = 0) AS is_new",
									  22, p);

					fresh += strcmp(PQgetvalue(r, 0, 0), "t") == 0;
					PQclear(r);
				}
			sprintf(details, "{\"agent_id\":\"server-scanner\",\"certificates_found\":%d,\"certificates_new\":%d,"
					 "\"directories\":%s,\"errors_count\":%d}", found, fresh, dirs, failed);
			{
				const char *p[] = {gen_id("audit", audit_id), "server-scanner", "System", "discovery_scan_completed",
				"discovery_scan", scan_id, details, wall_now(now)};

				PQclear(q("INSERT INTO audit_events (id, actor, actor_type, action, resource_type, resource_id, "
						  "details, timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", 8, p));
			}
			free(dirs);
			free(details);
		}
		t_endpoints += neps;
		t_ok += neps - failed;
		t_failed += failed;
		t_certs += found;
		t_new += fresh;
		for (int i = 0; i < neps; i++)
		{
			for (int k = 0; k < eps[i].nentries; k++)
			{
				Entry	   *e = &eps[i].entries[k];

				free(e->common_name);
				free(e->sans);
				free(e->serial);
				free(e->issuer_dn);
				free(e->subject_dn);
				free(e->pem);
			}
			free(eps[i].entries);
		}
		free(eps);
		free(cidrs[0]);
		free(cidrs);
		free(ports[0]);
		free(ports);
	}
	getrusage(RUSAGE_SELF, &ru);
	printf("%d %ld %ld %ld %ld %ld %.6f %.6f %.3f\n", PQntuples(targets), t_endpoints, t_ok, t_failed, t_certs, t_new,
		   mono() - t0, probe_s,
		   ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	PQclear(targets);
	PQfinish(conn);
	SSL_CTX_free(ctx);
	return 0;
}
