-- claim_reads: what a claim reads.  certctl keeps every job and notification it ever made; the job processor's and
-- the notifications loop's claims find their candidates through certctl's status index, so a run reads the rows it
-- may claim, not the whole table.  Without that index, or with more candidates than ten batches, they walk the
-- table's keys as the other loops do.  Either way they claim the same rows.
\set now '2026-11-28 12:00:00+00'
CREATE SCHEMA claim_reads;
SET search_path = claim_reads, public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
RESET search_path;
SET certctl_sched.certctl_schema = 'claim_reads';

-- rows of a table and its indexes read in this transaction, so far
CREATE FUNCTION pg_temp.reads(tbl regclass) RETURNS bigint LANGUAGE sql AS $$
SELECT sum(pg_stat_get_xact_tuples_returned(r) + pg_stat_get_xact_tuples_fetched(r))::bigint
FROM (SELECT tbl::oid UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = tbl) AS t(r)
$$;

-- 20,000 finished jobs and, among them, three due renewal jobs (whose certificates are missing: they fail) and a
-- pending validation job (never claimed); statuses spelled as certctl's data has them, casing drift included
INSERT INTO claim_reads.jobs (id, type, status, completed_at)
SELECT format('job-%s', lpad(g::text, 5, '0')), 'Renewal', 'Completed', :'now'
FROM generate_series(1, 20000) AS g;
UPDATE claim_reads.jobs SET status = 'Pending', completed_at = NULL WHERE id IN ('job-00007', 'job-12000');
UPDATE claim_reads.jobs SET status = 'pending', completed_at = NULL WHERE id = 'job-19999';
UPDATE claim_reads.jobs SET status = 'PENDING ', completed_at = NULL WHERE id = 'job-00500';	-- not "pending"
UPDATE claim_reads.jobs SET status = 'Pending', type = 'Validation', completed_at = NULL WHERE id = 'job-15000';
VACUUM ANALYZE claim_reads.jobs;

-- the spellings of the wanted statuses, found through the index; none when the table has no index on status
SELECT certctl_sched._status_spellings('claim_reads', 'jobs', ARRAY['pending']);
SELECT certctl_sched._status_spellings('claim_reads', 'jobs', ARRAY['running']);
SELECT certctl_sched._status_spellings('claim_reads', 'deployment_targets', ARRAY['pending']);
-- nor when the only index on status orders it differently from the column (a collation or operator class of its
-- own) or covers some rows only
BEGIN;
DROP INDEX claim_reads.idx_jobs_status, claim_reads.idx_jobs_status_scheduled_at;
CREATE INDEX ON claim_reads.jobs (status COLLATE "C");
CREATE INDEX ON claim_reads.jobs (status text_pattern_ops);
CREATE INDEX ON claim_reads.jobs (status) WHERE status = 'Pending';
SELECT certctl_sched._status_spellings('claim_reads', 'jobs', ARRAY['pending']) IS NULL AS no_usable_index;
ROLLBACK;

-- the job processor's run: it reads the four candidates and a few index entries, not the 20,000 jobs
BEGIN;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT certctl_sched.process_pending_jobs(:'now', 1000) AS claimed;
SELECT pg_temp.reads('claim_reads.jobs') - :before < 100 AS few_rows_read;
SELECT string_agg(format('%s %s', id, status), ', ' ORDER BY id) AS with_index
FROM claim_reads.jobs WHERE status <> 'Completed' \gset
ROLLBACK;

-- the same run without certctl's status indexes walks every key, and claims the same jobs
BEGIN;
DROP INDEX claim_reads.idx_jobs_status, claim_reads.idx_jobs_status_scheduled_at;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT certctl_sched.process_pending_jobs(:'now', 1000) AS claimed;
SELECT pg_temp.reads('claim_reads.jobs') - :before >= 20000 AS every_key_read;
SELECT string_agg(format('%s %s', id, status), ', ' ORDER BY id) = :'with_index' AS same_outcome,
	string_agg(format('%s %s', id, status), ', ' ORDER BY id) AS outcome
FROM claim_reads.jobs WHERE status <> 'Completed';
ROLLBACK;

-- rows with a due status that no claim would take are not candidates: with 30 more pending validation jobs and
-- deployments whose agent is online, a batch of one reads those rows, not the table's 20,000
INSERT INTO claim_reads.agents (id, name, hostname, status, last_heartbeat_at, api_key_hash)
VALUES ('ag-online', 'online', 'h', 'Online', :'now', 'x');
INSERT INTO claim_reads.jobs (id, type, status, agent_id)
SELECT format('job-v%s', g), CASE WHEN g % 2 = 0 THEN 'Validation' ELSE 'Deployment' END, 'Pending',
	CASE WHEN g % 2 = 1 THEN 'ag-online' END
FROM generate_series(1, 30) AS g;
BEGIN;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 1, NULL, interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') - :before < 1000 AS few_rows_read;
ROLLBACK;

-- with nine more due renewal jobs the candidates are twelve, eleven after the first batch: more than ten batches of
-- one, so batches of one walk the keys (reading the 11,000 between job-00950 and the next due job), batches of two
-- do not; either way the batches claim the due jobs in key order
UPDATE claim_reads.jobs SET status = 'Pending', completed_at = NULL
WHERE id IN ('job-00100', 'job-00200', 'job-00300', 'job-00400', 'job-00600', 'job-00700', 'job-00800', 'job-00900',
	'job-00950');
BEGIN;
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 1, NULL, interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 1, 'job-00950', interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') - :before >= 11000 AS walked;
ROLLBACK;
BEGIN;
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 2, NULL, interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 2, 'job-00950', interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') - :before < 1000 AS few_rows_read;
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 2, 'job-19999', interval '5 minutes') AS b;
ROLLBACK;

-- notifications: 20,000 sent ones and two pending, one of them on a channel that is not asked for
INSERT INTO claim_reads.notification_events (id, type, channel, recipient, message, status, sent_at)
SELECT format('notif-%s', lpad(g::text, 5, '0')), 'ExpirationWarning', 'Webhook', 'ops@example.com', 'expires',
	'sent', :'now'
FROM generate_series(1, 20000) AS g;
UPDATE claim_reads.notification_events SET status = 'Pending', sent_at = NULL WHERE id = 'notif-10000';
UPDATE claim_reads.notification_events SET status = 'pending', sent_at = NULL, channel = 'Slack'
WHERE id = 'notif-10001';
VACUUM ANALYZE claim_reads.notification_events;
BEGIN;
SELECT pg_temp.reads('claim_reads.notification_events') AS before \gset
SELECT c.claimed, c.last_key, c.notifications -> 0 ->> 'id' AS id
FROM certctl_sched._notifications_claim(:'now', 64, NULL, ARRAY['Webhook'], '{}') AS c;
SELECT pg_temp.reads('claim_reads.notification_events') - :before < 100 AS few_rows_read;
ROLLBACK;
BEGIN;
DROP INDEX claim_reads.idx_notification_events_status;
SELECT pg_temp.reads('claim_reads.notification_events') AS before \gset
SELECT c.claimed, c.last_key, c.notifications -> 0 ->> 'id' AS id
FROM certctl_sched._notifications_claim(:'now', 64, NULL, ARRAY['Webhook'], '{}') AS c;
SELECT pg_temp.reads('claim_reads.notification_events') - :before >= 20000 AS every_key_read;
ROLLBACK;

-- today's schema: failed notifications are due again at their next_retry_at; those certctl will never retry (failed
-- for good, or dead) and pending ones on channels not asked for are no candidates, however many
CREATE SCHEMA claim_reads_head;
SET search_path = claim_reads_head, public;
\set ECHO none
\i test/certctl_schema_head.sql
\set ECHO all
RESET search_path;
SET certctl_sched.certctl_schema = 'claim_reads_head';
INSERT INTO claim_reads_head.notification_events (id, type, channel, recipient, message, status, sent_at, retry_count,
	next_retry_at, last_error)
SELECT format('notif-%s', lpad(g::text, 5, '0')), 'ExpirationWarning', 'Webhook', 'ops@example.com', 'expires',
	CASE WHEN g <= 19000 THEN 'sent' WHEN g <= 19700 THEN 'failed' ELSE 'pending' END,
	CASE WHEN g <= 19000 THEN :'now'::timestamptz END, 0, NULL,
	CASE WHEN g BETWEEN 19001 AND 19700 THEN 'HTTP 404: not found' END
FROM generate_series(1, 20000) AS g;
UPDATE claim_reads_head.notification_events SET channel = 'Slack' WHERE id > 'notif-19700';
UPDATE claim_reads_head.notification_events SET status = 'dead', retry_count = 5 WHERE id = 'notif-00003';
UPDATE claim_reads_head.notification_events
SET status = 'Failed', retry_count = 2, next_retry_at = :'now'::timestamptz - interval '1 minute', last_error = '503'
WHERE id = 'notif-05000';
UPDATE claim_reads_head.notification_events
SET status = 'failed', retry_count = 1, next_retry_at = :'now'::timestamptz + interval '1 minute', last_error = '503'
WHERE id = 'notif-05001';
UPDATE claim_reads_head.notification_events SET status = 'pending', sent_at = NULL WHERE id = 'notif-09000';
VACUUM ANALYZE claim_reads_head.notification_events;
BEGIN;
SELECT pg_temp.reads('claim_reads_head.notification_events') AS before \gset
SELECT c.claimed, c.last_key, jsonb_path_query_array(c.notifications, '$[*].id') AS ids
FROM certctl_sched._notifications_claim(:'now', 64, NULL, ARRAY['Webhook'], '{}') AS c;
SELECT pg_temp.reads('claim_reads_head.notification_events') - :before < 10000 AS few_rows_read;	-- the 1,003 with a due status
ROLLBACK;
-- the same claim, walking the keys without the index, and the backlog counted both ways
SELECT * FROM certctl_sched._notifications_backlog(:'now', '{}');
BEGIN;
DROP INDEX claim_reads_head.idx_notification_events_status;
SELECT c.claimed, c.last_key, jsonb_path_query_array(c.notifications, '$[*].id') AS ids
FROM certctl_sched._notifications_claim(:'now', 64, NULL, ARRAY['Webhook'], '{}') AS c;
SELECT * FROM certctl_sched._notifications_backlog(:'now', '{}');
ROLLBACK;

RESET certctl_sched.certctl_schema;
SET client_min_messages = warning;
DROP SCHEMA claim_reads, claim_reads_head CASCADE;
RESET client_min_messages;
