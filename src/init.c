/*-------------------------------------------------------------------------
 *
 * init.c
 *		Module entry point: settings and the registration of one background
 *		worker per implemented loop and database.
 *
 * Only a library loaded through shared_preload_libraries can register
 * workers and shared memory.  Loaded any other way (CREATE EXTENSION in a
 * server without the preload) it still defines the reloadable settings, so
 * the loop bodies and run_loop() work, and it says plainly that the
 * scheduler itself is not running.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "replication/logicallauncher.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "compat.h"
#include "certctl_sched.h"

PG_MODULE_MAGIC;

/* seconds before the postmaster restarts a worker that exited (pg_terminate_backend, FATAL) */
#define WORKER_RESTART_SECONDS	10

char	   *certctl_sched_database = NULL;
char	   *certctl_sched_role = NULL;
bool		certctl_sched_enabled = true;
int			certctl_sched_interval_ms[CERTCTL_SCHED_NLOOPS];
int			certctl_sched_timeout_ms[CERTCTL_SCHED_NLOOPS];
int			certctl_sched_shutdown_timeout_ms = 30000;
int			certctl_sched_batch_size = 1000;
char	   *certctl_sched_certctl_schema = NULL;
int			certctl_sched_history_retention_s = 7 * 24 * 3600;
bool		certctl_sched_preloaded = false;

/* names of the per-loop settings; they must outlive _PG_init */
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

/*
 * Check hook for the loops without a body in this version (notifications,
 * network_scan): only -1 is accepted.
 */
static bool
check_interval_no_body(int *newval, void **extra, GucSource source)
{
	if (*newval != -1)
	{
		GUC_check_errdetail("This loop is not implemented in this version of certctl_sched; its interval must be -1.");
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
 * Splits certctl_sched.database into names; returns how many there are, or
 * -1 when the list is malformed or has too many or duplicate entries.
 */
int
certctl_sched_database_list(char names[][NAMEDATALEN], int max)
{
	char	   *raw;
	List	   *elems;
	ListCell   *lc;
	int			n = 0;

	if (certctl_sched_database == NULL)
		return 0;
	raw = pstrdup(certctl_sched_database);
	if (!SplitIdentifierString(raw, ',', &elems))
		return -1;
	foreach(lc, elems)
	{
		const char *name = (const char *) lfirst(lc);

		if (n >= max || strlen(name) >= NAMEDATALEN || name[0] == '\0')
			return -1;
		for (int i = 0; i < n; i++)
			if (strcmp(names[i], name) == 0)
				return -1;
		strlcpy(names[n++], name, NAMEDATALEN);
	}
	return n;
}

/* Validates certctl_sched.database at server start. */
static bool
check_database(char **newval, void **extra, GucSource source)
{
	char	   *raw;
	List	   *elems;
	int			n;

	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("At least one database name is required.");
		return false;
	}
	raw = pstrdup(*newval);
	if (!SplitIdentifierString(raw, ',', &elems))
	{
		GUC_check_errdetail("The value must be a comma-separated list of database names.");
		return false;
	}
	n = list_length(elems);
	if (n > CERTCTL_SCHED_MAX_DATABASES)
	{
		GUC_check_errdetail("At most %d databases can be listed.", CERTCTL_SCHED_MAX_DATABASES);
		return false;
	}
	return true;
}

/* Defines the settings that can change at reload (defined whether or not the library is preloaded). */
static void
define_reloadable_settings(void)
{
	DefineCustomBoolVariable("certctl_sched.enabled",
							 "Enables the certctl_sched loops.",
							 "When off, every worker stays idle.",
							 &certctl_sched_enabled, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

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
								def->body_sql ? check_interval : check_interval_no_body,
								NULL, NULL);
		DefineCustomIntVariable(timeout_names[i], timeout_descs[i],
								"The run is cancelled and rolled back when it takes longer. 0 means no limit.",
								&certctl_sched_timeout_ms[i], def->default_timeout_ms,
								0, INT_MAX,
								PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	}

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
	DefineCustomIntVariable("certctl_sched.history_retention",
							"Sets how long run history is kept.",
							"-1 keeps it forever.",
							&certctl_sched_history_retention_s, 7 * 24 * 3600,
							-1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
}

/*
 * Registers one static background worker per implemented loop for every
 * configured database.  A loop whose body this version does not have
 * (notifications, network scan) gets no process: its slot stays "disabled".
 */
static void
register_workers(int ndb, char dbnames[][NAMEDATALEN])
{
	int			implemented = 0;
	int			needed;
	int			others = (max_logical_replication_workers > 0) ? 1 : 0;

	for (int i = 0; i < CERTCTL_SCHED_NLOOPS; i++)
		if (certctl_sched_loops[i].body_sql != NULL)
			implemented++;
	needed = ndb * implemented;

	if (needed + others > max_worker_processes)
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("certctl_sched needs %d background worker slots, but max_worker_processes is %d",
						needed, max_worker_processes),
				 errdetail("certctl_sched runs %d workers for each of the %d database(s) in certctl_sched.database%s.",
						   implemented, ndb,
						   others ? ", and the logical replication launcher takes one more slot" : ""),
				 errhint("Set max_worker_processes to at least %d (plus what parallel query and other extensions need) and restart the server.",
						 needed + others)));

	for (int d = 0; d < ndb; d++)
	{
		for (int i = 0; i < CERTCTL_SCHED_NLOOPS; i++)
		{
			BackgroundWorker worker;

			if (certctl_sched_loops[i].body_sql == NULL)
				continue;
			memset(&worker, 0, sizeof(worker));
			worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
			/* never on a standby: the loops write, and advisory locks are per server */
			worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
			worker.bgw_restart_time = WORKER_RESTART_SECONDS;
			snprintf(worker.bgw_library_name, sizeof(worker.bgw_library_name), "certctl_sched");
			snprintf(worker.bgw_function_name, sizeof(worker.bgw_function_name), "certctl_sched_worker_main");
			snprintf(worker.bgw_name, BGW_MAXLEN, "certctl_sched %s worker for database %s",
					 certctl_sched_loops[i].name, dbnames[d]);
			snprintf(worker.bgw_type, BGW_MAXLEN, "certctl_sched %s", certctl_sched_loops[i].name);
			worker.bgw_main_arg = Int32GetDatum(d * CERTCTL_SCHED_NLOOPS + i);
			RegisterBackgroundWorker(&worker);
		}
	}
}

/*
 * Module load.  In the postmaster (preload) it defines every setting,
 * requests shared memory and registers the workers; elsewhere it defines the
 * reloadable settings and warns that the scheduler is not running.
 */
void
_PG_init(void)
{
	char		dbnames[CERTCTL_SCHED_MAX_DATABASES][NAMEDATALEN];
	int			ndb;

	define_reloadable_settings();

	if (!process_shared_preload_libraries_in_progress)
	{
		MarkGUCPrefixReserved("certctl_sched");
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("certctl_sched is not loaded via shared_preload_libraries, so its loops do not run"),
				 errhint("Add certctl_sched to shared_preload_libraries in postgresql.conf and restart the server.")));
		return;
	}

	DefineCustomStringVariable("certctl_sched.database",
							   "Sets the database(s) the loops run in.",
							   "A comma-separated list; each database gets one worker per implemented loop.",
							   &certctl_sched_database, "postgres",
							   PGC_POSTMASTER, 0, check_database, NULL, NULL);
	DefineCustomStringVariable("certctl_sched.role",
							   "Sets the role the loops run as.",
							   "Empty means the bootstrap superuser.",
							   &certctl_sched_role, "",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("certctl_sched");

	certctl_sched_preloaded = true;
	ndb = certctl_sched_database_list(dbnames, CERTCTL_SCHED_MAX_DATABASES);
	if (ndb <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"certctl_sched.database\": \"%s\"",
						certctl_sched_database),
				 errdetail("Database names must be distinct.")));

	certctl_sched_shmem_install_hooks(ndb * CERTCTL_SCHED_NLOOPS);
	register_workers(ndb, dbnames);
}
