# The notifications loop end to end, against receivers this test starts on loopback: every channel delivered (HTTPS
# verified against the test CA, SMTP with STARTTLS and AUTH), the retry schedule on both certctl schemas, 429 with
# Retry-After, connection refused, a timeout, reserved addresses, unconfigured channels, the soft stop at the run
# timeout, SIGTERM and kill -9 mid-batch, the worker racing run_loop() sessions, secrets kept out of every output,
# and the worker's memory over many runs.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Digest::SHA qw(hmac_sha256_hex);
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use IPC::Run;
use CertctlTest;
use Sinks;

my $json = JSON::PP->new->utf8->canonical;
my $certs = Sinks::make_certs();
my $secrets = PostgreSQL::Test::Utils::tempdir('secrets');
append_to_file("$secrets/pagerduty.key", "pd-routing-key-from-file\n");
# read by the server from its environment (env:NAME): set before the node starts
$ENV{CERTCTL_TEST_SMTP_PASSWORD} = 'smtp-password-from-env';

my $http = Sinks::start_http();
my $https = Sinks::start_http(tls => $certs);
my $smtp = Sinks::start_smtp(mode => 'starttls-required', tls => $certs, auth => 'certctl:smtp-password-from-env');

# certctl's tables (today's schema) owned by an ordinary role, as in a real deployment
my $node = CertctlTest::node('notif', owner => 'certctl_app', schema => 'head',
	conf => { notifications_interval => '1h', allow_loopback => 'on', ca_file => "$certs/ca.pem",
		notifications_request_timeout => '3s', shutdown_timeout => '30s' },
	extra => "restart_after_crash = on\n");
my $app = ['-U', 'certctl_app'];

# Runs SQL as certctl's application role.
sub app_sql { return $node->safe_psql('certctl', $_[0], extra_params => $app) }

# Configures a channel (replacing its row).
sub channel
{
	my ($name, $endpoint, $secret, $options) = @_;
	$node->safe_psql('certctl', sprintf(q{
		INSERT INTO certctl_sched.notification_channels (channel, endpoint, secret, options) VALUES (%s, %s, %s, %s)
		ON CONFLICT (channel) DO UPDATE SET endpoint = excluded.endpoint, secret = excluded.secret,
			options = excluded.options, enabled = true},
		map { defined $_ ? "'$_'" : 'NULL' } $name, $endpoint, $secret, $options // '{}'));
}

# Adds pending notifications: $n rows "$prefix-1".. on $channel (today's schema unless $schema).
sub pending
{
	my ($prefix, $n, $channel, $schema) = @_;
	app_sql(sprintf(q{INSERT INTO %s.notification_events (id, type, channel, recipient, message)
		SELECT '%s-' || lpad(i::text, 4, '0'), 'ExpirationWarning', '%s', 'ops@example.com',
			'Certificate %s-' || i || ' expires in 7 days.'
		FROM generate_series(1, %d) i}, $schema // 'public', $prefix, $channel, $prefix, $n));
}

# Runs the loop once from a session at now() + $offset seconds; returns "status|rows|error".
sub run_loop
{
	my ($offset, $schema) = @_;
	my $set = $schema ? "SET certctl_sched.certctl_schema = '$schema';" : '';
	return $node->safe_psql('certctl', "$set SELECT status, rows, error FROM certctl_sched.run_loop('notifications', "
		  . "now() + interval '" . ($offset // 0) . " s')");
}

# Returns the rows "id|status|retry_count|last_error" with ids starting with $prefix, one per line.
sub rows
{
	my ($prefix, $cols, $schema) = @_;
	$cols //= 'id, status, retry_count, last_error';
	return $node->safe_psql('certctl', "SELECT $cols FROM " . ($schema // 'public')
		  . ".notification_events WHERE id LIKE '$prefix-%' ORDER BY id");
}

# The requests a HTTP sink recorded whose event id (webhook) or text carries $prefix.
sub seen
{
	my ($sink, $prefix) = @_;
	return grep { ($_->{body} // '') =~ /\Q$prefix-\E/ } $sink->entries;
}

# The ids (webhook event_id) a HTTP sink saw, with how many times each.
sub seen_ids
{
	my ($sink, $prefix) = @_;
	my %ids;
	$ids{ $json->decode($_->{body})->{event_id} }++ for seen($sink, $prefix);
	return %ids;
}

# Runs the loop (or lets the worker run it) until every row with ids starting with $prefix is sent.
sub drain
{
	my ($prefix) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while ($node->safe_psql('certctl',
		"SELECT count(*) FROM notification_events WHERE id LIKE '$prefix-%' AND status <> 'sent'") ne '0')
	{
		die "rows $prefix-* not all sent" if time > $deadline;
		run_loop();
		Time::HiRes::sleep(0.1);
	}
}

# ---------------------------------------------------------------------------------------------------------------
# every channel delivered and marked sent
channel('Slack', $http->url('/r/200'), undef, '{"channel": "#certs"}');
channel('Teams', $http->url('/r/200'));
channel('PagerDuty', $http->url('/r/202'), "file:$secrets/pagerduty.key", '{"severity": "critical"}');
channel('OpsGenie', $http->url('/r/202'), 'og-api-key-literal');
channel('Webhook', $https->url('/r/204'), 'webhook-signing-key');
channel('Email', $smtp->url, 'env:CERTCTL_TEST_SMTP_PASSWORD',
	'{"from": "certctl@example.com", "username": "certctl"}');
pending("ch$_", 1, $_) for qw(Slack Teams PagerDuty OpsGenie Webhook);
app_sql(q{INSERT INTO notification_events (id, type, channel, recipient, message)
	VALUES ('chEmail-0001', 'ExpirationWarning', 'email', 'alice@example.com', E'Line one\nLine two')});
is(run_loop(), 'ok|6|', 'one run sends one notification per channel');
is($node->safe_psql('certctl',
	"SELECT string_agg(status || ':' || (sent_at IS NOT NULL), ' ' ORDER BY id) FROM notification_events WHERE id LIKE 'ch%'"),
	join(' ', ('sent:true') x 6), 'each marked sent with sent_at');

my %by_path;
push @{ $by_path{ $_->{path} } }, $_ for $http->entries;
my ($slack) = grep { $_->{body} =~ /chSlack/ } $http->entries;
is_deeply($json->decode($slack->{body}),
	{ text => "*ExpirationWarning*\nCertificate chSlack-1 expires in 7 days.", channel => '#certs', username => 'certctl' },
	'Slack: the text, channel and username');
my ($teams) = seen($http, 'chTeams');
is($json->decode($teams->{body})->{'@type'}, 'MessageCard', 'Teams: a MessageCard');
my ($pd) = seen($http, 'chPagerDuty');
my $pdb = $json->decode($pd->{body});
is($pdb->{routing_key}, 'pd-routing-key-from-file', 'PagerDuty: routing key read from file:');
is($pdb->{dedup_key}, 'chPagerDuty-0001', 'PagerDuty: dedup_key is the row id');
is($pdb->{payload}{severity}, 'critical', 'PagerDuty: severity from the options');
my ($og) = seen($http, 'chOpsGenie');
is($og->{headers}{authorization}, 'GenieKey og-api-key-literal', 'OpsGenie: GenieKey authorization');
is($json->decode($og->{body})->{alias}, 'chOpsGenie-0001', 'OpsGenie: alias is the row id');
my ($hook) = seen($https, 'chWebhook');
ok($hook, 'Webhook delivered over HTTPS, verified against certctl_sched.ca_file');
is($hook->{headers}{'x-signature'}, 'sha256=' . hmac_sha256_hex($hook->{body}, 'webhook-signing-key'),
	'Webhook: X-Signature is the HMAC-SHA256 of the exact body');
is($hook->{headers}{'idempotency-key'}, 'chWebhook-0001', 'Webhook: Idempotency-Key is the row id');
my ($mail) = $smtp->wait_entries(1);
is($mail->{auth_user}, 'certctl', 'Email: AUTH with the username and the env: secret');
ok($mail->{tls}, 'Email: STARTTLS');
is_deeply($mail->{rcpt_tos}, ['alice@example.com'], 'Email: the recipient');
like($mail->{message}, qr/^Date: .*\r\nFrom: certctl\@example.com\r\nTo: alice\@example.com\r\nSubject: ExpirationWarning\r\nMessage-ID: <chEmail-0001\@certctl_sched>\r\n.*Content-Type: text\/plain; charset=utf-8\r\n\r\nLine one\r\nLine two/s,
	'Email: the headers and the body, CRLF lines');

# test_channel() sends one message and says what happened; writes nothing
is($node->safe_psql('certctl', "SELECT status, http_status, error FROM certctl_sched.test_channel('Teams')"),
	'sent|200|', 'test_channel: sent');
channel('Teams', $http->url('/r/403'));
is($node->safe_psql('certctl', "SELECT status, http_status, error FROM certctl_sched.test_channel('Teams')"),
	'failed|403|Teams: HTTP 403: 403 Forbidden', 'test_channel: the failure, with the status and the body');

# ---------------------------------------------------------------------------------------------------------------
# the retry schedule on today's schema: 1, 1, 2, 4, 8 minutes, then dead after the sixth send
channel('Webhook', $http->url('/r/500'), 'webhook-signing-key');
pending('retry', 1, 'Webhook');
my @schedule = ([0, 'failed|0|60'], [30, 'failed|0|60'], [61, 'failed|1|121'], [122, 'failed|2|242'],
	[243, 'failed|3|483'], [484, 'failed|4|964'], [965, 'dead|4|']);
for my $step (@schedule)
{
	my ($at, $want) = @$step;
	run_loop($at);
	is($node->safe_psql('certctl', q{SELECT status || '|' || retry_count || '|' ||
		coalesce(round(extract(epoch FROM next_retry_at - now()))::text, '')
		FROM notification_events WHERE id = 'retry-0001'}), $want, "today's schema, run at +${at}s: $want");
}
is(scalar(seen($http, 'retry')), 6, 'six sends in all');
like(rows('retry', 'last_error'), qr/^Webhook: HTTP 500: /, 'last_error: the status and the start of the body');

# the same schedule on 4d59fd1's schema, kept in the extension's table; the row ends failed, with the error
app_sql(q{CREATE SCHEMA old; SET search_path = old;} . slurp_file("$CertctlTest::srcdir/test/certctl_schema.sql"));
pending('old', 1, 'Webhook', 'old');
for my $step ([0, 'pending||1'], [61, 'pending||1'], [122, 'pending||1'], [243, 'pending||1'], [484, 'pending||1'],
	[965, 'failed|Webhook: HTTP 500: 500 Internal Server Error|0'])
{
	my ($at, $want) = @$step;
	run_loop($at, 'old');
	is($node->safe_psql('certctl', q{SELECT status || '|' || coalesce(error, '') || '|' ||
		(SELECT count(*) FROM certctl_sched.notification_attempts) FROM old.notification_events}),
		$want, "4d59fd1's schema, run at +${at}s: $want");
}
is(scalar(seen($http, 'old')), 6, 'six sends in all');

# ---------------------------------------------------------------------------------------------------------------
# outcomes: 429 waits for Retry-After without spending an attempt; 4xx fails for good; refused connections and
# timeouts are retried; reserved addresses are refused before any connection
channel('Slack', $http->url('/r/429?retry_after=120'));
pending('ra', 1, 'Slack');
run_loop();
is(rows('ra', "status, retry_count, round(extract(epoch FROM next_retry_at - now()))"), 'pending|0|120',
	'429: still pending, no attempt spent, next try at Retry-After');
channel('Slack', $http->url('/r/200'));
run_loop(60);
is(rows('ra', 'status'), 'pending', 'not sent before Retry-After');
run_loop(121);
is(rows('ra', 'status'), 'sent', 'sent after it');

channel('Slack', $http->url('/r/200?retry_after=99999999999'));
pending('ra-huge', 1, 'Slack');
is(run_loop(), 'ok|1|', 'a Retry-After on a 2xx, even an absurd one, changes nothing');
is(rows('ra-huge', 'status, next_retry_at IS NULL'), 'sent|t', 'sent');
channel('Slack', $http->url('/r/429?retry_after=99999999999'));
pending('ra-clamp', 1, 'Slack');
run_loop();
is(rows('ra-clamp', "status, round(extract(epoch FROM next_retry_at - now()) / 60)"), 'pending|60',
	'on a 429, Retry-After is bounded to an hour');
app_sql("DELETE FROM notification_events WHERE id LIKE 'ra-clamp-%'");
channel('Slack', $http->url('/r/200'));

channel('Teams', $http->url('/r/404'));
pending('perm', 1, 'Teams');
run_loop();
is(rows('perm', 'status, next_retry_at IS NULL, last_error'), 'failed|t|Teams: HTTP 404: 404 Not Found',
	'404: failed for good');
run_loop(3600);
is(scalar(seen($http, 'perm')), 1, 'and never sent again');

my $gone = Sinks::start_http();
my $closed_url = $gone->url('/r/200');
$gone->stop;
channel('OpsGenie', $closed_url, 'og-api-key-literal');
pending('refused', 1, 'OpsGenie');
run_loop();
like(rows('refused', 'status, retry_count, last_error'), qr/^failed\|0\|OpsGenie: .*(refused|connect)/i,
	'connection refused: failed, to be retried');

channel('Teams', $http->url('/r/hang'));
pending('hang', 1, 'Teams');
my $t0 = time;
run_loop();
like(rows('hang', 'status, last_error'), qr/^failed\|Teams: .*timed out/i, 'a hung receiver: timed out, to be retried');
ok(time - $t0 < 30, 'after notifications_request_timeout');

channel('Teams', 'http://169.254.169.254/latest/meta-data');
pending('meta', 1, 'Teams');
run_loop();
is(rows('meta', 'status, last_error'),
	'failed|Teams: address 169.254.169.254 refused: link-local addresses are not allowed',
	'a link-local address is refused, for good');
channel('Teams', $http->url('/r/200'));
pending('lo', 1, 'Teams');
my $before = scalar(seen($http, 'lo'));
is($node->safe_psql('certctl', q{SET certctl_sched.allow_loopback = off;
	SELECT status FROM certctl_sched.run_loop('notifications')}), 'ok', 'run with allow_loopback off');
like(rows('lo', 'status, last_error'), qr/^failed\|Teams: address 127\.0\.0\.1 refused: loopback addresses are not allowed/,
	'loopback refused unless certctl_sched.allow_loopback');
is(scalar(seen($http, 'lo')), $before, 'nothing reached the receiver');

# ---------------------------------------------------------------------------------------------------------------
# channels without a usable configuration: their rows stay pending, untouched and counted, one warning a run
app_sql(q{INSERT INTO notification_events (id, type, channel, recipient, message) VALUES
	('unconf-0001', 'ExpirationWarning', 'Discord', 'ops', 'm'), ('unconf-0002', 'ExpirationWarning', 'Discord', 'ops', 'm')});
$node->safe_psql('certctl', "UPDATE certctl_sched.notification_channels SET enabled = false WHERE channel = 'Slack'");
pending('disabled', 1, 'Slack');
channel('OpsGenie', $http->url('/r/202'), 'env:CERTCTL_TEST_NOT_SET');
pending('unusable', 1, 'OpsGenie');
my $runs = $node->safe_psql('certctl', "SELECT runs FROM certctl_sched.loops WHERE loop = 'notifications'");
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('notifications')");
CertctlTest::poll_ok($node, "SELECT runs > $runs AND state = 'idle' FROM certctl_sched.loops WHERE loop = 'notifications'",
	'worker run done');
is(rows('unconf', 'status') . ' ' . rows('disabled', 'status') . ' ' . rows('unusable', 'status'),
	"pending\npending pending pending", 'rows stay pending');
is($node->safe_psql('certctl',
	"SELECT string_agg(channel || ':' || state || ':' || due, ' ' ORDER BY channel) FROM certctl_sched.notification_backlog"
	  . " WHERE channel IN ('Discord', 'Slack', 'OpsGenie')"),
	'Discord:unconfigured:2 OpsGenie:unusable:1 Slack:disabled:1', 'counted in notification_backlog');
like($node->safe_psql('certctl', 'SELECT certctl_sched.metrics()'),
	qr/certctl_sched_notifications_due\{database="certctl",channel="Discord",state="unconfigured"\} 2/, 'and in metrics()');
ok($node->wait_for_log(qr/WARNING:  notification processor: channel OpsGenie cannot be used: its secret is unavailable \(environment variable CERTCTL_TEST_NOT_SET is not set\); notifications wait for channels without a usable configuration: Discord \(2\), OpsGenie \(1\), Slack \(1\)/),
	'a warning names them');
$node->safe_psql('certctl', "UPDATE certctl_sched.notification_channels SET enabled = true WHERE channel = 'Slack'");
app_sql("DELETE FROM notification_events WHERE id LIKE 'unconf-%' OR id LIKE 'disabled-%' OR id LIKE 'unusable-%'");

# ---------------------------------------------------------------------------------------------------------------
# a channel that keeps failing breaks its circuit within the batch: the rest of its rows wait, the others are sent
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.notifications_concurrency = 4;
	ALTER SYSTEM SET certctl_sched.notifications_request_timeout = '500ms'; SELECT pg_reload_conf();});
$node->poll_query_until('certctl', "SELECT current_setting('certctl_sched.notifications_concurrency') = '4'") or die;
channel('Teams', $http->url('/r/hang'));
channel('Slack', $http->url('/r/200'));
pending('brk-a', 14, 'Teams');
pending('brk-b', 2, 'Slack');
my ($ret, $out, $err) = $node->psql('certctl', "SELECT status, rows FROM certctl_sched.run_loop('notifications')");
like($err, qr/channel Teams failed 5 times in a row: its other notifications wait for the next run/,
	'the hung channel\'s circuit breaks, said once');
is(rows('brk-b', 'status'), "sent\nsent", 'the working channel was not held up');
my ($failed, $waiting) = split /\|/, $node->safe_psql('certctl', "SELECT count(*) FILTER (WHERE status = 'failed'),
	count(*) FILTER (WHERE status = 'pending') FROM notification_events WHERE id LIKE 'brk-a-%'");
# (the failure that breaks the circuit may find one more request of the channel in flight: at most half the concurrency)
ok($failed >= 5 && $failed <= 6 && $failed + $waiting == 14,
	"the hung channel: $failed attempts spent, the other $waiting rows unspent");
is($out, 'ok|' . ($failed + 2), 'the run recorded those and the 2 sent');
app_sql("DELETE FROM notification_events WHERE id LIKE 'brk-%'");
$node->safe_psql('certctl', q{ALTER SYSTEM RESET certctl_sched.notifications_concurrency; SELECT pg_reload_conf();});

# SIGTERM while some requests hang: no new request, the answered ones committed, the hung ones aborted at the
# shutdown bound's soft stop, unspent
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.shutdown_timeout = '3s';
	ALTER SYSTEM SET certctl_sched.notifications_request_timeout = '60s'; SELECT pg_reload_conf();});
$node->poll_query_until('certctl', "SELECT current_setting('certctl_sched.notifications_request_timeout') = '1min'") or die;
pending('st-ok', 4, 'Slack');
pending('st-hang', 4, 'Teams');
my $seen_before = scalar($http->entries);
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'notifications'", 'worker idle');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('notifications')");
$http->wait_entries($seen_before + 8);
my $spid = CertctlTest::worker_pid($node, 'notifications');
$node->safe_psql('certctl', "SELECT pg_terminate_backend($spid)");
$node->poll_query_until('certctl', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $spid") or die 'worker did not exit';
is(rows('st-ok', 'status'), join("\n", ('sent') x 4), 'the answered requests are committed');
is(rows('st-hang', 'status, retry_count, last_error IS NULL'), join("\n", ('pending|0|t') x 4), 'the hung ones stay due, unspent');
is($node->safe_psql('certctl', "SELECT status FROM certctl_sched.run_history WHERE loop = 'notifications' ORDER BY id DESC LIMIT 1"),
	'interrupted', 'the run is recorded as interrupted');
app_sql("DELETE FROM notification_events WHERE id LIKE 'st-%'");
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.shutdown_timeout = '30s';
	ALTER SYSTEM SET certctl_sched.notifications_request_timeout = '3s'; SELECT pg_reload_conf();});
CertctlTest::poll_ok($node, "SELECT pid IS NOT NULL AND state = 'idle' FROM certctl_sched.loops WHERE loop = 'notifications'",
	'worker back');

# ---------------------------------------------------------------------------------------------------------------
# the soft stop at the run timeout: what was received is recorded and committed, what hangs stays due, unspent
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.notifications_timeout = '4s';
	ALTER SYSTEM SET certctl_sched.notifications_request_timeout = '60s'; SELECT pg_reload_conf();});
channel('Slack', $http->url('/r/200'));
channel('Teams', $http->url('/r/hang'));
pending('soft-ok', 4, 'Slack');
pending('soft-hang', 4, 'Teams');
$runs = $node->safe_psql('certctl', "SELECT runs FROM certctl_sched.loops WHERE loop = 'notifications'");
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('notifications')");
CertctlTest::poll_ok($node, "SELECT runs > $runs AND state = 'idle' FROM certctl_sched.loops WHERE loop = 'notifications'",
	'run ended');
is(rows('soft-ok', 'status'), join("\n", ('sent') x 4), 'the deliveries received before the soft stop are committed');
is(rows('soft-hang', 'status, retry_count, next_retry_at IS NULL, last_error IS NULL'), join("\n", ('pending|0|t|t') x 4),
	'the hung ones stay due, no attempt spent');
is($node->safe_psql('certctl', "SELECT last_result FROM certctl_sched.loops WHERE loop = 'notifications'"), 'ok',
	'the run ends ok, before its timeout cancels it');
app_sql("DELETE FROM notification_events WHERE id LIKE 'soft-hang-%'");
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.notifications_timeout = '10min';
	ALTER SYSTEM SET certctl_sched.notifications_request_timeout = '3s'; SELECT pg_reload_conf();});

# ---------------------------------------------------------------------------------------------------------------
# SIGTERM mid-batch: no new request starts, the worker exits well within the bound, and no row is marked sent
# that the receiver did not see
channel('Webhook', $http->url('/r/slow/400/200'), 'webhook-signing-key');
pending('term', 200, 'Webhook');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('notifications')");
$http->wait_entries(scalar($http->entries) + 10);
my $pid = CertctlTest::worker_pid($node, 'notifications');
$t0 = time;
$node->safe_psql('certctl', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('certctl', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid") or die "worker did not exit";
my $took = time - $t0;
ok($took < 25, sprintf('worker exits within shutdown_timeout (%.1f s)', $took));
my %seen = seen_ids($http, 'term');
my @sent = split /\n/, $node->safe_psql('certctl', "SELECT id FROM notification_events WHERE id LIKE 'term-%' AND status = 'sent'");
ok(@sent > 0 && @sent < 200, scalar(@sent) . ' rows sent before the worker stopped');
is(scalar(grep { !$seen{$_} } @sent), 0, 'every row marked sent was seen by the receiver');
is($node->safe_psql('certctl', "SELECT count(*) FROM notification_events WHERE id LIKE 'term-%' AND status NOT IN ('sent', 'pending')"),
	'0', 'the others stay pending');
is($node->safe_psql('certctl', "SELECT status FROM certctl_sched.run_history WHERE loop = 'notifications' ORDER BY id DESC LIMIT 1"),
	'interrupted', 'the run is recorded as interrupted');
app_sql("DELETE FROM notification_events WHERE id LIKE 'term-%'");

# ---------------------------------------------------------------------------------------------------------------
# kill -9 mid-batch: the batch in flight is lost and sent again (at least once), and no row is marked sent twice
app_sql(q{CREATE TABLE sent_log (id text, at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION log_sent() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN INSERT INTO public.sent_log (id) VALUES (NEW.id); RETURN NULL; END $$;
	CREATE TRIGGER log_sent AFTER UPDATE ON notification_events FOR EACH ROW
		WHEN (NEW.status = 'sent' AND OLD.status IS DISTINCT FROM 'sent') EXECUTE FUNCTION log_sent();});
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'notifications'", 'worker back');
channel('Webhook', $http->url('/r/slow/300/200'), 'webhook-signing-key');
pending('crash', 100, 'Webhook');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('notifications')");
$http->wait_entries(scalar($http->entries) + 10);
$pid = CertctlTest::worker_pid($node, 'notifications');
kill 'KILL', $pid;
$node->poll_query_until('certctl', 'SELECT pg_is_in_recovery() = false') or die 'no recovery';
channel('Webhook', $http->url('/r/200'), 'webhook-signing-key');
drain('crash');
%seen = seen_ids($http, 'crash');
is(scalar(keys %seen), 100, 'every row delivered at least once');
is($node->safe_psql('certctl', "SELECT count(*) FROM notification_events WHERE id LIKE 'crash-%' AND status = 'sent'"),
	'100', 'every row marked sent');
is($node->safe_psql('certctl', "SELECT count(*), count(DISTINCT id) FROM sent_log WHERE id LIKE 'crash-%'"), '100|100',
	'none marked sent twice');

# ---------------------------------------------------------------------------------------------------------------
# the worker and three run_loop() sessions racing on 1,000 rows: the receiver sees each exactly once
channel('Webhook', $http->url('/r/slow/20/200'), 'webhook-signing-key');
pending('race', 1000, 'Webhook');
my $script = PostgreSQL::Test::Utils::tempdir('bench') . '/run_loop.sql';
append_to_file($script, "SELECT * FROM certctl_sched.run_loop('notifications');\n");
my ($bench_out, $bench_err) = ('', '');
my $bench = IPC::Run::start(['pgbench', '--no-vacuum', '--client=3', '--transactions=100', '-f', $script,
	'-h', $node->host, '-p', $node->port, 'certctl'], '>', \$bench_out, '2>', \$bench_err);
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('notifications')");
$bench->finish;
like($bench_out, qr{processed: 300/300}, 'three sessions ran the loop 100 times each, racing the worker');
drain('race');
%seen = seen_ids($http, 'race');
is(scalar(keys %seen), 1000, 'each of the 1,000 rows delivered');
is(scalar(grep { $_ != 1 } values %seen), 0, 'each exactly once');
is($node->safe_psql('certctl', "SELECT count(*), count(DISTINCT id) FROM sent_log WHERE id LIKE 'race-%'"), '1000|1000',
	'and marked sent once');

# ---------------------------------------------------------------------------------------------------------------
# secrets never reach the log, the history, the status, the metrics or the rows
# (the log without this test's own statements, which configure the channels: log_statement = all)
my $log = slurp_file($node->logfile);
$log =~ s/^[^\n]* LOG:  statement: [^\n]*\n(?:\t[^\n]*\n)*//mg;
my $everything = $log . $node->safe_psql('certctl', q{
	SELECT string_agg(coalesce(error, ''), ' ') FROM certctl_sched.run_history
	UNION ALL SELECT string_agg(coalesce(last_error, ''), ' ') FROM certctl_sched.loops
	UNION ALL SELECT certctl_sched.metrics()
	UNION ALL SELECT string_agg(coalesce(last_error, '') || coalesce(error, ''), ' ') FROM notification_events});
for my $secret ('pd-routing-key-from-file', 'og-api-key-literal', 'webhook-signing-key', 'smtp-password-from-env')
{
	unlike($everything, qr/\Q$secret\E/, "secret $secret appears nowhere");
}

# ---------------------------------------------------------------------------------------------------------------
# the worker's memory stays flat over many runs, each sending
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.notifications_interval = '100ms'; SELECT pg_reload_conf();});
$pid = CertctlTest::worker_pid($node, 'notifications');

# Sends $n rounds of 5 notifications through the worker; returns its private resident memory (kB) afterwards.
sub rounds
{
	my ($n, $tag) = @_;
	for my $i (1 .. $n)
	{
		pending("mem$tag$i", 5, 'Webhook');
		$node->poll_query_until('certctl',
			"SELECT count(*) = 0 FROM notification_events WHERE id LIKE 'mem$tag$i-%' AND status <> 'sent'")
		  or die 'round not sent';
	}
	my ($kb) = slurp_file("/proc/$pid/status") =~ /^RssAnon:\s+(\d+)/m;
	return $kb;
}
my $warm = rounds(20, 'a');
my $after = rounds(100, 'b');
is(CertctlTest::worker_pid($node, 'notifications'), $pid, 'the same worker ran every round');
ok($after - $warm < 1024, "private memory after 20 rounds ${warm} kB, after 100 more ${after} kB");

$node->stop;
done_testing();
