/*
 * bench/certctl_algo.c: certctl's own scheduler loop algorithm, as a libpq client (the benchmark's baseline)
 *
 * Replays the per-row query sequence of certctl's Go server at commit 4d59fd1 (see docs/loops.md):
 * one candidate SELECT, then per certificate / job / agent one autocommit statement per round trip over
 * the local socket, as certctl's repositories do.  It keeps certctl's query shapes and order, not its bugs' effects.
 *
 * usage: certctl_algo CONNINFO renewal|job_processor|agent_health NOW [STRIDE]
 *   NOW     the run's time (certctl uses time.Now(); a fixed time makes both sides work on the same rows)
 *   STRIDE  process only every STRIDE-th candidate (a sample for very large tables); default 1
 * prints one line: "<candidates> <examined> <statements> <seconds> <seconds of the candidate SELECT>"
 * (with a STRIDE, the full run takes about select + (seconds - select) * STRIDE)
 *
 * build: cc -O2 -o certctl_algo certctl_algo.c -I$(pg_config --includedir) -L$(pg_config --libdir) -lpq
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <libpq-fe.h>

static PGconn *conn;
static long statements;
static long id_counter;
static const char *run_now;	/* the run's time as text */
static double t_select;			/* when the candidate SELECT had returned */

static double
now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One statement, one round trip (extended protocol, like Go's database/sql); exits on error. */
static PGresult *
q(const char *sql, int n, const char *const *params)
{
	PGresult   *r = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);

	statements++;
	if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "certctl_algo: %s\n%s\n", PQerrorMessage(conn), sql);
		exit(1);
	}
	return r;
}

static void
qx(const char *sql, int n, const char *const *params)
{
	PQclear(q(sql, n, params));
}

static const char *
val(PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
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

static void
audit(const char *action, const char *rtype, const char *rid, const char *details)
{
	char		id[64];
	const char *p[] = {gen_id("audit", id), "system", "System", action, rtype, rid, details, run_now};

	qx("INSERT INTO audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp) "
	   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id", 8, p);
}

/* NotificationService.Send*: owner e-mail lookup, INSERT pending, then the inline "send" (no Email notifier) */
static void
notify(const char *type, const char *cert_id, const char *owner_id, const char *message)
{
	char		id[64];
	const char *po[] = {owner_id};
	PGresult   *o = q("SELECT id, name, email, team_id, created_at, updated_at FROM owners WHERE id = $1", 1, po);
	const char *rcpt = (PQntuples(o) == 1 && *PQgetvalue(o, 0, 2)) ? PQgetvalue(o, 0, 2) : owner_id;
	const char *p[] = {gen_id("notif", id), type, cert_id, "Email", rcpt, message, NULL, "pending", NULL};
	const char *ps[] = {"sent", run_now, id};

	qx("INSERT INTO notification_events (id, type, certificate_id, channel, recipient, message, sent_at, status, "
	   "error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", 9, p);
	qx("UPDATE notification_events SET status = $1, sent_at = $2 WHERE id = $3", 3, ps);
	PQclear(o);
}

#define CERT_COLS "id, name, common_name, sans, environment, owner_id, team_id, issuer_id, renewal_policy_id, " \
	"certificate_profile_id, status, expires_at, tags, last_renewal_at, last_deployment_at, revoked_at, " \
	"revocation_reason, created_at, updated_at"

/* postgres/certificate.go Update: every column rewritten from the copy read earlier */
static void
cert_update(PGresult *r, int i, const char *status)
{
	const char *p[] = {val(r, i, 1), val(r, i, 2), val(r, i, 3), val(r, i, 4), val(r, i, 5), val(r, i, 6),
		val(r, i, 7), val(r, i, 9), status, val(r, i, 11), val(r, i, 12), val(r, i, 13), val(r, i, 14),
	val(r, i, 15), val(r, i, 16), run_now, val(r, i, 0)};

	qx("UPDATE managed_certificates SET name=$1, common_name=$2, sans=$3, environment=$4, owner_id=$5, team_id=$6, "
	   "issuer_id=$7, certificate_profile_id=$8, status=$9, expires_at=$10, tags=$11, last_renewal_at=$12, "
	   "last_deployment_at=$13, revoked_at=$14, revocation_reason=$15, updated_at=$16 WHERE id=$17", 17, p);
}

static int
in_registry(const char *issuer)
{
	static const char *const reg[] = {"iss-local", "iss-acme-staging", "iss-acme-prod", "iss-stepca", "iss-openssl"};

	for (int i = 0; i < 5; i++)
		if (issuer && strcmp(issuer, reg[i]) == 0)
			return 1;
	return 0;
}

/* EffectiveAlertThresholds: a non-empty JSON int array, else [30,14,7,0] */
static int
parse_thresholds(const char *json, int *t)
{
	int			n = 0;
	const char *s = json;
	char	   *end;

	if (!s || *s++ != '[')
		goto dflt;
	while (n < 16)
	{
		while (*s == ' ')
			s++;
		if (*s == ']')
			break;
		t[n++] = (int) strtol(s, &end, 10);
		if (end == s)
			goto dflt;
		for (s = end; *s == ' '; s++);
		if (*s == ',')
			s++;
	}
	if (n > 0)
		return n;
dflt:
	t[0] = 30, t[1] = 14, t[2] = 7, t[3] = 0;
	return 4;
}

/* §2.1 RenewalService.CheckExpiringCertificates */
static long
renewal(long *cands, int stride)
{
	const char *p[] = {run_now, "Archived"};
	PGresult   *c = q("SELECT " CERT_COLS " FROM managed_certificates "
					  "WHERE expires_at < $1::timestamptz + interval '31 days' AND status != $2 "
					  "ORDER BY expires_at ASC", 2, p);
	char		pol_id[32][64];
	int			pol_thr[32][16], pol_n[32], npol = 0;
	long		done = 0;
	const char *ep[] = {run_now};
	PGresult   *e = q("SELECT extract(epoch FROM $1::timestamptz)", 1, ep);
	double		now_epoch = atof(PQgetvalue(e, 0, 0));

	PQclear(e);
	t_select = now_sec();
	*cands = PQntuples(c);
	for (int i = 0; i < PQntuples(c); i += stride, done++)
	{
		const char *id = val(c, i, 0), *status = val(c, i, 10), *policy = val(c, i, 8);
		const char *pe[] = {val(c, i, 11)};
		PGresult   *x;
		double		days;
		int			di, k, *thr = NULL, nthr = 0, blocked = 0;
		const char *newst;
		char		buf[512], details[256], job_id[64];

		if (!strcmp(status, "RenewalInProgress") || !strcmp(status, "Archived"))
			continue;
		/* the client computes days until expiry (Go: time arithmetic in process) */
		{
			/* days until expiry, computed in the client as Go does (expires_at is text: "YYYY-MM-DD hh:mm:ss[.f]+hh") */
			struct tm	tm = {0};
			int			off = 0;
			double		frac = 0;
			char		sign = '+';

			sscanf(pe[0], "%d-%d-%d %d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
				   &tm.tm_sec);
			{
				const char *dot = strchr(pe[0], '.'), *tz = pe[0] + 19;

				if (dot)
					frac = atof(dot), tz = dot + strspn(dot + 1, "0123456789") + 1;
				sign = *tz;
				off = atoi(tz + 1);
			}
			tm.tm_year -= 1900, tm.tm_mon -= 1;
			days = ((double) timegm(&tm) + frac - (sign == '-' ? -off : off) * 3600 - now_epoch) / 86400;
		}
		di = (int) days;
		/* policy, cached per run */
		for (k = 0; k < npol; k++)
			if (!strcmp(pol_id[k], policy))
				thr = pol_thr[k], nthr = pol_n[k];
		if (!thr && npol < 32)
		{
			const char *pp[] = {policy};

			x = q("SELECT id, name, renewal_window_days, auto_renew, max_retries, retry_interval_minutes, "
				  "alert_thresholds_days, created_at, updated_at FROM renewal_policies WHERE id = $1", 1, pp);
			snprintf(pol_id[npol], 64, "%s", policy);
			pol_n[npol] = parse_thresholds(PQntuples(x) ? val(x, 0, 6) : NULL, pol_thr[npol]);
			thr = pol_thr[npol], nthr = pol_n[npol++];
			PQclear(x);
		}
		/* status transition */
		newst = days <= 0 ? "Expired" : "Expiring";
		if (strcmp(status, newst) && strcmp(status, "Revoked"))
			cert_update(c, i, newst);
		/* threshold alerts */
		for (k = 0; k < nthr; k++)
		{
			char		like[32], tstr[16];
			const char *pd[3];
			long		n;

			if (di > thr[k])
				continue;
			snprintf(like, sizeof like, "%%[threshold:%d]%%", thr[k]);
			pd[0] = id, pd[1] = "ExpirationWarning", pd[2] = like;
			x = q("SELECT COUNT(*) FROM notification_events WHERE certificate_id=$1 AND type=$2 AND message LIKE $3",
				  3, pd);
			n = atol(PQgetvalue(x, 0, 0));
			PQclear(x);
			qx("SELECT id, type, certificate_id, channel, recipient, message, sent_at, status, error "
			   "FROM notification_events WHERE certificate_id=$1 AND type=$2 AND message LIKE $3 "
			   "ORDER BY sent_at DESC NULLS LAST LIMIT 1 OFFSET 0", 3, pd);
			if (n > 0)
				continue;
			snprintf(tstr, sizeof tstr, "%d", thr[k]);
			if (thr[k] <= 0)
				snprintf(buf, sizeof buf, "[EXPIRED] The certificate for %s has expired (%.10s).\n\n"
						 "Immediate action required.\n\n[threshold:%d]", val(c, i, 2), pe[0], thr[k]);
			else
				snprintf(buf, sizeof buf, "The certificate for %s will expire in %d days (%.10s).\n\n"
						 "Please schedule renewal.\n\n[threshold:%d]", val(c, i, 2), di, pe[0], thr[k]);
			notify("ExpirationWarning", id, val(c, i, 5), buf);
			snprintf(details, sizeof details, "{\"threshold_days\":%d,\"days_until_expiry\":%d}", thr[k], di);
			audit("expiration_alert_sent", "certificate", id, details);
		}
		/* renewal job */
		if (!in_registry(val(c, i, 7)))
			continue;
		{
			const char *pj[] = {id};

			x = q("SELECT id, type, certificate_id, target_id, status, attempts, max_attempts, last_error, "
				  "scheduled_at, started_at, completed_at, created_at FROM jobs WHERE certificate_id = $1 "
				  "ORDER BY created_at DESC", 1, pj);
			for (k = 0; k < PQntuples(x); k++)
				if (!strcmp(PQgetvalue(x, k, 1), "Renewal") &&
					(!strcmp(PQgetvalue(x, k, 4), "Pending") || !strcmp(PQgetvalue(x, k, 4), "Running")))
					blocked = 1;
			PQclear(x);
		}
		if (blocked)
			continue;
		{
			const char *pi[] = {gen_id("job", job_id), "Renewal", id, NULL, "Pending", "0", "3", NULL, run_now,
			NULL, NULL, run_now};

			qx("INSERT INTO jobs (id, type, certificate_id, target_id, status, attempts, max_attempts, last_error, "
			   "scheduled_at, started_at, completed_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
			   "$10, $11, $12) RETURNING id", 12, pi);
		}
		cert_update(c, i, "RenewalInProgress");
		snprintf(details, sizeof details, "{\"days_until_expiry\":%f,\"job_id\":\"%s\"}", days, job_id);
		audit("renewal_job_created", "certificate", id, details);
	}
	PQclear(c);
	return done;
}

static void
job_status(const char *id, const char *status, const char *err)
{
	const char *p[] = {status, err, id};

	qx("UPDATE jobs SET status = $1, last_error = $2 WHERE id = $3", 3, p);
}

/* §2.2 JobService.ProcessPendingJobs, agent key-generation mode */
static long
job_processor(long *cands, int stride)
{
	const char *p[] = {"Pending"};
	PGresult   *j = q("SELECT id, type, certificate_id, target_id, status, attempts, max_attempts, last_error, "
					  "scheduled_at, started_at, completed_at, created_at FROM jobs WHERE status = $1 "
					  "ORDER BY created_at DESC", 1, p);
	long		done = 0;

	t_select = now_sec();
	*cands = PQntuples(j);
	for (int i = 0; i < PQntuples(j); i += stride, done++)
	{
		const char *id = val(j, i, 0), *type = val(j, i, 1), *pc[] = {val(j, i, 2)};
		int			deploy = !strcmp(type, "Deployment");
		PGresult   *c;
		char		details[256];

		if (!deploy && strcmp(type, "Renewal") && strcmp(type, "Issuance"))
			continue;			/* Validation / unknown: error logged, status unchanged */
		job_status(id, "Running", NULL);
		c = q("SELECT " CERT_COLS " FROM managed_certificates WHERE id = $1", 1, pc);
		if (PQntuples(c) != 1)
			job_status(id, "Failed", "certificate fetch failed: not found");
		else if (!deploy && !in_registry(val(c, 0, 7)))
			job_status(id, "Failed", "issuer connector not found");
		else if (!deploy)
		{
			job_status(id, "AwaitingCSR", NULL);
			cert_update(c, 0, "RenewalInProgress");
			snprintf(details, sizeof details, "{\"job_id\":\"%s\",\"keygen_mode\":\"agent\"}", id);
			audit("renewal_awaiting_csr", "job", id, details);
		}
		else if (!val(j, i, 3))
			job_status(id, "Failed", "target_id not found in job");
		else
		{
			const char *pt[] = {val(j, i, 3)};
			PGresult   *t = q("SELECT id, name, type, agent_id, config, enabled, created_at, updated_at "
							  "FROM deployment_targets WHERE id = $1", 1, pt);
			const char *pa[] = {PQntuples(t) ? val(t, 0, 3) : "", run_now};
			PGresult   *a = q("SELECT id, name, hostname, status, last_heartbeat_at, registered_at, api_key_hash, "
							  "os, architecture, ip_address, version, "
							  "last_heartbeat_at < $2::timestamptz - interval '5 minutes' FROM agents WHERE id = $1",
							  2, pa);

			if (PQntuples(a) != 1)
				job_status(id, "Failed", "agent fetch failed");
			else if (!strcmp(PQgetvalue(a, 0, 11), "t"))
			{
				job_status(id, "Failed", "agent is offline");
				notify("DeploymentFailure", val(c, 0, 0), val(c, 0, 5), "Deployment failed: agent is offline");
				snprintf(details, sizeof details, "{\"job_id\":\"%s\",\"reason\":\"agent offline\"}", id);
				audit("deployment_job_failed", "job", id, details);
			}
			else
			{
				snprintf(details, sizeof details, "{\"job_id\":\"%s\",\"agent_id\":\"%s\"}", id, pa[0]);
				audit("deployment_job_dispatched", "job", id, details);
			}
			PQclear(t);
			PQclear(a);
		}
		PQclear(c);
	}
	PQclear(j);
	return done;
}

/* §2.3 AgentService.MarkStaleAgentsOffline(threshold = 2 min): read all agents, filter in the client */
static long
agent_health(long *cands, int stride)
{
	const char *p[] = {run_now};
	PGresult   *a = q("SELECT id, name, hostname, status, last_heartbeat_at, registered_at, api_key_hash, os, "
					  "architecture, ip_address, version, "
					  "last_heartbeat_at < $1::timestamptz - interval '2 minutes' FROM agents "
					  "ORDER BY registered_at DESC", 1, p);
	long		done = 0;

	t_select = now_sec();
	*cands = PQntuples(a);
	for (int i = 0; i < PQntuples(a); i += stride, done++)
	{
		/* the stale test is Go's time compare on the row read; the SQL column only saves parsing here */
		if (strcmp(PQgetvalue(a, i, 3), "Online") || PQgetisnull(a, i, 4) || strcmp(PQgetvalue(a, i, 11), "t"))
			continue;
		{
			const char *pu[] = {val(a, i, 1), val(a, i, 2), "Offline", val(a, i, 4), val(a, i, 6), val(a, i, 7),
			val(a, i, 8), val(a, i, 9), val(a, i, 10), val(a, i, 0)};

			qx("UPDATE agents SET name=$1, hostname=$2, status=$3, last_heartbeat_at=$4, api_key_hash=$5, os=$6, "
			   "architecture=$7, ip_address=$8, version=$9 WHERE id=$10", 10, pu);
		}
	}
	PQclear(a);
	return done;
}

int
main(int argc, char **argv)
{
	long		cands = 0, done;
	int			stride = argc > 4 ? atoi(argv[4]) : 1;
	double		t0;

	if (argc < 4 || stride < 1)
	{
		fprintf(stderr, "usage: certctl_algo CONNINFO renewal|job_processor|agent_health NOW [STRIDE]\n");
		return 2;
	}
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "certctl_algo: %s", PQerrorMessage(conn));
		return 1;
	}
	run_now = argv[3];
	qx("SET TimeZone = 'UTC'", 0, NULL);
	statements = 0;
	t0 = now_sec();
	if (!strcmp(argv[2], "renewal"))
		done = renewal(&cands, stride);
	else if (!strcmp(argv[2], "job_processor"))
		done = job_processor(&cands, stride);
	else if (!strcmp(argv[2], "agent_health"))
		done = agent_health(&cands, stride);
	else
		return 2;
	printf("%ld %ld %ld %.6f %.6f\n", cands, done, statements, now_sec() - t0, t_select - t0);
	PQfinish(conn);
	return 0;
}
