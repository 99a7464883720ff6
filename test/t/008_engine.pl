# Engine defects a long-running server hits: memory stays flat over thousands of runs, a cancel of an idle
# worker is ignored and one during a run cancels the run only, a run whose outcome could not be recorded is
# closed by the next, an unreadable loop state is shown and retried, history is pruned, loop_control survives
# dump and restore.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $node = CertctlTest::node('engine', conf => { agent_health_interval => '1h', history_retention => '5s' });
CertctlTest::control_trigger($node);

# Returns the size of the agent_health worker's TopMemoryContext (its own blocks), from the server log.
sub top_memory
{
	my $pid = CertctlTest::worker_pid($node, 'agent_health');
	my $offset = -s $node->logfile;
	$node->safe_psql('certctl', "SELECT pg_log_backend_memory_contexts($pid)");
	$node->wait_for_log(qr/\[$pid\] LOG:  level: 0; TopMemoryContext: \d+ total/, $offset);
	my ($total) = substr(slurp_file($node->logfile), $offset) =~ /\[$pid\] LOG:  level: 0; TopMemoryContext: (\d+) total/;
	return $total;
}

# Waits until the agent_health worker has completed at least n runs in all.
sub wait_runs
{
	my ($n) = @_;
	CertctlTest::poll_ok($node, "SELECT runs >= $n FROM certctl_sched.loops WHERE loop = 'agent_health'", "$n runs");
}

# --- memory: thousands of back-to-back runs do not grow the worker
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.agent_health_interval = '1ms';
	SELECT pg_reload_conf();});
wait_runs(300);
my $before = top_memory();
my $runs = $node->safe_psql('certctl', "SELECT runs FROM certctl_sched.loops WHERE loop = 'agent_health'");
wait_runs($runs + 2000);
my $after = top_memory();
is($after, $before, "TopMemoryContext stays at $before bytes over 2000 runs");
CertctlTest::poll_ok($node,
	"SELECT min(started_at) > now() - interval '10 s' FROM certctl_sched.run_history WHERE loop = 'agent_health'",
	'history older than history_retention is pruned');
$node->safe_psql('certctl', q{
	ALTER SYSTEM SET certctl_sched.agent_health_interval = '1h';
	ALTER SYSTEM RESET certctl_sched.history_retention;
	SELECT pg_reload_conf();});
CertctlTest::poll_ok($node, "SELECT interval = '1 hour' FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'back to an hourly loop');

# --- a cancel while idle is ignored: same process, still idle
my $pid = CertctlTest::worker_pid($node, 'agent_health');
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'agent_health'", 'idle');
$node->safe_psql('certctl', "SELECT pg_cancel_backend($pid)");
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM certctl_sched.run_history WHERE trigger = 'run_now' AND status = 'ok'",
	'a cancelled idle worker goes on running its loop');
is(CertctlTest::worker_pid($node, 'agent_health'), $pid, 'in the same process');

# --- a cancel during a run cancels the run only
CertctlTest::stale_agents($node, 3);
$node->safe_psql('certctl', "UPDATE test_ctl SET sleep = 60; SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event = 'PgSleep'", 'a batch sleeps');
$node->safe_psql('certctl', "UPDATE test_ctl SET sleep = 0; SELECT pg_cancel_backend($pid)");
CertctlTest::poll_ok($node,
	"SELECT status || ': ' || error = 'cancelled: canceling statement due to user request'
	   FROM certctl_sched.run_history WHERE trigger = 'run_now' ORDER BY id DESC LIMIT 1",
	'the run is recorded as cancelled');
is(CertctlTest::worker_pid($node, 'agent_health'), $pid, 'and the worker goes on');
is($node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Online'"), '3', 'the batch rolled back');

# --- a run whose outcome could not be recorded is closed by the loop's next run (under the lock every
# "running" row of the loop is stale, the worker's own included)
$node->safe_psql('certctl', q{
	CREATE TABLE public.history_ctl (fail boolean);
	INSERT INTO public.history_ctl VALUES (true);
	CREATE FUNCTION public.history_fail() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT fail FROM public.history_ctl) AND NEW.status <> 'running' THEN
			RAISE EXCEPTION 'history_ctl says fail';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER history_fail BEFORE UPDATE ON certctl_sched.run_history
		FOR EACH ROW EXECUTE FUNCTION public.history_fail();
	SELECT certctl_sched.run_now('agent_health');});
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM certctl_sched.run_history WHERE loop = 'agent_health' AND status = 'running'
	   AND rows = 3", 'the run did its work but its outcome was not recorded');
ok($node->wait_for_log(qr/ERROR:  history_ctl says fail\n(?:.*\n)*?.*WARNING:  could not record the outcome of the agent health check run/),
	'which is logged');
my $stuck = $node->safe_psql('certctl', "SELECT id FROM certctl_sched.run_history WHERE status = 'running'");
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'agent_health'", 'idle again');
$node->safe_psql('certctl', "UPDATE public.history_ctl SET fail = false; SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT status || ': ' || error = 'error: run did not finish: its outcome could not be recorded'
	   FROM certctl_sched.run_history WHERE id = $stuck", 'the next run closes it');
$node->safe_psql('certctl', 'DROP TRIGGER history_fail ON certctl_sched.run_history');

# --- the loop's state cannot be read: state "error" with the message, retried on the loop's schedule
$node->safe_psql('certctl', q{
	ALTER TABLE certctl_sched.loop_control RENAME TO loop_control_away;
	ALTER SYSTEM SET certctl_sched.agent_health_interval = '200ms';
	SELECT pg_reload_conf();});
$node->safe_psql('certctl', "SELECT pg_terminate_backend($pid)");	# (it reads the state at start)
CertctlTest::poll_ok($node,
	"SELECT state = 'error' AND last_error LIKE '%certctl_sched.loop_control%does not exist%'
	   FROM certctl_sched.loops WHERE loop = 'agent_health'", 'an unreadable loop state is shown as an error');
$node->safe_psql('certctl', 'ALTER TABLE certctl_sched.loop_control_away RENAME TO loop_control');
CertctlTest::poll_ok($node,
	"SELECT state IN ('idle', 'running') AND runs > 0 FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'and the loop resumes once it can be read');

# --- pausing survives pg_dump and pg_restore
$node->safe_psql('certctl', "SELECT certctl_sched.pause('renewal')");
my $dump = $node->basedir . '/certctl.dump';
$node->command_ok(['pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('certctl')], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(['pg_restore', '--single-transaction', '-d', $node->connstr('restored'), $dump], 'pg_restore');
is($node->safe_psql('restored', 'SELECT loop || \'=\' || paused FROM certctl_sched.loop_control'),
	'renewal=true', 'the paused loop is restored');

$node->stop;
done_testing();
