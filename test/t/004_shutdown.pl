# Shutdown and timeouts: SIGTERM idle, SIGTERM mid-batch (the batch commits, nothing more), a transaction longer
# than shutdown_timeout (rolled back, bounded exit), SIGTERM before the first batch (blocked on a lock), the
# last-resort exit when even a cancel does not end the transaction, the run timeout (also when a commit waiting
# on synchronous replication takes its cancel), and a fast shutdown while a commit waits on a synchronous
# standby that never answers.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CertctlTest;

my $node = CertctlTest::node('shutdown', init => { allows_streaming => 1 },
	conf => { agent_health_interval => '1h', batch_size => '1', shutdown_timeout => '30s' });
CertctlTest::control_trigger($node);

# Returns once the agent_health worker is mid-run, i.e. its run has committed at least $n batches.
sub wait_mid_run
{
	my ($n) = @_;
	CertctlTest::poll_ok($node,
		"SELECT state = 'running' AND last_rows >= $n FROM certctl_sched.loops WHERE loop = 'agent_health'",
		"run in progress after $n batch(es)");
}

# Terminates the agent_health worker and returns the seconds until its process is gone.
sub terminate
{
	my $pid = CertctlTest::worker_pid($node, 'agent_health');
	my $t0 = time;
	$node->safe_psql('certctl', "SELECT pg_terminate_backend($pid)");
	$node->poll_query_until('certctl', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid")
	  or die "worker $pid did not exit";
	return time - $t0;
}

# SIGTERM while idle: the worker leaves at once rather than after shutdown_timeout
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'agent_health'", 'idle');
ok(terminate() < 5, 'idle worker exits at once on SIGTERM');

# SIGTERM mid-run: the batch in progress commits, no further batch starts, the run is recorded as interrupted
CertctlTest::stale_agents($node, 20);
$node->safe_psql('certctl', 'UPDATE test_ctl SET sleep = 0.3');
CertctlTest::poll_ok($node, "SELECT pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'worker restarted (and runs at start)');
wait_mid_run(2);
terminate();
my ($status, $rows) = split /\|/, $node->safe_psql('certctl',
	"SELECT status, rows FROM certctl_sched.run_history WHERE loop = 'agent_health' ORDER BY id DESC LIMIT 1");
is($status, 'interrupted', 'run recorded as interrupted');
ok($rows >= 2 && $rows < 20, "the run stopped between batches ($rows rows)");
is($node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Offline'"), $rows,
	'every committed batch is kept, including the one in progress at SIGTERM');
is($node->safe_psql('certctl', "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), '0', 'no lock left');
ok($node->log_contains(qr/certctl_sched "agent_health" run interrupted by shutdown after $rows rows/), 'logged');

# a transaction longer than shutdown_timeout: cancelled and rolled back, the worker exits within the bound
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.shutdown_timeout = '1s';
	SELECT pg_reload_conf();
	UPDATE test_ctl SET sleep = 60;});
CertctlTest::poll_ok($node, "SELECT pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'worker restarted');
my $offline = $node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Offline'");
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'certctl_sched agent_health' AND wait_event = 'PgSleep'",
	'batch is sleeping');
my $took = terminate();
ok($took >= 0.9 && $took < 15, sprintf('worker exits after shutdown_timeout (%.1f s)', $took));
is($node->safe_psql('certctl',
	"SELECT status || ': ' || error FROM certctl_sched.run_history WHERE loop = 'agent_health' ORDER BY id DESC LIMIT 1"),
	'cancelled: cancelled at shutdown: the transaction did not finish within certctl_sched.shutdown_timeout (1000 ms)',
	'recorded as cancelled');
is($node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Offline'"), $offline,
	'the cancelled batch was rolled back');

# the run timeout cancels a run that takes too long; the worker carries on
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.agent_health_timeout = '500ms';
	SELECT pg_reload_conf();});
CertctlTest::poll_ok($node, "SELECT pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'worker restarted');
CertctlTest::poll_ok($node, "SELECT timeouts = 1 FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'timeout counted');
is($node->safe_psql('certctl',
	"SELECT status || ': ' || error FROM certctl_sched.run_history WHERE loop = 'agent_health' ORDER BY id DESC LIMIT 1"),
	'cancelled: run exceeded certctl_sched.agent_health_timeout (500 ms) and was cancelled', 'recorded as a timeout');
is($node->safe_psql('certctl', "SELECT state FROM certctl_sched.loops WHERE loop = 'agent_health'"), 'idle',
	'worker carries on');
is($node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Offline'"), $offline, 'rolled back');

# SIGTERM before the run's first batch, while its bookkeeping waits for a lock: bounded by shutdown_timeout too
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.agent_health_timeout = 0;
	SELECT pg_reload_conf();
	UPDATE test_ctl SET sleep = 0;});
CertctlTest::poll_ok($node, "SELECT pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'worker restarted');
my $locker = $node->background_psql('certctl');
$locker->query_safe('BEGIN; LOCK TABLE certctl_sched.run_history IN ACCESS EXCLUSIVE MODE');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'certctl_sched agent_health' AND wait_event_type = 'Lock'",
	'the run waits for the history table');
$took = terminate();
ok($took < 15, sprintf('worker exits within shutdown_timeout while the lock is still held (%.1f s)', $took));
$locker->query_safe('ROLLBACK');
$locker->quit;

# a transaction that swallows the shutdown cancel (the owner's trigger catches it): terminated two seconds later
$node->safe_psql('certctl', q{
	CREATE FUNCTION swallow_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		LOOP
			BEGIN
				PERFORM pg_sleep(60);
			EXCEPTION WHEN query_canceled THEN
				NULL;
			END;
		END LOOP;
	END $$;
	UPDATE agents SET status = 'Online';
	CREATE TRIGGER swallow_cancel AFTER UPDATE ON agents FOR EACH STATEMENT EXECUTE FUNCTION swallow_cancel();});
CertctlTest::poll_ok($node, "SELECT pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'worker restarted');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'certctl_sched agent_health' AND wait_event = 'PgSleep'",
	'a batch sleeps and swallows cancels');
my $offset = -s $node->logfile;
$took = terminate();
ok($took >= 2.9 && $took < 15, sprintf('terminated 2 s after shutdown_timeout (%.1f s)', $took));
ok($node->wait_for_log(qr/FATAL:  terminating background worker "certctl_sched agent_health" due to administrator command/,
	$offset), 'as die() would');
$node->safe_psql('certctl', 'DROP TRIGGER swallow_cancel ON agents');

# fast shutdown while the batch's commit waits on a synchronous standby that never answers (the test's own
# sessions commit locally).  The loop is paused across the restart and resumed only once a probe session's commit
# is seen waiting for the standby: by then the checkpointer has published synchronous_standby_names, so the
# worker's first batch commit must wait too.
$ENV{PGOPTIONS} = '-c synchronous_commit=local';
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.agent_health_timeout = '1s';
	ALTER SYSTEM SET certctl_sched.shutdown_timeout = '2s';
	ALTER SYSTEM SET synchronous_standby_names = 'nobody';
	UPDATE test_ctl SET sleep = 0;
	UPDATE agents SET status = 'Online';
	SELECT certctl_sched.pause('agent_health');});
$node->restart;
CertctlTest::wait_sync_rep_published($node);

# the run timeout, when the cancel is taken by a commit waiting on synchronous replication (which only warns and
# commits locally): the run stops at the next batch boundary and is recorded as timed out
my $timeouts = $node->safe_psql('certctl', "SELECT timeouts FROM certctl_sched.loops WHERE loop = 'agent_health'");
$node->safe_psql('certctl', "SELECT certctl_sched.resume('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT status || ': ' || error = 'cancelled: run exceeded certctl_sched.agent_health_timeout (1000 ms) and was cancelled'
	   FROM certctl_sched.run_history WHERE loop = 'agent_health' ORDER BY id DESC LIMIT 1",
	'a run whose commit waited past the run timeout is recorded as timed out');
is($node->safe_psql('certctl', "SELECT timeouts - $timeouts FROM certctl_sched.loops WHERE loop = 'agent_health'"),
	'1', 'and counted');
cmp_ok($node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Offline'"), '<', 20,
	'it stopped before the last batch');

# (then a run without a timeout, whose first batch's commit waits on the standby)
# (the interval changes with the timeout, so that the worker is seen to have reloaded both)
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.agent_health_timeout = 0;
	ALTER SYSTEM SET certctl_sched.agent_health_interval = '59min';
	SELECT pg_reload_conf();
	UPDATE agents SET status = 'Online';});
CertctlTest::poll_ok($node, "SELECT interval = '59 min' FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'settings reloaded');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'certctl_sched agent_health' AND wait_event = 'SyncRep'",
	'commit waits for the synchronous standby');
my $t0 = time;
$node->stop('fast');
my $stop = time - $t0;
ok($stop < 2 + 10, sprintf('fast shutdown completes within shutdown_timeout plus a margin (%.1f s)', $stop));
ok($node->log_contains(qr/canceling wait for synchronous replication/), 'the commit stopped waiting');

done_testing();
