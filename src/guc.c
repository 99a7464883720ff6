/*-------------------------------------------------------------------------
 *
 * guc.c
 *		certctl_sched's settings: their definitions, check hooks, and the
 *		parsing of certctl_sched.database.
 *
 * Restart-only settings (database, role) are defined only while the
 * library is preloaded; the others are defined wherever it is loaded, so
 * that run_loop() and the bodies see the same values as the workers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "compat.h"
#include "certctl_sched.h"
#include "io.h"

char	   *certctl_sched_database = NULL;
char	   *certctl_sched_role = NULL;
bool		certctl_sched_enabled = true;
int			certctl_sched_interval_ms[CERTCTL_SCHED_NLOOPS];
int			certctl_sched_timeout_ms[CERTCTL_SCHED_NLOOPS];
int			certctl_sched_shutdown_timeout_ms = 30000;
int			certctl_sched_batch_size = 1000;
char	   *certctl_sched_certctl_schema = NULL;
int			certctl_sched_history_retention_s = 7 * 24 * 3600;
int			certctl_sched_certctl_version = CERTCTL_VERSION_AUTO;
static bool delivering_notifications = false;

/* certctl_sched.certctl_version: which certctl's rules apply where the schema has no marker */
static const struct config_enum_entry certctl_version_options[] = {
	{"auto", CERTCTL_VERSION_AUTO, false},
	{"4d59fd1", CERTCTL_VERSION_4D59FD1, false},
	{"head", CERTCTL_VERSION_HEAD, false},
	{NULL, 0, false}
};

/* names and descriptions of the per-loop settings; GUC keeps pointers to them */
static char interval_names[CERTCTL_SCHED_NLOOPS][64];
static char timeout_names[CERTCTL_SCHED_NLOOPS][64];
static char interval_descs[CERTCTL_SCHED_NLOOPS][128];
static char timeout_descs[CERTCTL_SCHED_NLOOPS][128];

/* Rejects 0 and values below -1 for a loop interval. */
static bool
check_interval(int *newval, void **extra, GucSource source)
{
	if (*newval == 0 || *newval < -1)
	{
		GUC_check_errdetail("A loop interval must be positive, or -1 to disable the loop.");
		return false;
	}
	return true;
}

/* Rejects anything that is not a plain schema name. */
static bool
check_schema_name(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("The schema name must not be empty.");
		return false;
	}
	if (strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("The schema name must be shorter than %d bytes.", NAMEDATALEN);
		return false;
	}
	return true;
}

/*
 * Splits a value of certctl_sched.database into database names.  Returns how
 * many there are (at least one), or -1 with the reason in why when the list
 * is malformed, empty, has an empty or too long entry, a duplicate, or more
 * than CERTCTL_SCHED_MAX_DATABASES entries.
 */
int
certctl_sched_parse_databases(const char *value, char names[][NAMEDATALEN], char *why, size_t whylen)
{
	char	   *raw;
	List	   *elems;
	ListCell   *lc;
	int			n = 0;

	if (value == NULL || value[0] == '\0')
	{
		snprintf(why, whylen, "At least one database name is required.");
		return -1;
	}
	raw = pstrdup(value);
	if (!SplitIdentifierString(raw, ',', &elems))
	{
		snprintf(why, whylen, "The value must be a comma-separated list of database names.");
		return -1;
	}
	foreach(lc, elems)
	{
		const char *name = (const char *) lfirst(lc);

		if (name[0] == '\0')
		{
			snprintf(why, whylen, "Database names must not be empty.");
			return -1;
		}
		if (strlen(name) >= NAMEDATALEN)
		{
			snprintf(why, whylen, "Database name \"%s\" is longer than %d bytes.", name, NAMEDATALEN - 1);
			return -1;
		}
		if (n >= CERTCTL_SCHED_MAX_DATABASES)
		{
			snprintf(why, whylen, "At most %d databases can be listed.", CERTCTL_SCHED_MAX_DATABASES);
			return -1;
		}
		for (int i = 0; i < n; i++)
			if (strcmp(names[i], name) == 0)
			{
				snprintf(why, whylen, "Database \"%s\" is listed twice.", name);
				return -1;
			}
		strlcpy(names[n++], name, NAMEDATALEN);
	}
	return n;
}

/*
 * Check hook of certctl_sched.database: the whole list must be valid, so
 * that ALTER SYSTEM refuses what the next server start could not use.  At
 * preload the value has already been checked by init.c, which says what is
 * wrong in a log line of its own and starts no workers.
 */
static bool
check_database(char **newval, void **extra, GucSource source)
{
	char		names[CERTCTL_SCHED_MAX_DATABASES][NAMEDATALEN];
	char		why[256];

	if (process_shared_preload_libraries_in_progress)
		return true;
	if (certctl_sched_parse_databases(*newval, names, why, sizeof(why)) < 0)
	{
		GUC_check_errdetail("%s", why);
		return false;
	}
	return true;
}

/* Defines the interval and timeout settings of each loop. */
static void
define_loop_settings(void)
{
	for (int i = 0; i < CERTCTL_SCHED_NLOOPS; i++)
	{
		const LoopDef *def = &certctl_sched_loops[i];

		snprintf(interval_names[i], sizeof(interval_names[i]), "certctl_sched.%s_interval", def->name);
		snprintf(interval_descs[i], sizeof(interval_descs[i]), "Sets the interval between %s runs.", def->title);
		snprintf(timeout_names[i], sizeof(timeout_names[i]), "certctl_sched.%s_timeout", def->name);
		snprintf(timeout_descs[i], sizeof(timeout_descs[i]), "Sets the time limit of one %s run.", def->title);

		DefineCustomIntVariable(interval_names[i], interval_descs[i],
								"-1 disables the loop.",
								&certctl_sched_interval_ms[i], def->default_interval_ms,
								-1, INT_MAX,
								PGC_SIGHUP, GUC_UNIT_MS,
								check_interval,
								NULL, NULL);
		DefineCustomIntVariable(timeout_names[i], timeout_descs[i],
								"The run is cancelled and rolled back when it takes longer. 0 means no limit.",
								&certctl_sched_timeout_ms[i], def->default_timeout_ms,
								0, INT_MAX,
								PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	}
}

/* Defines the settings that can change at reload. */
static void
define_reloadable_settings(void)
{
	DefineCustomBoolVariable("certctl_sched.enabled",
							 "Enables the certctl_sched loops.",
							 "When off, every worker stays idle.",
							 &certctl_sched_enabled, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	define_loop_settings();
	DefineCustomIntVariable("certctl_sched.shutdown_timeout",
							"Sets how long a worker may finish its current transaction after SIGTERM.",
							"Past it the transaction is cancelled and rolled back.",
							&certctl_sched_shutdown_timeout_ms, 30000,
							0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("certctl_sched.batch_size",
							"Sets the number of rows a loop body handles per transaction.",
							NULL,
							&certctl_sched_batch_size, 1000,
							1, 1000000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("certctl_sched.certctl_schema",
							   "Sets the schema that holds certctl's tables.",
							   NULL,
							   &certctl_sched_certctl_schema, "public",
							   PGC_SUSET, 0, check_schema_name, NULL, NULL);
	DefineCustomEnumVariable("certctl_sched.certctl_version",
							 "Sets which certctl version's rules the loops follow where certctl's schema has no marker.",
							 "auto infers it from the schema: today's certctl (head) when it has a column of a migration after 000014, "
							 "else 4d59fd1.",
							 &certctl_sched_certctl_version, CERTCTL_VERSION_AUTO, certctl_version_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("certctl_sched.history_retention",
							"Sets how long run history is kept.",
							"-1 keeps it forever.",
							&certctl_sched_history_retention_s, 7 * 24 * 3600,
							-1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
}

/* Rejects a proxy that is not an http://, https:// or socks URL. */
static bool
check_proxy(char **newval, void **extra, GucSource source)
{
	static const char *const schemes[] = {"http://", "https://", "socks4://", "socks4a://", "socks5://", "socks5h://"};

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	for (int i = 0; i < (int) lengthof(schemes); i++)
		if (pg_strncasecmp(*newval, schemes[i], strlen(schemes[i])) == 0 && (*newval)[strlen(schemes[i])] != '\0')
			return true;
	GUC_check_errdetail("A proxy is an http://, https://, socks4://, socks4a://, socks5:// or socks5h:// URL, or empty.");
	return false;
}

/* Rejects a CA file name that is not an absolute path. */
static bool
check_ca_file(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0' || is_absolute_path(*newval))
		return true;
	GUC_check_errdetail("The CA file must be given as an absolute path, or empty.");
	return false;
}

/*
 * Rejects a list of networks (comma-separated CIDRs or addresses, spaces
 * allowed) that has an entry PostgreSQL's inet type would not read.
 */
static bool
check_networks(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	char	   *entry;
	char	   *save = NULL;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	copy = pstrdup(*newval);
	for (entry = strtok_r(copy, ", ", &save); entry != NULL; entry = strtok_r(NULL, ", ", &save))
	{
		unsigned char buf[16];

		if (pg_inet_net_pton(strchr(entry, ':') ? PGSQL_AF_INET6 : PGSQL_AF_INET, entry, buf, -1) < 0)
		{
			GUC_check_errdetail("\"%s\" is not a network (CIDR) or an IP address.", entry);
			pfree(copy);
			return false;
		}
	}
	pfree(copy);
	return true;
}

/* Defines the settings of the loops that talk to the network. */
static void
define_network_settings(void)
{
	DefineCustomBoolVariable("certctl_sched.delivering_notifications",
							 "Set by the notifications loop while it records deliveries (see notification_delivery_guard()).",
							 NULL,
							 &delivering_notifications, false,
							 PGC_USERSET, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("certctl_sched.notifications_concurrency",
							"Sets how many notifications are sent at once.",
							"A batch claims four times as many; one channel gets at most half of them.",
							&certctl_sched_notifications_concurrency, 16,
							1, 256,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("certctl_sched.notifications_request_timeout",
							"Sets the time limit of one notification request, connection included.",
							NULL,
							&certctl_sched_notifications_request_timeout_ms, 10000,
							100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("certctl_sched.network_scan_concurrency",
							"Sets how many TLS handshakes the network scan runs at once.",
							"Fewer run when the server's file descriptors run out (max_files_per_process).",
							&certctl_sched_network_scan_concurrency, 256,
							1, 4096,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("certctl_sched.network_scan_allowed_networks",
							   "Sets the networks the network scan may probe.",
							   "A comma-separated list of CIDRs; empty means every address that is not reserved.",
							   &certctl_sched_network_scan_allowed_networks, "",
							   PGC_SUSET, GUC_LIST_INPUT, check_networks, NULL, NULL);
	DefineCustomBoolVariable("certctl_sched.allow_loopback",
							 "Lets the network loops connect to loopback addresses.",
							 "Link-local, multicast, broadcast and unspecified addresses stay refused.",
							 &certctl_sched_allow_loopback, false,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("certctl_sched.http_proxy",
							   "Sets the proxy of the notifications' HTTP requests.",
							   "Empty means none; the server's environment (http_proxy etc.) is ignored.",
							   &certctl_sched_http_proxy, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY, check_proxy, NULL, NULL);
	DefineCustomStringVariable("certctl_sched.ca_file",
							   "Sets a file of CA certificates trusted besides the system's.",
							   "Empty means the system's CA store only.",
							   &certctl_sched_ca_file, "",
							   PGC_SUSET, 0, check_ca_file, NULL, NULL);
}

/*
 * Defines every setting; the restart-only ones only when preloading (they
 * are read before any worker starts), and reserves the certctl_sched prefix.
 */
void
certctl_sched_define_settings(bool preloading)
{
	define_reloadable_settings();
	define_network_settings();
	if (preloading)
	{
		DefineCustomStringVariable("certctl_sched.database",
								   "Sets the database(s) the loops run in.",
								   "A comma-separated list; each database gets one worker per loop.",
								   &certctl_sched_database, "postgres",
								   PGC_POSTMASTER, 0, check_database, NULL, NULL);
		DefineCustomStringVariable("certctl_sched.role",
								   "Sets the role the workers connect as.",
								   "Empty means the bootstrap superuser.",
								   &certctl_sched_role, "",
								   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	}
	MarkGUCPrefixReserved("certctl_sched");
}

/* Returns an interval Datum of ms milliseconds (in the current memory context). */
Datum
certctl_sched_ms_interval(int ms)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = (int64) ms * 1000;
	return IntervalPGetDatum(iv);
}
