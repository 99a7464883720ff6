/*-------------------------------------------------------------------------
 *
 * status.c
 *		The shared status of every loop: one LoopSlot per loop and database,
 *		written by the runners (state, outcomes, counters) and read by
 *		loop_status(), and the commit-time wake-up of a database's workers.
 *
 * Slots are created at postmaster start (and again after a crash restart,
 * which resets them).  All fields are protected by one LWLock; updates are a
 * handful per run, so there is nothing to gain from finer locking.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "compat.h"
#include "certctl_sched.h"

CertctlSchedShared *certctl_sched_shared = NULL;

/* what _PG_init asked for: the databases, each with a slot per loop */
static int	shared_ndb = 0;
static char shared_dbnames[CERTCTL_SCHED_MAX_DATABASES][NAMEDATALEN];

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
#ifdef CERTCTL_SCHED_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif

/* loops whose workers to wake when the current transaction commits (bit per loop) */
static uint32 wake_pending = 0;
static bool wake_callback_registered = false;
static char wake_dbname[NAMEDATALEN];

static Size
shared_size(void)
{
	return add_size(offsetof(CertctlSchedShared, slots),
					mul_size(shared_ndb * CERTCTL_SCHED_NLOOPS, sizeof(LoopSlot)));
}

static void
request_shmem(void)
{
	RequestAddinShmemSpace(MAXALIGN(shared_size()));
	RequestNamedLWLockTranche("certctl_sched", 1);
}

#ifdef CERTCTL_SCHED_HAVE_SHMEM_REQUEST_HOOK
static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	request_shmem();
}
#endif

/* Creates (or attaches to) the slot array; a fresh array has every loop stopped. */
static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	certctl_sched_shared = ShmemInitStruct("certctl_sched", shared_size(), &found);
	if (!found)
	{
		memset(certctl_sched_shared, 0, shared_size());
		certctl_sched_shared->lock = &(GetNamedLWLockTranche("certctl_sched"))->lock;
		certctl_sched_shared->nslots = shared_ndb * CERTCTL_SCHED_NLOOPS;
		for (int i = 0; i < certctl_sched_shared->nslots; i++)
		{
			LoopSlot   *slot = &certctl_sched_shared->slots[i];

			slot->loop = i % CERTCTL_SCHED_NLOOPS;
			strlcpy(slot->dbname, shared_dbnames[i / CERTCTL_SCHED_NLOOPS], NAMEDATALEN);
			slot->state = LOOP_STOPPED;
			slot->interval_ms = certctl_sched_interval_ms[slot->loop];
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init while preloading: one slot per loop for each of the
 * ndb databases (slot d * NLOOPS + loop), and the hooks that create them.
 */
void
certctl_sched_status_request(int ndb, char dbnames[][NAMEDATALEN])
{
	shared_ndb = ndb;
	for (int d = 0; d < ndb; d++)
		strlcpy(shared_dbnames[d], dbnames[d], NAMEDATALEN);
#ifdef CERTCTL_SCHED_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
#else
	request_shmem();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

/*
 * Returns the slot of a loop in a database (by OID when its worker has
 * connected, else by name), or NULL.  Slots are never freed, so the pointer
 * stays valid.
 */
LoopSlot *
certctl_sched_find_slot(Oid dboid, const char *dbname, int loop)
{
	if (certctl_sched_shared == NULL)
		return NULL;
	for (int i = 0; i < certctl_sched_shared->nslots; i++)
	{
		LoopSlot   *slot = &certctl_sched_shared->slots[i];

		if (slot->loop != loop)
			continue;
		if ((OidIsValid(dboid) && slot->dboid == dboid) ||
			(dbname != NULL && strcmp(slot->dbname, dbname) == 0))
			return slot;
	}
	return NULL;
}

/*
 * Returns the current database's slot of a loop, or NULL when the database
 * is not in certctl_sched.database.  Outside a transaction (a worker between
 * runs) only a slot whose worker has connected is found.
 */
LoopSlot *
certctl_sched_my_slot(int loop)
{
	LoopSlot   *slot;

	if (certctl_sched_shared == NULL)
		return NULL;
	slot = certctl_sched_find_slot(MyDatabaseId, NULL, loop);
	if (slot == NULL && IsTransactionState())
		slot = certctl_sched_find_slot(InvalidOid, get_database_name(MyDatabaseId), loop);
	return slot;
}

/* Sets the state, next due time and interval loop_status() shows. */
void
certctl_sched_slot_set_state(LoopSlot *slot, LoopState state, TimestampTz next_run, int interval_ms)
{
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	slot->state = state;
	slot->next_run = next_run;
	slot->interval_ms = interval_ms;
	LWLockRelease(certctl_sched_shared->lock);
}

/* Sets the error loop_status() shows (for a failure outside a run, e.g. reading the loop's state). */
void
certctl_sched_slot_set_error(LoopSlot *slot, const char *error)
{
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	strlcpy(slot->last_error, error, sizeof(slot->last_error));
	LWLockRelease(certctl_sched_shared->lock);
}

/* Marks a run as started in the loop's status.  slot may be NULL. */
void
certctl_sched_record_start(LoopSlot *slot, TimestampTz started)
{
	if (slot == NULL)
		return;
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	slot->last_started = started;
	slot->last_rows = 0;
	LWLockRelease(certctl_sched_shared->lock);
}

/* Publishes the rows a run has committed so far.  slot may be NULL. */
void
certctl_sched_record_progress(LoopSlot *slot, int64 rows)
{
	if (slot == NULL)
		return;
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	slot->last_rows = rows;
	LWLockRelease(certctl_sched_shared->lock);
}

/*
 * Records the outcome of a run, or of a skipped tick, in the loop's status
 * and counters.  slot may be NULL (library not preloaded, or a database
 * without workers).
 */
void
certctl_sched_record_outcome(LoopSlot *slot, TimestampTz started, TimestampTz finished,
							 const RunOutcome *outcome)
{
	if (slot == NULL)
		return;
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	if (outcome->result == RESULT_SKIPPED_LOCKED)
	{
		slot->skipped_locked++;
		slot->last_result = RESULT_SKIPPED_LOCKED;
	}
	else
	{
		slot->runs++;
		slot->last_started = started;
		slot->last_finished = finished;
		slot->last_result = outcome->result;
		slot->last_rows = outcome->rows;
		strlcpy(slot->last_error, outcome->error, sizeof(slot->last_error));
		/* a run stopped by shutdown between batches is neither a success nor a failure */
		if (outcome->result == RESULT_OK)
			slot->successes++;
		else if (outcome->result != RESULT_INTERRUPTED)
			slot->failures++;
		if (outcome->timed_out)
			slot->timeouts++;
	}
	LWLockRelease(certctl_sched_shared->lock);
}

/*
 * At commit, marks the pending loops' slots of this database as changed and
 * sets their workers' latches; at abort, forgets them.  Waking only after
 * commit means the worker is sure to see what the transaction wrote.
 */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	uint32		pending = wake_pending;

	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PARALLEL_COMMIT && event != XACT_EVENT_PARALLEL_ABORT)
		return;
	wake_pending = 0;
	if (pending == 0 || certctl_sched_shared == NULL ||
		(event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT))
		return;

	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < certctl_sched_shared->nslots; i++)
	{
		LoopSlot   *slot = &certctl_sched_shared->slots[i];

		if ((pending & (1U << slot->loop)) == 0)
			continue;
		if (slot->dboid != MyDatabaseId && strcmp(slot->dbname, wake_dbname) != 0)
			continue;
		slot->config_changed = true;
		if (slot->latch)
			SetLatch(slot->latch);
	}
	LWLockRelease(certctl_sched_shared->lock);
}

/*
 * Asks for the worker of a loop (or, with loop < 0, of every loop) in this
 * database to be woken when the current transaction commits.
 */
void
certctl_sched_wake_at_commit(int loop)
{
	char	   *dbname = get_database_name(MyDatabaseId);

	if (dbname)
		strlcpy(wake_dbname, dbname, NAMEDATALEN);
	if (!wake_callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		wake_callback_registered = true;
	}
	if (loop < 0)
		wake_pending |= (1U << CERTCTL_SCHED_NLOOPS) - 1;
	else
		wake_pending |= 1U << loop;
}

/* Returns the SQL name of a worker state. */
const char *
certctl_sched_state_name(LoopState state)
{
	switch (state)
	{
		case LOOP_STOPPED:
			return "stopped";
		case LOOP_STARTING:
			return "starting";
		case LOOP_IDLE:
			return "idle";
		case LOOP_RUNNING:
			return "running";
		case LOOP_DISABLED:
			return "disabled";
		case LOOP_PAUSED:
			return "paused";
		case LOOP_WAITING_FOR_EXTENSION:
			return "waiting_for_extension";
		case LOOP_ERROR:
			return "error";
	}
	return "unknown";
}

/* Returns the SQL name of a run result, NULL for none. */
const char *
certctl_sched_result_name(RunResult result)
{
	switch (result)
	{
		case RESULT_NONE:
			return NULL;
		case RESULT_OK:
			return "ok";
		case RESULT_ERROR:
			return "error";
		case RESULT_SKIPPED_LOCKED:
			return "skipped_locked";
		case RESULT_INTERRUPTED:
			return "interrupted";
		case RESULT_CANCELLED:
			return "cancelled";
	}
	return NULL;
}
