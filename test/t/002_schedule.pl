# Scheduling: fixed-rate ticks, reload of the interval, coalescing after a pause, run_now, persistent pause,
# loop_control changed by plain SQL, run_now of a loop that cannot run, the enabled switch, settings rejected by
# check hooks.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $node = CertctlTest::node('schedule', conf => { job_processor_interval => '300ms', renewal_interval => '1h' });

# ticks lie on a fixed grid of the interval, and each run is passed its tick time
CertctlTest::poll_ok($node,
	"SELECT count(*) >= 5 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND trigger = 'schedule'",
	'job processor ticks');
# (a busy machine may coalesce a tick, so the gaps are whole multiples of the interval, mostly one)
is($node->safe_psql('certctl', q{
	SELECT count(*) FILTER (WHERE (extract(epoch FROM gap) * 1000) % 300 <> 0 OR gap <= interval '0')
		|| '/' || (count(*) FILTER (WHERE gap = interval '300 ms') * 2 > count(*))
	FROM (SELECT scheduled_at - lag(scheduled_at) OVER (ORDER BY id) AS gap
		  FROM certctl_sched.run_history WHERE loop = 'job_processor' AND trigger = 'schedule') g
	WHERE gap IS NOT NULL}), '0/true', 'scheduled times lie on a grid of the interval');
is($node->safe_psql('certctl',
	"SELECT count(*) FROM certctl_sched.run_history WHERE loop = 'renewal'"), '1', 'renewal ran once, at start');

# reload: the new interval applies from the next wait
$node->safe_psql('certctl', "ALTER SYSTEM SET certctl_sched.job_processor_interval = '1s'");
$node->reload;
my $last = $node->safe_psql('certctl', "SELECT max(id) FROM certctl_sched.run_history");
CertctlTest::poll_ok($node,
	"SELECT count(*) >= 3 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND id > $last",
	'ticks go on after reload');
is($node->safe_psql('certctl', qq{
	SELECT count(*) FILTER (WHERE (extract(epoch FROM gap) * 1000) % 1000 <> 0 OR gap <= interval '0')
		|| '/' || bool_or(gap = interval '1 s')
	FROM (SELECT scheduled_at - lag(scheduled_at) OVER (ORDER BY id) AS gap
		  FROM certctl_sched.run_history WHERE loop = 'job_processor' AND id > $last) g WHERE gap IS NOT NULL}),
	'0/true', 'the new interval is used');
is($node->safe_psql('certctl', "SELECT interval FROM certctl_sched.loops WHERE loop = 'job_processor'"),
	'00:00:01', 'loops shows the new interval');

# run_now wakes the worker for an extra run outside the grid
is($node->safe_psql('certctl', "SELECT certctl_sched.run_now('renewal')"), 't', 'run_now reaches the worker');
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM certctl_sched.run_history WHERE loop = 'renewal' AND trigger = 'run_now' AND status = 'ok'",
	'run_now runs the loop');

# pause: no runs, survives a restart; resume: one catch-up run for all the missed ticks, then the grid
$node->safe_psql('certctl', "SELECT certctl_sched.pause('job_processor')");
CertctlTest::poll_ok($node, "SELECT state = 'paused' FROM certctl_sched.loops WHERE loop = 'job_processor'", 'paused');
$node->restart;
CertctlTest::poll_ok($node,
	"SELECT state = 'paused' AND pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'job_processor'",
	'still paused after a restart');
my $t0 = $node->safe_psql('certctl', 'SELECT now()');
$node->poll_query_until('certctl', "SELECT now() > '$t0'::timestamptz + interval '2.5 s'");
is($node->safe_psql('certctl',
	"SELECT count(*) FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$t0'"),
	'0', 'no runs while paused');
$node->safe_psql('certctl', "SELECT certctl_sched.resume('job_processor')");
CertctlTest::poll_ok($node,
	"SELECT count(*) >= 2 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$t0'",
	'runs resume');
is($node->safe_psql('certctl', qq{
	SELECT count(*) FILTER (WHERE started_at - scheduled_at >= interval '1 s')
	FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$t0'}),
	'0', 'missed ticks are coalesced into one run at the latest tick, not replayed');
is($node->safe_psql('certctl', qq{
	SELECT count(*) FILTER (WHERE (extract(epoch FROM gap) * 1000) % 1000 <> 0 OR gap <= interval '0')
	FROM (SELECT scheduled_at - lag(scheduled_at) OVER (ORDER BY id) AS gap
		  FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$t0') g
	WHERE gap IS NOT NULL}), '0', 'and the grid goes on');

# run_now() of a paused loop: refused, and the request does not linger until the loop is resumed
$node->safe_psql('certctl', "SELECT certctl_sched.pause('renewal')");
CertctlTest::poll_ok($node, "SELECT state = 'paused' FROM certctl_sched.loops WHERE loop = 'renewal'", 'renewal paused');
my ($ret, $out, $err) = $node->psql('certctl', "SELECT certctl_sched.run_now('renewal')");
is($out, 'f', 'run_now() of a paused loop answers false');
like($err, qr/NOTICE:  certctl_sched "renewal" cannot run now: it is paused/, 'and says why');
# loop_control changed by plain SQL (e.g. restored from a dump) is seen at once, like resume()
$node->safe_psql('certctl', "UPDATE certctl_sched.loop_control SET paused = false WHERE loop = 'renewal'");
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'renewal'",
	'an UPDATE of loop_control resumes the loop');
is($node->safe_psql('certctl',
	"SELECT count(*) FROM certctl_sched.run_history WHERE loop = 'renewal' AND trigger = 'run_now'"), '1',
	'the refused request was not kept: only the earlier run_now run exists');

# the master switch: off, every loop is disabled and nothing runs; on, the loops run again
$node->safe_psql('certctl', "ALTER SYSTEM SET certctl_sched.enabled = off; SELECT pg_reload_conf()");
CertctlTest::poll_ok($node,
	"SELECT bool_and(state = 'disabled') FROM certctl_sched.loops", 'enabled = off: every loop is disabled');
my $t1 = $node->safe_psql('certctl', 'SELECT now()');
$node->poll_query_until('certctl', "SELECT now() > '$t1'::timestamptz + interval '1.5 s'");
is($node->safe_psql('certctl', "SELECT count(*) FROM certctl_sched.run_history WHERE started_at > '$t1'"), '0',
	'and nothing runs');
($ret, $out, $err) = $node->psql('certctl', "SELECT certctl_sched.run_now('job_processor')");
like($err, qr/cannot run now: it is disabled/, 'run_now() says so');
$node->safe_psql('certctl', "ALTER SYSTEM SET certctl_sched.enabled = on; SELECT pg_reload_conf()");
CertctlTest::poll_ok($node,
	"SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$t1'",
	'enabled = on: the loops run again');

# invalid settings are refused with a clear message, and nothing changes
($ret, $out, $err) = $node->psql('certctl', "ALTER SYSTEM SET certctl_sched.job_processor_interval = 0");
like($err, qr/invalid value for parameter "certctl_sched.job_processor_interval": 0\nDETAIL:  A loop interval must be positive, or -1 to disable the loop/,
	'zero interval refused');
($ret, $out, $err) = $node->psql('certctl', "ALTER SYSTEM SET certctl_sched.batch_size = 0");
like($err, qr/0 is outside the valid range for parameter "certctl_sched.batch_size" \(1 \.\. 1000000\)/, 'batch size range');
($ret, $out, $err) = $node->psql('certctl', "ALTER SYSTEM SET certctl_sched.renewal_timeout = 'soon'");
like($err, qr/invalid value for parameter "certctl_sched.renewal_timeout": "soon"/, 'timeout must be a duration');
($ret, $out, $err) = $node->psql('certctl', "ALTER SYSTEM SET certctl_sched.nosuch = 1");
like($err, qr/unrecognized configuration parameter "certctl_sched.nosuch"/, 'unknown settings are refused');
($ret, $out, $err) = $node->psql('certctl', "SELECT certctl_sched.run_now('nosuch')");
like($err, qr/ERROR:  unknown certctl_sched loop "nosuch"\nHINT:  The loops are renewal, job_processor/, 'unknown loop');
($ret, $out, $err) = $node->psql('postgres', "CREATE EXTENSION certctl_sched; SELECT certctl_sched.run_now('renewal')");
like($err, qr/ERROR:  no certctl_sched worker runs in database "postgres"/, 'run_now outside certctl_sched.database');

# a bad value written to the file is rejected at reload, and the old value stays in force
$node->append_conf('postgresql.conf', "certctl_sched.renewal_interval = 0\n");
my $offset = -s $node->logfile;
$node->reload;
ok($node->wait_for_log(qr/invalid value for parameter "certctl_sched.renewal_interval": 0/, $offset),
	'bad value in postgresql.conf is reported at reload');
is($node->safe_psql('certctl', "SELECT interval FROM certctl_sched.loops WHERE loop = 'renewal'"),
	'01:00:00', 'and ignored');

$node->stop;
done_testing();
