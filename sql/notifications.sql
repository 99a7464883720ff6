-- notifications: what the notifications loop claims, the exact request of every channel, bad rows, the retry state
-- table, what it records on either certctl schema, the backlog, the delivery guard, and who can read secrets.  No
-- network: the sends are the TAP test's (test/t/010_notifications.pl).
\set now '2026-11-28 12:00:00+00'
\set SHOW_CONTEXT never
CREATE SCHEMA nt_old;
CREATE SCHEMA nt_head;
SET search_path = nt_old;
\set ECHO none
\i test/certctl_schema.sql
SET search_path = nt_head;
\i test/certctl_schema_head.sql
\set ECHO all
RESET search_path;

-- the webhook's signature: HMAC-SHA256, lowercase hex (RFC 4231 test case 2, and a well-known vector)
SELECT certctl_sched._hmac_sha256_hex('Jefe', 'what do ya want for nothing?')
	= '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843' AS rfc4231_case2;
SELECT certctl_sched._hmac_sha256_hex('key', 'The quick brown fox jumps over the lazy dog');
SELECT certctl_sched._hmac_sha256_hex('', '');

-- channels: one of each, literal secrets
INSERT INTO certctl_sched.notification_channels (channel, endpoint, secret, options) VALUES
	('Slack', 'https://hooks.slack.example/services/T0/B0/xyz', NULL, '{"channel": "#certs"}'),
	('Teams', 'https://teams.example/webhook/abc', NULL, '{}'),
	('PagerDuty', NULL, 'pd-routing-key', '{"severity": "critical"}'),
	('OpsGenie', 'https://api.eu.opsgenie.com/v2/alerts', 'og-api-key', '{}'),
	('Webhook', 'http://hooks.example:8080/certctl', 'whsec', '{}'),
	('Email', 'smtp://mail.example:587', 'smtp-password', '{"from": "certctl@example.com", "username": "certctl"}');

-- rows on today's schema, one per channel (channel names compared case-insensitively, as certctl's seed data writes
-- "email"), plus rows of no configured channel, rows not due, and rows in other states
INSERT INTO nt_head.notification_events (id, type, channel, recipient, message, status, retry_count, next_retry_at,
	last_error, created_at) VALUES
	('n01', 'ExpirationWarning', 'Slack', 'ops', E'Certificate api.example.com expires in 7 days.', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n02', 'ExpirationWarning', 'Teams', 'ops', 'Expires soon.', 'Pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n03', 'RenewalFailure', 'PagerDuty', 'oncall', 'Renewal failed.', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n04', 'RenewalFailure', 'OpsGenie', 'oncall', '', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n05', 'DeploymentFailure', 'Webhook', 'hooks', E'Deploy "x" failed:\n\ttimeout', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n06', 'ExpirationWarning', 'email', 'alice@example.com', E'Line one\nLine two', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n07', 'ExpirationWarning', 'Email', '', 'no recipient', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n08', E'Expiration\r\nBcc: victim@example.com', 'Email', 'bob@example.com', 'header injection', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n09', 'ExpirationWarning', 'Discord', 'ops', 'no such channel configured', 'pending', 0, NULL, NULL, '2026-11-28 11:00:00+00'),
	('n10', 'ExpirationWarning', 'Slack', 'ops', 'retry due', 'failed', 2, '2026-11-28 11:59:00+00', 'HTTP 500', '2026-11-28 10:00:00+00'),
	('n11', 'ExpirationWarning', 'Slack', 'ops', 'retry not due', 'failed', 1, '2026-11-28 12:01:00+00', 'HTTP 500', '2026-11-28 10:00:00+00'),
	('n12', 'ExpirationWarning', 'Slack', 'ops', 'failed by certctl', 'failed', 0, NULL, NULL, '2026-11-28 10:00:00+00'),
	('n13', 'ExpirationWarning', 'Slack', 'ops', 'failed for good', 'failed', 0, NULL, 'HTTP 404', '2026-11-28 10:00:00+00'),
	('n14', 'ExpirationWarning', 'Slack', 'ops', 'dead', 'dead', 4, NULL, 'HTTP 500', '2026-11-28 10:00:00+00'),
	('n15', 'ExpirationWarning', 'Slack', 'ops', 'sent', 'sent', 0, NULL, NULL, '2026-11-28 10:00:00+00'),
	('n16', 'ExpirationWarning', 'Slack', 'ops', 'pending, retry later (429)', 'pending', 0, '2026-11-28 12:05:00+00', NULL, '2026-11-28 10:00:00+00');

-- the claim: due rows of the given channels, in id order, from "after" on, at most batch_size
SET certctl_sched.certctl_schema = 'nt_head';
BEGIN;
SELECT claimed, last_key, jsonb_pretty(notifications) FROM certctl_sched._notifications_claim(:'now', 3, NULL,
	ARRAY['Slack', 'Teams', 'PagerDuty', 'OpsGenie', 'Webhook', 'Email'], NULL);
SELECT claimed, last_key, (SELECT array_agg(x ->> 'id') FROM jsonb_array_elements(notifications) x)
FROM certctl_sched._notifications_claim(:'now', 100, 'n03',
	ARRAY['Slack', 'Teams', 'PagerDuty', 'OpsGenie', 'Webhook', 'Email'], NULL);
-- only the channels asked for (the loop asks for the usable ones)
SELECT claimed, (SELECT array_agg(x ->> 'id') FROM jsonb_array_elements(notifications) x)
FROM certctl_sched._notifications_claim(:'now', 100, NULL, ARRAY['EMAIL'], NULL);
ROLLBACK;

-- the requests, exactly, for every channel (secrets as the worker resolves them)
CREATE TEMP TABLE claim AS
SELECT notifications FROM certctl_sched._notifications_claim(:'now', 100, NULL,
	ARRAY['Slack', 'Teams', 'PagerDuty', 'OpsGenie', 'Webhook', 'Email'], NULL);
CREATE TEMP TABLE req AS
SELECT r.* FROM claim, certctl_sched._notification_requests(claim.notifications,
	'{"PagerDuty": "pd-routing-key", "OpsGenie": "og-api-key", "Webhook": "whsec", "Email": "smtp-password"}') r;
SELECT id, channel, url, headers, starttls, error FROM req ORDER BY id;
SELECT id, body FROM req WHERE channel <> 'Email' AND error IS NULL ORDER BY id;
SELECT id, mail_from, mail_rcpt, username, password = 'smtp-password' AS password_set, body FROM req
WHERE channel = 'Email' ORDER BY id;
-- the signature is over the exact body bytes
SELECT id, headers[4] = 'X-Signature: sha256=' || certctl_sched._hmac_sha256_hex('whsec', body) AS signed FROM req
WHERE channel = 'Webhook';
-- a row's request is the same on every render (so are its signature and idempotency key)
SELECT count(*) AS differing FROM req
JOIN claim ON true
CROSS JOIN LATERAL certctl_sched._notification_requests(claim.notifications,
	'{"PagerDuty": "pd-routing-key", "OpsGenie": "og-api-key", "Webhook": "whsec", "Email": "smtp-password"}') r2
WHERE r2.id = req.id AND (r2.body, r2.headers, r2.url) IS DISTINCT FROM (req.body, req.headers, req.url);

-- configuration problems, as the rows' errors
UPDATE certctl_sched.notification_channels SET secret = NULL WHERE channel IN ('PagerDuty', 'Webhook');
UPDATE certctl_sched.notification_channels SET endpoint = 'ftp://files.example/' WHERE channel = 'Slack';
UPDATE certctl_sched.notification_channels SET endpoint = 'https://' WHERE channel = 'Teams';
UPDATE certctl_sched.notification_channels SET endpoint = 'http://mail.example', options = '{}' WHERE channel = 'Email';
SELECT r.id, r.channel, r.headers, r.error FROM claim, certctl_sched._notification_requests(claim.notifications, '{}') r
ORDER BY r.id;
UPDATE certctl_sched.notification_channels SET endpoint = 'smtps://mail.example', options = '{"from": "a@example.com"}'
WHERE channel = 'Email';
SELECT r.id, r.url, r.starttls, r.username, r.error FROM claim, certctl_sched._notification_requests(claim.notifications, '{}') r
WHERE r.channel = 'Email' ORDER BY r.id;
UPDATE certctl_sched.notification_channels SET endpoint = 'smtp://mail.example', options = '{"from": "a@example.com", "tls": "none"}'
WHERE channel = 'Email';
SELECT r.id, r.url, r.starttls FROM claim, certctl_sched._notification_requests(claim.notifications, '{}') r
WHERE r.channel = 'Email' ORDER BY r.id;
-- only starttls or none: anything else could send the password in the clear
UPDATE certctl_sched.notification_channels SET options = '{"from": "a@example.com", "tls": "STARTTLS"}' WHERE channel = 'Email';
SELECT r.id, r.starttls, r.error FROM claim, certctl_sched._notification_requests(claim.notifications, '{}') r
WHERE r.channel = 'Email' ORDER BY r.id;
-- an id with a control character (it is the Idempotency-Key and the Message-ID) would inject a header
SELECT r.channel, r.error FROM certctl_sched._notification_requests(jsonb_build_array(
	jsonb_build_object('id', E'n17\r\nX-Injected: 1', 'channel', 'Webhook', 'type', 'T', 'recipient', 'x', 'message', 'm'),
	jsonb_build_object('id', E'n18\r\nBcc: victim@example.com', 'channel', 'Email', 'type', 'T', 'recipient', 'x@example.com',
		'message', 'm')), '{}') r ORDER BY 1;
-- a secret with a control character would inject a header
SELECT r.id, r.error FROM claim, certctl_sched._notification_requests(claim.notifications, E'{"OpsGenie": "key\\r\\nX: y"}') r
WHERE r.channel = 'OpsGenie';
DROP TABLE claim, req;

-- the retry state table: what becomes of a row after a send, from its state and the outcome
SELECT s.status, s.retry_count AS r, o.outcome,
	d.new_status, d.new_retry_count AS new_r, d.new_next_retry_at - :'now'::timestamptz AS retry_in, d.new_last_error, d.sent
FROM (VALUES ('pending', 0), ('failed', 0), ('failed', 1), ('failed', 2), ('failed', 3), ('failed', 4)) s(status, retry_count)
CROSS JOIN (VALUES ('sent'), ('transient'), ('permanent'), ('retry_after')) o(outcome)
CROSS JOIN LATERAL certctl_sched._notification_decision(:'now', s.status, s.retry_count, NULL, 'before',
	o.outcome, 120, 'err') d
ORDER BY s.status DESC, s.retry_count, o.outcome;
-- Retry-After is bounded to [1 s, 1 h], 60 s when absent
SELECT ra, d.new_next_retry_at - :'now'::timestamptz AS retry_in
FROM (VALUES (NULL), (0), (30), (86400)) v(ra)
CROSS JOIN LATERAL certctl_sched._notification_decision(:'now', 'pending', 0, NULL, NULL, 'retry_after', ra, 'HTTP 429') d;

-- recording on today's schema: one statement for every outcome; rows not in it stay as they are
SELECT certctl_sched._notifications_record(:'now', '[
	{"id": "n01", "outcome": "sent"},
	{"id": "n02", "outcome": "transient", "error": "Teams: HTTP 503"},
	{"id": "n10", "outcome": "transient", "error": "Slack: HTTP 500"},
	{"id": "n03", "outcome": "permanent", "error": "PagerDuty: HTTP 400: bad"},
	{"id": "n04", "outcome": "retry_after", "retry_after": 30, "error": "OpsGenie: HTTP 429"}]');
SELECT id, status, retry_count, next_retry_at, last_error, sent_at FROM nt_head.notification_events
WHERE id IN ('n01', 'n02', 'n03', 'n04', 'n05', 'n10') ORDER BY id;

-- the backlog, per channel as written: due now, and waiting for a retry
SELECT * FROM certctl_sched._notifications_backlog(:'now', NULL);

-- on 4d59fd1's schema (no retry columns): the retry state is the extension's, rows end in failed (error column)
SET certctl_sched.certctl_schema = 'nt_old';
INSERT INTO nt_old.notification_events (id, type, channel, recipient, message) VALUES
	('o1', 'ExpirationWarning', 'Webhook', 'hooks', 'one'),
	('o2', 'ExpirationWarning', 'Webhook', 'hooks', 'two'),
	('o3', 'ExpirationWarning', 'Webhook', 'hooks', 'three');
SELECT certctl_sched._notification_attempts_record(:'now', 'nt_old', '[
	{"id": "o1", "outcome": "transient", "error": "e1"}, {"id": "o2", "outcome": "permanent", "error": "e2"},
	{"id": "o3", "outcome": "sent"}]') AS decisions \gset
SELECT jsonb_pretty(:'decisions');
SELECT certctl_sched._notifications_record(:'now', :'decisions');
SELECT id, status, error, sent_at FROM nt_old.notification_events ORDER BY id;
SELECT certctl_schema, notification_id, retry_count, next_retry_at, last_error FROM certctl_sched.notification_attempts;
-- o1 is not due before its retry: the loop tells the claim which rows wait
SELECT certctl_sched._notifications_waiting(:'now', 'nt_old');
SELECT claimed FROM certctl_sched._notifications_claim(:'now', 10, NULL, ARRAY['Webhook'],
	certctl_sched._notifications_waiting(:'now', 'nt_old'));
SELECT * FROM certctl_sched._notifications_backlog(:'now', certctl_sched._notifications_waiting(:'now', 'nt_old'));
-- its sixth send fails it for good, with the error, and forgets its retry state
UPDATE certctl_sched.notification_attempts SET retry_count = 4;
SELECT certctl_sched._notifications_record(:'now', certctl_sched._notification_attempts_record(:'now', 'nt_old',
	'[{"id": "o1", "outcome": "transient", "error": "e6"}]'));
SELECT id, status, error FROM nt_old.notification_events WHERE id = 'o1';
SELECT count(*) AS attempts_left FROM certctl_sched.notification_attempts;

-- a 429 on 4d59fd1's schema spends no attempt either: the row keeps today's status, pending, in notification_attempts
INSERT INTO nt_old.notification_events (id, type, channel, recipient, message) VALUES
	('r1', 'ExpirationWarning', 'Webhook', 'hooks', 'rate limited');
SELECT certctl_sched._notifications_record(:'now', certctl_sched._notification_attempts_record(:'now', 'nt_old',
	'[{"id": "r1", "outcome": "retry_after", "retry_after": 30, "error": "HTTP 429"}]'));
SELECT status, retry_count, next_retry_at - :'now'::timestamptz AS retry_in FROM certctl_sched.notification_attempts;
SELECT certctl_sched._notifications_record(:'now', certctl_sched._notification_attempts_record(:'now', 'nt_old',
	'[{"id": "r1", "outcome": "transient", "error": "HTTP 500"}]'));
SELECT status, retry_count, next_retry_at - :'now'::timestamptz AS retry_in FROM certctl_sched.notification_attempts;
DELETE FROM certctl_sched.notification_attempts;

-- the delivery guard: certctl's own server (its UpdateStatus statement) cannot mark a row sent that it did not send;
-- the loop's recording can
INSERT INTO nt_old.notification_events (id, type, channel, recipient, message) VALUES
	('g1', 'ExpirationWarning', 'Slack', 'ops', 'guarded'), ('g2', 'ExpirationWarning', 'Slack', 'ops', 'guarded');
CREATE TRIGGER certctl_sched_delivery_guard BEFORE UPDATE OF status ON nt_old.notification_events FOR EACH ROW
	WHEN (NEW.status = 'sent' AND OLD.status IS DISTINCT FROM 'sent')
	EXECUTE FUNCTION certctl_sched.notification_delivery_guard();
UPDATE nt_old.notification_events SET status = 'sent', sent_at = now() WHERE id = 'g1';
UPDATE nt_old.notification_events SET status = 'failed', sent_at = NULL WHERE id = 'g2';
SELECT certctl_sched._notifications_record(:'now', '[{"id": "g1", "outcome": "apply", "status": "sent"}]');
SELECT id, status, sent_at IS NOT NULL AS has_sent_at FROM nt_old.notification_events WHERE id LIKE 'g%' ORDER BY id;
SHOW certctl_sched.delivering_notifications;
RESET certctl_sched.certctl_schema;

-- secrets: a role that is not the extension's owner reads none of them, through no door
CREATE ROLE nt_reader;
GRANT pg_monitor TO nt_reader;
SET ROLE nt_reader;
SELECT * FROM certctl_sched.notification_channels;
SELECT * FROM certctl_sched._notification_requests('[]', '{}');
SELECT * FROM certctl_sched.test_channel('Webhook');
SELECT * FROM certctl_sched.notification_attempts;
SELECT count(*) >= 0 AS backlog_readable FROM certctl_sched.notification_backlog;
SELECT position('whsec' IN certctl_sched.metrics()) AS secret_in_metrics;
SHOW certctl_sched.http_proxy;
SET certctl_sched.allow_loopback = on;
RESET ROLE;
SELECT grantee, privilege_type FROM information_schema.role_table_grants
WHERE table_schema = 'certctl_sched' AND table_name LIKE 'notification%' AND grantee <> current_user
ORDER BY table_name, grantee, privilege_type;
DROP ROLE nt_reader;

-- the backlog metrics (as the loop last counted)
INSERT INTO certctl_sched.notification_backlog VALUES ('Slack', 'configured', 3, 1, :'now'), ('Discord', 'unconfigured', 2, 0, :'now');
SELECT line FROM regexp_split_to_table(certctl_sched.metrics(), E'\n') line WHERE line LIKE '%notifications%';
DELETE FROM certctl_sched.notification_backlog;

-- test_channel(): clear errors for a channel it cannot use (no network is touched)
SELECT * FROM certctl_sched.test_channel(NULL);
SELECT * FROM certctl_sched.test_channel('Nope');
UPDATE certctl_sched.notification_channels SET enabled = false WHERE channel = 'Slack';
SELECT * FROM certctl_sched.test_channel('Slack');
UPDATE certctl_sched.notification_channels SET enabled = true, secret = 'env:CERTCTL_SCHED_NO_SUCH_VARIABLE' WHERE channel = 'OpsGenie';
SELECT * FROM certctl_sched.test_channel('OpsGenie');
UPDATE certctl_sched.notification_channels SET secret = 'file:/nonexistent/secret' WHERE channel = 'OpsGenie';
SELECT * FROM certctl_sched.test_channel('OpsGenie');
-- a request that cannot be made fails without a send
SELECT * FROM certctl_sched.test_channel('Teams');

-- the configuration's checks
INSERT INTO certctl_sched.notification_channels (channel, changed_at) VALUES ('Discord', :'now');
INSERT INTO certctl_sched.notification_channels (channel, options, changed_at) VALUES ('Slack', '[]', :'now');
-- settings
SET certctl_sched.http_proxy = 'ftp://proxy.example';
SET certctl_sched.ca_file = 'relative.pem';
ALTER SYSTEM SET certctl_sched.notifications_concurrency = 0;
ALTER SYSTEM SET certctl_sched.notifications_request_timeout = '50ms';

DELETE FROM certctl_sched.notification_channels;
SET client_min_messages = warning;
DROP SCHEMA nt_old CASCADE;
DROP SCHEMA nt_head CASCADE;
RESET client_min_messages;
