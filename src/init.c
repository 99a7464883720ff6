/*-------------------------------------------------------------------------
 *
 * init.c
 *		Module entry point: defines the settings, requests the shared status
 *		and registers one background worker per loop and
 *		database.
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

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "replication/logicallauncher.h"
#include "utils/guc.h"

#include "compat.h"
#include "certctl_sched.h"

PG_MODULE_MAGIC;

/* seconds before the postmaster restarts a worker that exited (pg_terminate_backend, FATAL) */
#define WORKER_RESTART_SECONDS	10

/* Warns when max_worker_processes leaves too few slots for the workers. */
static void
check_worker_slots(int ndb)
{
	int			needed = ndb * CERTCTL_SCHED_NLOOPS;
	int			others = (max_logical_replication_workers > 0) ? 1 : 0;

	if (needed + others <= max_worker_processes)
		return;
	ereport(WARNING,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg("certctl_sched needs %d background worker slots, but max_worker_processes is %d",
					needed, max_worker_processes),
			 errdetail_plural("certctl_sched runs %d workers in %d database (certctl_sched.database)%s.",
							  "certctl_sched runs %d workers in each of %d databases (certctl_sched.database)%s.",
							  ndb, CERTCTL_SCHED_NLOOPS, ndb,
							  others ? ", and the logical replication launcher takes one more slot" : ""),
			 errhint("Set max_worker_processes to at least %d (plus what parallel query and other extensions need) and restart the server.",
					 needed + others)));
}

/* Registers the worker of one loop in one database; slotno indexes the shared status. */
static void
register_worker(const LoopDef *def, const char *dbname, int slotno)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* never on a standby: the loops write, and advisory locks are per server */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = WORKER_RESTART_SECONDS;
	snprintf(worker.bgw_library_name, sizeof(worker.bgw_library_name), "certctl_sched");
	snprintf(worker.bgw_function_name, sizeof(worker.bgw_function_name), "certctl_sched_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "certctl_sched %s worker for database %s", def->name, dbname);
	snprintf(worker.bgw_type, BGW_MAXLEN, "certctl_sched %s", def->name);
	worker.bgw_main_arg = Int32GetDatum(slotno);
	RegisterBackgroundWorker(&worker);
}

/*
 * Reads certctl_sched.database as configured and returns the databases, or
 * 0 after one log line saying why the value cannot be used.  The raw value
 * is read before the setting is defined: an invalid value of a custom
 * setting would only be warned about and replaced by the default, and the
 * loops must never run in a database nobody named.
 */
static int
configured_databases(char names[][NAMEDATALEN])
{
	const char *raw = GetConfigOption("certctl_sched.database", true, false);
	char		why[256];
	int			n;

	if (raw == NULL)
		raw = "postgres";
	n = certctl_sched_parse_databases(raw, names, why, sizeof(why));
	if (n < 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("certctl_sched starts no workers: invalid value for parameter \"certctl_sched.database\": \"%s\"",
						raw),
				 errdetail("%s", why),
				 errhint("Correct certctl_sched.database in postgresql.conf (or ALTER SYSTEM RESET it) and restart the server.")));
		return 0;
	}
	return n;
}

/*
 * Module load.  In the postmaster (preload) it defines every setting,
 * requests the shared status and registers the workers; elsewhere it
 * defines the reloadable settings and warns that the scheduler is not
 * running.
 */
void
_PG_init(void)
{
	char		dbnames[CERTCTL_SCHED_MAX_DATABASES][NAMEDATALEN];
	int			ndb;

	if (!process_shared_preload_libraries_in_progress)
	{
		certctl_sched_define_settings(false);
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("certctl_sched is not loaded via shared_preload_libraries, so its loops do not run"),
				 errhint("Add certctl_sched to shared_preload_libraries in postgresql.conf and restart the server.")));
		return;
	}

	ndb = configured_databases(dbnames);
	certctl_sched_define_settings(true);
	certctl_sched_status_request(ndb, dbnames);
	if (ndb == 0)
		return;
	check_worker_slots(ndb);
	for (int d = 0; d < ndb; d++)
		for (int i = 0; i < CERTCTL_SCHED_NLOOPS; i++)
			register_worker(&certctl_sched_loops[i], dbnames[d], d * CERTCTL_SCHED_NLOOPS + i);
}
