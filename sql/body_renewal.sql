-- body_renewal: check_expiring_certificates on fixture data: transitions, skip rules, alerts, jobs, dedup, batches
\set now '2026-11-28 12:00:00+00'
CREATE SCHEMA body_renewal;
SET search_path = body_renewal, public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
SET certctl_sched.certctl_schema = 'body_renewal';

-- one certificate per rule; expires_at relative to the run's time
CREATE FUNCTION pg_temp.cert(id text, status text, expires_at timestamptz, policy text,
	issuer text DEFAULT 'iss-on', owner text DEFAULT 'o-alice') RETURNS void
LANGUAGE sql AS $$
	INSERT INTO body_renewal.managed_certificates
		(id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id, status, expires_at, updated_at)
	VALUES (id, id, id || '.example.com', owner, 't1', issuer, policy, status, expires_at, '2026-01-01 00:00:00+00')
$$;
-- an alert row as certctl writes it (the date in the message is the expiry it was sent for)
CREATE FUNCTION pg_temp.old_alert(cert text, threshold int, expiry date, type text DEFAULT 'ExpirationWarning',
	channel text DEFAULT 'Email', status text DEFAULT 'sent') RETURNS void
LANGUAGE sql AS $$
	INSERT INTO body_renewal.notification_events (id, type, certificate_id, channel, recipient, message, sent_at, status)
	VALUES ('old-' || cert || '-' || threshold, type, cert, channel, 'x',
		format(E'The certificate for %s will expire in 9 days (%s).\n\nPlease schedule renewal.\n\n[threshold:%s]',
			cert, to_char(expiry, 'YYYY-MM-DD'), threshold), now(), status)
$$;

INSERT INTO teams (id, name) VALUES ('t1', 'team');
INSERT INTO owners (id, name, email, team_id) VALUES
	('o-alice', 'Alice', 'alice@example.com', 't1'),
	('o-noemail', 'Nobody', '', 't1');
INSERT INTO issuers (id, name, type, enabled) VALUES
	('iss-on', 'on', 'local', true),
	('iss-off', 'off', 'local', false);
INSERT INTO renewal_policies (id, name, renewal_window_days, auto_renew, alert_thresholds_days) VALUES
	('rp-auto', 'auto', 30, true, '[30, 14, 7, 0]'),
	('rp-window7', 'window7', 7, true, '[30, 14, 7, 0]'),
	('rp-manual', 'manual', 30, false, '[30, 14, 7, 0]'),
	('rp-custom', 'custom', 30, false, '[10, 3]'),
	('rp-dup', 'dup', 30, false, '[7, 7, 30]'),
	('rp-empty', 'empty', 30, false, '[]'),
	('rp-null', 'null', 30, false, 'null'),
	('rp-bad-string', 'bad string', 30, false, '"weekly"'),
	('rp-bad-fraction', 'bad fraction', 30, false, '[30, 14.5]'),
	('rp-bad-object', 'bad object', 30, false, '{"days": 30}');

SELECT pg_temp.cert('c01', 'Active', :'now'::timestamptz + interval '5 days', 'rp-auto');
SELECT pg_temp.cert('c02', 'active', :'now'::timestamptz + interval '20 days 12 hours', 'rp-manual');
SELECT pg_temp.cert('c03', 'Active', :'now'::timestamptz - interval '3 days', 'rp-auto');
-- already alerted by certctl for this expiry, already Expiring, manual: nothing to do
SELECT pg_temp.cert('c04', 'Expiring', :'now'::timestamptz + interval '10 days', 'rp-manual');
SELECT pg_temp.old_alert('c04', 30, '2026-12-08'), pg_temp.old_alert('c04', 14, '2026-12-08');
-- alerted at 30 days for an earlier expiry, then renewed: alerts again
SELECT pg_temp.cert('c05', 'Active', :'now'::timestamptz + interval '25 days', 'rp-manual');
SELECT pg_temp.old_alert('c05', 30, '2026-01-01');
-- an alert in certctl seed style (failed, webhook) counts, whatever its status and channel; but not one of another
-- type: certctl's dedup matches type ExpirationWarning exactly, so an "expiration_warning" row does not suppress
-- certctl's 30-day alert; upper-case status is Expiring already
SELECT pg_temp.cert('c06', 'EXPIRING', :'now'::timestamptz + interval '12 days', 'rp-manual');
SELECT pg_temp.old_alert('c06', 30, '2026-12-10', 'expiration_warning', 'webhook', 'failed');
SELECT pg_temp.old_alert('c06', 14, '2026-12-10', 'ExpirationWarning', 'webhook', 'failed');
SELECT pg_temp.cert('c07', 'Revoked', :'now'::timestamptz + interval '2 days', 'rp-auto');
SELECT pg_temp.cert('c08', 'Archived', :'now'::timestamptz - interval '1 day', 'rp-auto');
SELECT pg_temp.cert('c09', 'RenewalInProgress', :'now'::timestamptz + interval '1 day', 'rp-auto');
SELECT pg_temp.cert('c10', 'Active', :'now'::timestamptz + interval '40 days', 'rp-auto');
SELECT pg_temp.cert('c11', 'Active', NULL, 'rp-auto');
-- alerts done, auto-renew but issuer disabled: no candidate
SELECT pg_temp.cert('c12', 'Expiring', :'now'::timestamptz + interval '3 days', 'rp-auto', 'iss-off');
SELECT pg_temp.old_alert('c12', t, '2026-12-01') FROM unnest(ARRAY[30, 14, 7]) AS t;
-- alerts done, auto-renew but outside the policy's 7-day window: no candidate
SELECT pg_temp.cert('c13', 'Expiring', :'now'::timestamptz + interval '10 days', 'rp-window7');
SELECT pg_temp.old_alert('c13', t, '2026-12-08') FROM unnest(ARRAY[30, 14]) AS t;
-- alerts done, an active (AwaitingCSR, lowercase) renewal job exists: no candidate
SELECT pg_temp.cert('c14', 'Expiring', :'now'::timestamptz + interval '3 days', 'rp-auto');
SELECT pg_temp.old_alert('c14', t, '2026-12-01') FROM unnest(ARRAY[30, 14, 7]) AS t;
INSERT INTO jobs (id, type, certificate_id, status, created_at)
VALUES ('job-old-14', 'renewal', 'c14', 'awaitingcsr', '2026-11-20');
-- alerts done, only finished renewal jobs: gets a new job
SELECT pg_temp.cert('c15', 'Expiring', :'now'::timestamptz + interval '3 days', 'rp-auto');
SELECT pg_temp.old_alert('c15', t, '2026-12-01') FROM unnest(ARRAY[30, 14, 7]) AS t;
INSERT INTO jobs (id, type, certificate_id, status, created_at) VALUES
	('job-old-15a', 'Renewal', 'c15', 'Failed', '2026-11-20'),
	('job-old-15b', 'Renewal', 'c15', 'Completed', '2026-11-21'),
	('job-old-15c', 'Deployment', 'c15', 'Pending', '2026-11-22');
SELECT pg_temp.cert('c16', 'Failed', :'now'::timestamptz + interval '8 days', 'rp-manual');
SELECT pg_temp.cert('c17', 'pending', :'now'::timestamptz + interval '29 days 12 hours', 'rp-manual');
SELECT pg_temp.cert('c18', 'Expired', :'now'::timestamptz + interval '6 days', 'rp-manual');
SELECT pg_temp.cert('c19', 'Active', :'now'::timestamptz, 'rp-manual');
SELECT pg_temp.cert('c20', 'Active', :'now'::timestamptz + interval '30 days', 'rp-auto');
SELECT pg_temp.cert('c21', 'Active', :'now'::timestamptz + interval '31 days', 'rp-auto');
SELECT pg_temp.cert('c22', 'Active', :'now'::timestamptz + interval '5 days', 'rp-bad-string');
SELECT pg_temp.cert('c23', 'Active', :'now'::timestamptz + interval '5 days', 'rp-bad-fraction');
SELECT pg_temp.cert('c24', 'Active', :'now'::timestamptz + interval '2 days 12 hours', 'rp-custom');
SELECT pg_temp.cert('c25', 'Active', :'now'::timestamptz + interval '6 days', 'rp-dup');
SELECT pg_temp.cert('c26', 'Active', :'now'::timestamptz + interval '6 days', 'rp-empty');
SELECT pg_temp.cert('c27', 'Active', :'now'::timestamptz + interval '6 days', 'rp-manual', 'iss-on', 'o-noemail');
SELECT pg_temp.cert('c28', 'Active', :'now'::timestamptz + interval '7 days 23 hours', 'rp-manual');
SELECT pg_temp.cert('c29', 'Active', :'now'::timestamptz + interval '8 days', 'rp-manual');
SELECT pg_temp.cert('c30', 'Active', :'now'::timestamptz - interval '12 hours', 'rp-manual');
SELECT pg_temp.cert('c31', 'Revoked', :'now'::timestamptz - interval '5 days', 'rp-manual');
SELECT pg_temp.cert('c32', 'Active', :'now'::timestamptz + interval '5 days', 'rp-bad-object');
SELECT pg_temp.cert('c33', 'Active', :'now'::timestamptz + interval '5 days', 'rp-null');
SELECT pg_temp.cert('c34', 'Failed', :'now'::timestamptz + interval '4 days 6 hours', 'rp-auto');
-- expired long ago, every alert sent for this expiry, no job yet: gets a renewal job
SELECT pg_temp.cert('c35', 'Expired', :'now'::timestamptz - interval '10 days', 'rp-auto');
SELECT pg_temp.old_alert('c35', t, '2026-11-18') FROM unnest(ARRAY[30, 14, 7, 0]) AS t;

-- the rows the run writes, recognisable by their random-UUID IDs
CREATE VIEW new_alerts AS
	SELECT n.*, substring(n.message FROM '\[threshold:(-?[0-9]+)\]$')::int AS threshold
	FROM notification_events n WHERE n.id ~ '^notif-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$';
CREATE VIEW new_audits AS
	SELECT * FROM audit_events WHERE id ~ '^audit-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$';
CREATE VIEW new_jobs AS
	SELECT * FROM jobs WHERE id ~ '^job-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$';
CREATE TABLE before AS SELECT id, status, updated_at FROM managed_certificates;

-- one call over everything: 24 candidates; one warning naming the three malformed policies
SELECT certctl_sched.check_expiring_certificates(:'now', 100);

-- statuses: transitions, RenewalInProgress for new jobs, untouched rows keep their updated_at
SELECT c.id, b.status AS was, c.status, c.updated_at = :'now' AS updated
FROM managed_certificates c JOIN before b USING (id) ORDER BY c.id;

-- alerts per certificate: thresholds reached, message's days and date, recipient, channel, status
SELECT certificate_id, string_agg(threshold::text, ',' ORDER BY threshold DESC) AS thresholds,
	min(substring(message FROM '(-?[0-9]+) days')) AS days, min(substring(message FROM '\((.*)\)')) AS expiry,
	min(recipient) AS recipient, min(type) AS type, min(channel) AS channel, min(status) AS status,
	bool_and(sent_at IS NULL) AS unsent
FROM new_alerts GROUP BY certificate_id ORDER BY certificate_id;

-- certctl's exact message formats
SELECT certificate_id, threshold, message FROM new_alerts
WHERE (certificate_id, threshold) IN (('c01', 7), ('c19', 0), ('c30', 30)) ORDER BY 1, 2;

-- one expiration_alert_sent audit per alert, with certctl's details
SELECT count(*) AS alerts,
	(SELECT count(*) FROM new_audits WHERE action = 'expiration_alert_sent') AS audits,
	count(*) FILTER (WHERE EXISTS (
		SELECT FROM new_audits a
		WHERE a.action = 'expiration_alert_sent' AND a.resource_id = n.certificate_id
			AND a.details->'threshold_days' = to_jsonb(n.threshold)
			AND (n.threshold <= 0
				OR a.details->'days_until_expiry' = to_jsonb(substring(n.message FROM '(-?[0-9]+) days')::int))
			AND (SELECT count(*) FROM jsonb_object_keys(a.details)) = 2)) AS matching
FROM new_alerts n;
SELECT resource_id, details FROM new_audits
WHERE action = 'expiration_alert_sent' AND resource_id IN ('c19', 'c30') ORDER BY 1, (details ->> 'threshold_days')::int DESC;
SELECT DISTINCT actor, actor_type, resource_type, timestamp = :'now' AS at_now FROM new_audits;

-- renewal jobs: auto_renew, inside the window, issuer enabled, no active renewal job
SELECT j.certificate_id, j.type, j.status, j.attempts, j.max_attempts, j.scheduled_at = :'now' AS sched_now,
	j.created_at = :'now' AS created_now,
	j.target_id, j.agent_id, j.last_error, j.started_at, j.completed_at, a.details->'days_until_expiry' AS days
FROM new_jobs j
LEFT JOIN new_audits a ON a.action = 'renewal_job_created' AND a.details->>'job_id' = j.id
	AND a.resource_id = j.certificate_id
ORDER BY j.certificate_id;
SELECT count(*) AS job_audits FROM new_audits WHERE action = 'renewal_job_created';

-- IDs are unique
SELECT count(DISTINCT id) = count(*) AS unique_audit_ids FROM new_audits;

-- a second run finds nothing to do and writes nothing
SELECT certctl_sched.check_expiring_certificates(:'now', 100);
SELECT (SELECT count(*) FROM new_alerts) AS alerts, (SELECT count(*) FROM new_audits) AS audits,
	(SELECT count(*) FROM new_jobs) AS jobs;

-- c01 is renewed (the agent's CSR completes the job, new expiry); 60 days later it alerts again for the new expiry,
-- and gets a new renewal job since its previous one is Completed
UPDATE jobs SET status = 'Completed' WHERE certificate_id = 'c01';
UPDATE managed_certificates SET status = 'Active', expires_at = :'now'::timestamptz + interval '90 days'
WHERE id = 'c01';
DELETE FROM managed_certificates WHERE id <> 'c01';
SELECT certctl_sched.check_expiring_certificates(:'now'::timestamptz + interval '70 days', 100);
SELECT status FROM managed_certificates WHERE id = 'c01';
SELECT threshold, substring(message FROM '\((.*)\)') AS expiry FROM new_alerts WHERE certificate_id = 'c01'
ORDER BY 2, 1 DESC;
SELECT status, count(*) FROM jobs WHERE certificate_id = 'c01' GROUP BY status ORDER BY status;

--
-- batch boundaries: non-candidates first in expires_at order must not stall a batch of 1
--
CREATE FUNCTION pg_temp.batch_fixture() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM body_renewal.jobs;
	DELETE FROM body_renewal.notification_events;
	DELETE FROM body_renewal.audit_events;
	DELETE FROM body_renewal.managed_certificates;
	PERFORM pg_temp.cert('b1', 'RenewalInProgress', '2026-11-29 12:00:00+00', 'rp-manual');
	PERFORM pg_temp.cert('b2', 'Expiring', '2026-11-30 12:00:00+00', 'rp-manual');
	PERFORM pg_temp.old_alert('b2', t, '2026-11-30') FROM unnest(ARRAY[30, 14, 7]) AS t;
	PERFORM pg_temp.cert('b3', 'Active', '2026-12-01 12:00:00+00', 'rp-manual');
	PERFORM pg_temp.cert('b4', 'Active', '2026-12-02 12:00:00+00', 'rp-manual');
	PERFORM pg_temp.cert('b5', 'Active', '2026-12-03 12:00:00+00', 'rp-manual');
	PERFORM pg_temp.cert('b6', 'Active', '2027-03-01 12:00:00+00', 'rp-manual');
END
$$;
CREATE VIEW done AS
	SELECT string_agg(id, ' ' ORDER BY id) AS done FROM managed_certificates WHERE lower(status) = 'expiring'
		AND EXISTS (SELECT FROM new_alerts n WHERE n.certificate_id = managed_certificates.id);

SELECT pg_temp.batch_fixture();
SELECT certctl_sched.check_expiring_certificates(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT certctl_sched.check_expiring_certificates(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT certctl_sched.check_expiring_certificates(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT certctl_sched.check_expiring_certificates(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT count(*) AS alerts, count(DISTINCT (certificate_id, threshold)) AS distinct_alerts FROM new_alerts;

-- a batch exactly the size of the work returns batch_size, then 0
SELECT pg_temp.batch_fixture();
SELECT certctl_sched.check_expiring_certificates(:'now', 3) AS batch_of_3;
SELECT certctl_sched.check_expiring_certificates(:'now', 3) AS batch_of_3;

-- a batch larger than the data does everything at once
SELECT pg_temp.batch_fixture();
SELECT certctl_sched.check_expiring_certificates(:'now', 1000) AS batch_of_1000;
SELECT * FROM done;
SELECT certctl_sched.check_expiring_certificates(:'now', 1000) AS batch_of_1000;

RESET certctl_sched.certctl_schema;
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA body_renewal CASCADE;
RESET client_min_messages;
