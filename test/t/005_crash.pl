# kill -9 of a worker mid-run: the cluster recovers, the loops resume, the dead run's "running" history row is
# reconciled, and the work it had not committed is done exactly once afterwards.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $node = CertctlTest::node('crash', conf => { agent_health_interval => '1h', batch_size => '2' },
	extra => "restart_after_crash = on\n");
CertctlTest::control_trigger($node);
CertctlTest::stale_agents($node, 10);
$node->safe_psql('certctl', "UPDATE test_ctl SET sleep = 0.5; SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT state = 'running' AND last_rows >= 2 FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'run in progress');
my $pid = CertctlTest::worker_pid($node, 'agent_health');
my $running_id = $node->safe_psql('certctl',
	"SELECT id FROM certctl_sched.run_history WHERE loop = 'agent_health' AND status = 'running'");
ok($running_id, 'the run has a running history row');

kill 'KILL', $pid;
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/), 'crash restart');
# the log line comes before crash recovery: wait until the server accepts connections again
CertctlTest::poll_ok($node, 'SELECT true', 'the server accepts connections after crash recovery');
$node->safe_psql('certctl', 'UPDATE test_ctl SET sleep = 0');
CertctlTest::poll_ok($node,
	"SELECT count(*) = 0 FROM agents WHERE status = 'Online'", 'the loop resumes after recovery and finishes the work');
CertctlTest::poll_ok($node,
	"SELECT status = 'error' AND error LIKE 'run did not finish: process $pid exited while it ran%'
	   FROM certctl_sched.run_history WHERE id = $running_id",
	'the dead run is reconciled');
is($node->safe_psql('certctl', "SELECT count(*) FROM certctl_sched.run_history WHERE status = 'running'"), '0',
	'no stale running row');
is($node->safe_psql('certctl',
	"SELECT sum(rows) FROM certctl_sched.run_history WHERE loop = 'agent_health' AND status = 'ok'")
	+ $node->safe_psql('certctl', "SELECT rows FROM certctl_sched.run_history WHERE id = $running_id"),
	'10', 'each agent handled once');
is($node->safe_psql('certctl', "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), '0', 'no lock left');

$node->stop;
done_testing();
