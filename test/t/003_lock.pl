# The advisory-lock guard: a lock held elsewhere skips ticks (counted, one warning), an ERROR in a body leaves
# no lock behind, and the worker and run_loop() sessions never run a loop at the same time or repeat work.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

# (pg_stat_statements counts the workers' own statements: the lock holder is looked up only when warning)
my $node = CertctlTest::node('lock', conf => { job_processor_interval => '200ms', agent_health_interval => '200ms' },
	extra => "shared_preload_libraries = 'certctl_sched, pg_stat_statements'\npg_stat_statements.track = all\n");
$node->safe_psql('certctl', 'CREATE EXTENSION pg_stat_statements');
CertctlTest::control_trigger($node);

# an outside session holds the job processor's key: ticks are skipped, counted and warned about once
my $holder = $node->background_psql('certctl');
$holder->query_safe("SELECT pg_advisory_lock(classid, objid) FROM certctl_sched.lock_key('job_processor')");
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
my $before = $node->safe_psql('certctl', "SELECT count(*) FROM certctl_sched.run_history WHERE loop = 'job_processor'");
CertctlTest::poll_ok($node, "SELECT skipped_locked >= 5 FROM certctl_sched.loops WHERE loop = 'job_processor'",
	'ticks are skipped while the lock is held');
is($node->safe_psql('certctl', "SELECT count(*) FROM certctl_sched.run_history WHERE loop = 'job_processor'"),
	$before, 'no run while the lock is held');
is($node->safe_psql('certctl', "SELECT last_result FROM certctl_sched.loops WHERE loop = 'job_processor'"),
	'skipped_locked', 'last result says why');
is(CertctlTest::log_count($node, qr/WARNING:  job processor still running in process $holder_pid, skipping tick/), 1,
	'one rate-limited warning naming the holder');
is($node->safe_psql('certctl',
	"SELECT sum(calls) FROM pg_stat_statements WHERE query LIKE '%FROM pg_catalog.pg_locks%pg_backend_pid() LIMIT%'"),
	'1', 'the holder is looked up for the warning only, not at every skipped tick');
$holder->query_safe("SELECT pg_advisory_unlock(classid, objid) FROM certctl_sched.lock_key('job_processor')");
my $released = $node->safe_psql('certctl', 'SELECT now()');
CertctlTest::poll_ok($node,
	"SELECT count(*) >= 2 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$released'",
	'runs resume when the lock is released');
# (a run that woke before the release may start after it on a busy machine: at most one such run)
is($node->safe_psql('certctl', qq{
	SELECT count(*) <= 1 FROM certctl_sched.run_history
	WHERE loop = 'job_processor' AND started_at > '$released' AND scheduled_at < '$released'}),
	't', 'skipped ticks are not replayed');

# an ERROR in the body: recorded, logged once, no lock left behind, and the loop goes on
$node->safe_psql('certctl', 'UPDATE test_ctl SET fail = true');
CertctlTest::stale_agents($node, 3);
CertctlTest::poll_ok($node,
	"SELECT count(*) >= 3 FROM certctl_sched.run_history WHERE loop = 'agent_health' AND status = 'error'",
	'failing runs are recorded as errors');
$node->safe_psql('certctl', "SELECT certctl_sched.pause('agent_health')");
CertctlTest::poll_ok($node, "SELECT state = 'paused' FROM certctl_sched.loops WHERE loop = 'agent_health'", 'paused');
my $ah_pid = CertctlTest::worker_pid($node, 'agent_health');
is($node->safe_psql('certctl', "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $ah_pid"),
	'0', 'the worker holds no advisory lock after failed runs');
is($node->safe_psql('certctl',
	"SELECT last_result || ': ' || last_error FROM certctl_sched.loops WHERE loop = 'agent_health'"),
	'error: test_ctl says fail', 'last error is shown');
is($node->safe_psql('certctl', "SELECT count(*) FROM agents WHERE status = 'Online'"), '3', 'failed runs rolled back');
is(CertctlTest::log_count($node, qr/ERROR:  test_ctl says fail/), 1, 'a repeated error is logged once');
$node->safe_psql('certctl', "UPDATE test_ctl SET fail = false; SELECT certctl_sched.resume('agent_health')");
CertctlTest::poll_ok($node, "SELECT count(*) = 0 FROM agents WHERE status = 'Online'", 'the next run succeeds');

# the worker and three run_loop() sessions race on one loop: runs never overlap, and no job is dispatched twice
$node->safe_psql('certctl', q{
	INSERT INTO teams (id, name) VALUES ('t1', 'team');
	INSERT INTO owners (id, name, email, team_id) VALUES ('o1', 'owner', 'o@example.com', 't1');
	INSERT INTO issuers (id, name, type) VALUES ('iss-local', 'local', 'local');
	INSERT INTO renewal_policies (id, name, renewal_window_days) VALUES ('rp', 'rp', 30);
	INSERT INTO managed_certificates (id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id, status, expires_at)
		VALUES ('c1', 'c1', 'c1.example.com', 'o1', 't1', 'iss-local', 'rp', 'Active', now() + interval '90 days');
	INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, api_key_hash)
		VALUES ('fresh', 'fresh', 'h', 'Online', now() + interval '1 day', 'x');
	INSERT INTO deployment_targets (id, name, type, agent_id) VALUES ('tgt', 'tgt', 'nginx', 'fresh');
	INSERT INTO jobs (id, type, certificate_id, target_id, status, created_at)
		SELECT 'job-' || i, 'Deployment', 'c1', 'tgt', 'Pending', now() - interval '1 hour' + i * interval '1 ms'
		FROM generate_series(1, 400) i;
	ALTER SYSTEM SET certctl_sched.batch_size = 7;
	ALTER SYSTEM SET certctl_sched.job_processor_interval = '50ms';
	SELECT pg_reload_conf();});
# the worker and a session contend for the lock, both ways round.  (1) A session's run_loop() holds the lock until
# its transaction ends: the worker's ticks are skipped meanwhile.
my $session = $node->background_psql('certctl');
$session->query_safe('SET client_min_messages = error');	# (a skipped attempt warns)
my $got;
for (my $i = 0; $i < 100; $i++)	# (the worker may be mid-run: retry until the session gets the lock)
{
	$node->poll_query_until('certctl', "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'job_processor'");
	$session->query_safe('BEGIN');
	$got = $session->query_safe("SELECT status FROM certctl_sched.run_loop('job_processor')");
	last if $got eq 'ok';
	$session->query_safe('ROLLBACK');
}
is($got, 'ok', 'a session runs the loop');
my $skipped = $node->safe_psql('certctl', "SELECT skipped_locked FROM certctl_sched.loops WHERE loop = 'job_processor'");
CertctlTest::poll_ok($node,
	"SELECT skipped_locked > $skipped FROM certctl_sched.loops WHERE loop = 'job_processor'",
	'the worker skips its ticks while the session holds the lock');
$session->query_safe('COMMIT');
# (2) The worker's run holds the lock (its batches made slow): a session's run is skipped, naming the worker.
$node->safe_psql('certctl', q{
	CREATE FUNCTION slow_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
	CREATE TRIGGER slow_jobs AFTER UPDATE ON jobs FOR EACH STATEMENT EXECUTE FUNCTION slow_jobs();
	INSERT INTO jobs (id, type, certificate_id, target_id, status)
		SELECT 'slow-' || i, 'Deployment', 'c1', 'tgt', 'Pending' FROM generate_series(1, 70) i;});
CertctlTest::poll_ok($node, "SELECT state = 'running' FROM certctl_sched.loops WHERE loop = 'job_processor'",
	'the worker runs the loop');
my $jp_pid = CertctlTest::worker_pid($node, 'job_processor');
my ($ret, $out, $err) = $node->psql('certctl', "SELECT status FROM certctl_sched.run_loop('job_processor')");
is($out, 'skipped_locked', 'a session is turned away while the worker runs');
like($err, qr/WARNING:  job processor still running in process $jp_pid, skipping run/, 'naming the worker');
$node->safe_psql('certctl', 'DROP TRIGGER slow_jobs ON jobs');

# then the worker and three sessions race freely for 3 s: each session transaction adds three jobs, then runs the
# loop; the worker ticks every 50 ms
$node->pgbench('--no-vacuum --client=3 --time=3', 0, [qr{processed: [1-9]}], [qr//],
	'three sessions race the worker with run_loop()',
	{ '003_racers' => q{
		INSERT INTO jobs (id, type, certificate_id, target_id, status)
			SELECT 'race-' || gen_random_uuid(), 'Deployment', 'c1', 'tgt', 'Pending' FROM generate_series(1, 3);
		SELECT * FROM certctl_sched.run_loop('job_processor');
	} }, 'certctl');
CertctlTest::poll_ok($node, "SELECT count(*) = 0 FROM jobs WHERE agent_id IS NULL", 'every deployment job dispatched');
is($node->safe_psql('certctl', q{
	SELECT count(*) FROM certctl_sched.run_history a JOIN certctl_sched.run_history b
	  ON a.loop = b.loop AND a.id < b.id AND a.status <> 'running' AND b.status <> 'running'
	 AND tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)
	WHERE a.loop = 'job_processor'}), '0', 'no two runs of the loop overlapped');
is($node->safe_psql('certctl', q{
	SELECT count(*) FROM (SELECT details->>'job_id' FROM audit_events WHERE action = 'deployment_job_dispatched'
	                      GROUP BY 1 HAVING count(*) > 1) d}), '0', 'no job dispatched twice');
is($node->safe_psql('certctl', "SELECT count(*) = (SELECT count(*) FROM jobs) FROM audit_events WHERE action = 'deployment_job_dispatched'"),
	't', 'one dispatch audit per job');
is($node->safe_psql('certctl',
	"SELECT sum(rows) = (SELECT count(*) FROM jobs) FROM certctl_sched.run_history WHERE loop = 'job_processor'"),
	't', 'rows add up');

$node->stop;
done_testing();
