/*-------------------------------------------------------------------------
 *
 * loops.c
 *		The loop table: certctl's six scheduler loops, each described by its
 *		name, defaults, the certctl tables it touches and how it runs.
 *
 * The order is fixed: a loop's advisory lock key is its position plus one,
 * and the keys are documented.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "certctl_sched.h"

static const char *const renewal_tables[] = {
	"managed_certificates", "renewal_policies", "issuers", "owners", "jobs", "notification_events",
	"audit_events", NULL
};
static const char *const job_tables[] = {
	"jobs", "managed_certificates", "issuers", "deployment_targets", "agents", "owners",
	"notification_events", "audit_events", NULL
};
static const char *const agent_tables[] = {"agents", NULL};
static const char *const notification_tables[] = {"notification_events", NULL};
static const char *const scan_tables[] = {
	"network_scan_targets", "discovery_scans", "discovered_certificates", "agents", "audit_events", NULL
};
static const char *const short_lived_tables[] = {
	"managed_certificates", "certificate_profiles", "audit_events", NULL
};

/* Defaults are certctl's (DESIGN: interval, run timeout, first run). */
const LoopDef certctl_sched_loops[CERTCTL_SCHED_NLOOPS] = {
	{0, "renewal", "renewal check", 3600 * 1000, 300 * 1000, true,
	"_renewal_batch", renewal_tables, &certctl_sched_sql_body_ops},
	{1, "job_processor", "job processor", 30 * 1000, 120 * 1000, true,
	"_job_processor_batch", job_tables, &certctl_sched_sql_body_ops},
	{2, "agent_health", "agent health check", 120 * 1000, 60 * 1000, true,
	"_agent_health_batch", agent_tables, &certctl_sched_sql_body_ops},
	{3, "notifications", "notification processor", 60 * 1000, 60 * 1000, true,
	NULL, notification_tables, &certctl_sched_notify_ops},
	{4, "short_lived_expiry", "short-lived expiry check", 30 * 1000, 30 * 1000, false,
	"_short_lived_expiry_batch", short_lived_tables, &certctl_sched_sql_body_ops},
	{5, "network_scan", "network scan", 6 * 3600 * 1000, 1800 * 1000, true,
	NULL, scan_tables, &certctl_sched_scan_ops},
};

/* Returns the loop with this SQL name, or NULL. */
const LoopDef *
certctl_sched_loop_by_name(const char *name)
{
	for (int i = 0; i < CERTCTL_SCHED_NLOOPS; i++)
		if (strcmp(certctl_sched_loops[i].name, name) == 0)
			return &certctl_sched_loops[i];
	return NULL;
}

/* Returns the loop named by a function argument, or raises an error listing the loops. */
const LoopDef *
certctl_sched_loop_arg(const char *name)
{
	const LoopDef *def = certctl_sched_loop_by_name(name);

	if (def == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown certctl_sched loop \"%s\"", name),
				 errhint("The loops are renewal, job_processor, agent_health, notifications, short_lived_expiry and network_scan.")));
	return def;
}
