--
-- Privileges
--

-- status, history and metrics are for monitoring roles only
REVOKE ALL ON FUNCTION certctl_sched.loop_status() FROM PUBLIC;
REVOKE ALL ON certctl_sched.loops FROM PUBLIC;
REVOKE ALL ON certctl_sched.run_history FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.loop_status() TO pg_monitor;
GRANT SELECT ON certctl_sched.loops TO pg_monitor;
GRANT SELECT ON certctl_sched.run_history TO pg_monitor;
GRANT EXECUTE ON FUNCTION certctl_sched.metrics() TO pg_monitor;

-- the channels' configuration holds their secrets: the extension owner's (and superusers') only; the loop reads it
-- with the extension owner's rights.  The backlog is for monitoring roles.
REVOKE ALL ON certctl_sched.notification_channels FROM PUBLIC;
REVOKE ALL ON certctl_sched.notification_attempts FROM PUBLIC;
REVOKE ALL ON certctl_sched.notification_backlog FROM PUBLIC;
GRANT SELECT ON certctl_sched.notification_backlog TO pg_monitor;
REVOKE ALL ON FUNCTION certctl_sched._notification_requests(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._notification_attempts_record(timestamptz, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._notifications_waiting(timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.test_channel(text, text) FROM PUBLIC;
REVOKE ALL ON certctl_sched.scan_deferrals FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._scan_deferred(text, text[], text[], timestamptz) FROM PUBLIC;

-- running, waking, pausing and resuming loops change what the scheduler does: superusers, and the roles they grant
-- EXECUTE on these functions to, only (each of them is all such a role needs)
REVOKE ALL ON FUNCTION certctl_sched.run_now(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.run_loop(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON PROCEDURE certctl_sched.run(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.pause(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.resume(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._wake_workers_at_commit(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._loop_control_changed() FROM PUBLIC;
REVOKE ALL ON certctl_sched.loop_control FROM PUBLIC;

-- The loop bodies and their helpers run with their caller's rights (the runners call them with the rights of the
-- role that owns certctl's tables): anyone may call them, and gains nothing by it.  That role needs them.
GRANT EXECUTE ON FUNCTION certctl_sched._check_args(timestamptz, integer, text[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._alert_thresholds(jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._key_window(text, text, text, integer) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._status_spellings(text, text, text[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._claim_windows(text, text, text, timestamptz, integer, text, text[], text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._renewal_batch(timestamptz, integer, text, interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._job_processor_batch(timestamptz, integer, text, interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._agent_health_batch(timestamptz, integer, text, interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._short_lived_expiry_batch(timestamptz, integer, text, interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.check_expiring_certificates(timestamptz, integer) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.process_pending_jobs(timestamptz, integer) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.mark_stale_agents_offline(timestamptz, integer, interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.expire_short_lived_certificates(timestamptz, integer) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._hmac_sha256_hex(text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._notification_decision(timestamptz, text, integer, timestamptz, text, text,
	integer, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._notifications_claim(timestamptz, integer, text, text[], text[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._notifications_record(timestamptz, jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._notifications_backlog(timestamptz, text[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._x509_fields(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._address_refusal(inet, boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._scan_endpoints(text[], integer[], boolean, inet[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._scan_claim(timestamptz, integer, text[], text[], boolean, inet[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._scan_size(text[], integer[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._scan_network(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched._scan_record(timestamptz, jsonb) TO PUBLIC;

-- the loop keys are public knowledge: any process may take the same lock to cooperate
GRANT USAGE ON SCHEMA certctl_sched TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.lock_key(text) TO PUBLIC;

-- wake this database's workers once CREATE EXTENSION (or ALTER EXTENSION UPDATE) commits, so that loops start (again)
-- without waiting for a tick
SELECT certctl_sched._wake_workers_at_commit();
