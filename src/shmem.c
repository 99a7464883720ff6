/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The shared-memory status of every loop: one LoopSlot per loop and
 *		database, written by the workers and read by loop_status().
 *
 * Slots are created at postmaster start (and again after a crash restart,
 * which resets them).  All fields are protected by one LWLock; updates are a
 * handful per run, so there is nothing to gain from finer locking.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "commands/dbcommands.h"

#include "compat.h"
#include "certctl_sched.h"

CertctlSchedShared *certctl_sched_shared = NULL;

static int	shared_nslots = 0;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
#ifdef CERTCTL_SCHED_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif

/* loops whose workers to wake when the current transaction commits (bit per loop; all = every loop) */
static uint32 wake_pending = 0;
static bool wake_callback_registered = false;
static char wake_dbname[NAMEDATALEN];

static Size
shared_size(void)
{
	return add_size(offsetof(CertctlSchedShared, slots),
					mul_size(shared_nslots, sizeof(LoopSlot)));
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
		char		dbnames[CERTCTL_SCHED_MAX_DATABASES][NAMEDATALEN];
		int			ndb = certctl_sched_database_list(dbnames, CERTCTL_SCHED_MAX_DATABASES);

		memset(certctl_sched_shared, 0, shared_size());
		certctl_sched_shared->lock = &(GetNamedLWLockTranche("certctl_sched"))->lock;
		certctl_sched_shared->nslots = shared_nslots;
		for (int i = 0; i < shared_nslots && ndb > 0; i++)
		{
			LoopSlot   *slot = &certctl_sched_shared->slots[i];

			slot->loop = i % CERTCTL_SCHED_NLOOPS;
			strlcpy(slot->dbname, dbnames[i / CERTCTL_SCHED_NLOOPS], NAMEDATALEN);
			slot->dboid = InvalidOid;
			slot->state = LOOP_STOPPED;
			slot->interval_ms = certctl_sched_interval_ms[slot->loop];
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init while preloading: sizes the slot array and installs the hooks. */
void
certctl_sched_shmem_install_hooks(int nslots)
{
	shared_nslots = nslots;
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
 * Returns the slot of a loop in a database (by OID when the worker has
 * connected, else by name), or NULL.  Caller holds the lock or accepts a
 * racy answer; slots are never freed, so the pointer stays valid.
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
