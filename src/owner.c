/*-------------------------------------------------------------------------
 *
 * owner.c
 *		Whose rights certctl_sched's statements run with, and what a runner
 *		reads of the extension in its database.
 *
 * Three identities are involved in a run:
 *	- the session's own (the worker's certctl_sched.role, or the operator
 *	  calling run_loop()): it takes the advisory lock;
 *	- the extension's owner: certctl_sched's own bookkeeping (run_history,
 *	  loop_control) runs with its rights, like a SECURITY DEFINER function,
 *	  so the workers' role needs no privilege on the extension's tables;
 *	- the owner of the certctl tables a loop touches: the loop bodies run
 *	  with its rights in a security-restricted operation, as VACUUM runs
 *	  index functions, so whatever code that role attached to its tables
 *	  (triggers, defaults, policies, ...) gains nothing.
 * Every switch opens a GUC nest level with search_path pinned; leaving it
 * rolls back whatever the code run meanwhile set, even with is_local false.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "certctl_sched.h"

/* The search_path of everything certctl_sched runs itself: nothing but the system catalog. */
#define SAFE_SEARCH_PATH	"pg_catalog, pg_temp"

/*
 * Settings a worker's session pins at connection, over whatever ALTER
 * DATABASE or ALTER ROLE set: they change what SQL means or whether the
 * bodies can run at all.
 */
static const char *const pinned_settings[][2] = {
	{"search_path", SAFE_SEARCH_PATH},
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_read_only", "off"},
	{"default_transaction_deferrable", "off"},
	{"statement_timeout", "0"},
	{"lock_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	{"idle_session_timeout", "0"},
	{"session_replication_role", "origin"},
	{"row_security", "on"},
	{"transform_null_equals", "off"},
	{"array_nulls", "on"},
	{"standard_conforming_strings", "on"},
	{"extra_float_digits", "1"},
	{"DateStyle", "ISO, MDY"},
	{"IntervalStyle", "postgres"},
	{"plpgsql.extra_errors", "none"},
	{"plpgsql.extra_warnings", "none"},
	{"plpgsql.variable_conflict", "error"},
};

/*
 * Pins the settings above for the worker's session (source: session, which
 * outranks database and role settings).  Called once after connecting.
 */
void
certctl_sched_pin_session_settings(void)
{
	for (size_t i = 0; i < lengthof(pinned_settings); i++)
		SetConfigOption(pinned_settings[i][0], pinned_settings[i][1], PGC_SUSET, PGC_S_SESSION);
}

/*
 * Switches to role until certctl_sched_leave_role(): restricted, as a
 * security-restricted operation (for code of other roles: the certctl table
 * owner's); otherwise as a local user id change (for certctl_sched's own
 * statements).  search_path is pinned in a new GUC nest level.  An error in
 * between is cleaned up by the (sub)transaction's abort, which restores both.
 */
void
certctl_sched_enter_role(RoleSwitch *rs, Oid role, bool restricted)
{
	GetUserIdAndSecContext(&rs->save_userid, &rs->save_sec_context);
	SetUserIdAndSecContext(role, rs->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   (restricted ? SECURITY_RESTRICTED_OPERATION : 0));
	rs->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/* Returns to the identity and settings saved by certctl_sched_enter_role(), discarding any setting made since. */
void
certctl_sched_leave_role(RoleSwitch *rs)
{
	AtEOXact_GUC(false, rs->save_nestlevel);
	SetUserIdAndSecContext(rs->save_userid, rs->save_sec_context);
}

/* Returns the owner of a relation, which must exist. */
static Oid
relation_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Returns the role whose rights a loop's body runs with: the one role that
 * owns the certctl tables the loop touches, not counting superusers (a
 * superuser's tables hold only a superuser's code), or, when superusers own
 * them all, the owner of the first.  Raises an error when a table is missing
 * or when several ordinary roles own them.  Must be called in a transaction.
 */
Oid
certctl_sched_tables_owner(const LoopDef *def)
{
	Oid			nsp = get_namespace_oid(certctl_sched_certctl_schema, true);
	Oid			owner = InvalidOid;
	Oid			first = InvalidOid;

	for (const char *const *t = def->tables; *t != NULL; t++)
	{
		Oid			relid = OidIsValid(nsp) ? get_relname_relid(*t, nsp) : InvalidOid;
		Oid			o;

		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("certctl table \"%s.%s\" does not exist", certctl_sched_certctl_schema, *t),
					 errhint("Set certctl_sched.certctl_schema to the schema that holds certctl's tables.")));
		o = relation_owner(relid);
		if (!OidIsValid(first))
			first = o;
		if (superuser_arg(o) || o == owner)
			continue;
		if (OidIsValid(owner))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the certctl tables of loop \"%s\" have more than one owner: \"%s\" and \"%s\"",
							def->name, GetUserNameFromId(owner, false), GetUserNameFromId(o, false)),
					 errdetail("certctl_sched runs a loop with the rights of the one role that owns the tables it touches."),
					 errhint("Make one role own all of certctl's tables in schema \"%s\" (ALTER TABLE ... OWNER TO).",
							 certctl_sched_certctl_schema)));
		owner = o;
	}
	return OidIsValid(owner) ? owner : first;
}

/*
 * Fills st with what the current database has of the extension: whether it
 * exists, its version and owner, and whether def's loop is paused (read with
 * the owner's rights).  Must be called in a transaction.
 */
void
certctl_sched_read_extension(const LoopDef *def, ExtensionState *st)
{
	memset(st, 0, sizeof(*st));
	SPI_connect();
	if (SPI_execute("SELECT extowner, extversion FROM pg_catalog.pg_extension"
					" WHERE extname OPERATOR(pg_catalog.=) 'certctl_sched'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		char	   *version = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		st->exists = true;
		st->owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		strlcpy(st->version, version ? version : "", sizeof(st->version));
		st->current = strcmp(st->version, CERTCTL_SCHED_SQL_VERSION) == 0;
	}
	if (st->exists && st->current && def != NULL)
	{
		RoleSwitch	rs;
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(def->name)};

		certctl_sched_enter_role(&rs, st->owner, false);
		if (SPI_execute_with_args("SELECT paused FROM certctl_sched.loop_control"
								  " WHERE loop OPERATOR(pg_catalog.=) $1",
								  1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
			SPI_processed == 1)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			st->paused = !isnull && DatumGetBool(d);
		}
		certctl_sched_leave_role(&rs);
	}
	SPI_finish();
}

/*
 * Raises an error unless the extension's SQL objects in this database are
 * the version this library works with (after a library upgrade, before
 * ALTER EXTENSION certctl_sched UPDATE).
 */
void
certctl_sched_require_current_extension(void)
{
	ExtensionState st;

	certctl_sched_read_extension(NULL, &st);
	if (!st.exists)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"certctl_sched\" does not exist in this database")));
	if (!st.current)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"certctl_sched\" is at version %s, but its library needs version %s",
						st.version, CERTCTL_SCHED_SQL_VERSION),
				 errhint("Run ALTER EXTENSION certctl_sched UPDATE.")));
}
