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

-- with eight more pending (validation) jobs the candidates are twelve: more than ten batches of one, so batches of
-- one walk the keys (reading the 12,000 between the first due job and the next), batches of two do not; either way
-- the batches claim the due jobs in key order
UPDATE claim_reads.jobs SET status = 'Pending', type = 'Validation', completed_at = NULL
WHERE id IN ('job-00100', 'job-00200', 'job-00300', 'job-00400', 'job-00600', 'job-00700', 'job-00800', 'job-00900');
BEGIN;
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 1, NULL, interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 1, 'job-00007', interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') - :before >= 12000 AS walked;
ROLLBACK;
BEGIN;
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 2, NULL, interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') AS before \gset
SELECT b.claimed, b.last_key FROM certctl_sched._job_processor_batch(:'now', 2, 'job-12000', interval '5 minutes') AS b;
SELECT pg_temp.reads('claim_reads.jobs') - :before < 100 AS few_rows_read;
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

RESET certctl_sched.certctl_schema;
SET client_min_messages = warning;
DROP SCHEMA claim_reads CASCADE;
RESET client_min_messages;
