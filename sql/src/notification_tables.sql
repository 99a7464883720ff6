--
-- The network loops' tables (new in 0.2: created by fresh installs and by the upgrade from 0.1 alike)
--

-- The notifications loop's channels: one row per channel name as it appears in notification_events.channel.
-- endpoint: a URL (PagerDuty's and OpsGenie's default to their public APIs); secret: the API key, routing key,
-- webhook signing key or SMTP password, literally or as a reference read by the worker, env:NAME or file:/path (so
-- that a dump carries none); options: what else the channel takes (docs/notifications.md).  Kept by pg_dump.
CREATE TABLE certctl_sched.notification_channels (
	channel		text PRIMARY KEY
				CHECK (channel IN ('Slack', 'Teams', 'PagerDuty', 'OpsGenie', 'Webhook', 'Email')),
	endpoint	text,
	secret		text,
	options		jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
	enabled		boolean NOT NULL DEFAULT true,
	changed_at	timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('certctl_sched.notification_channels', '');

-- On certctl 4d59fd1's schema, which has no retry columns, the retry state of notifications being retried.
CREATE TABLE certctl_sched.notification_attempts (
	certctl_schema	text NOT NULL,
	notification_id	text NOT NULL,
	status			text NOT NULL CHECK (status IN ('pending', 'failed')),	-- as today's schema would have it
	retry_count		integer NOT NULL,
	next_retry_at	timestamptz,
	last_error		text,
	updated_at		timestamptz NOT NULL,
	PRIMARY KEY (certctl_schema, notification_id)
);

-- How many notifications wait for each channel, counted by the notifications loop at the end of each run.
CREATE TABLE certctl_sched.notification_backlog (
	channel		text PRIMARY KEY,
	state		text NOT NULL,		-- configured, disabled, unconfigured
	due			bigint NOT NULL,	-- due now
	waiting		bigint NOT NULL,	-- waiting for a retry
	counted_at	timestamptz NOT NULL
);

-- The network scan targets a run cut short since their last complete scan: later runs scan them after the others.
CREATE TABLE certctl_sched.scan_deferrals (
	certctl_schema	text NOT NULL,
	target_id		text NOT NULL,
	deferred_at		timestamptz NOT NULL,
	PRIMARY KEY (certctl_schema, target_id)
);
