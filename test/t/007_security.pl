# Security: with certctl's tables and database owned by an ordinary role, nothing that role does (database
# settings, operators on the search_path, triggers, defaults, checks, policies, a squatted schema) makes the
# loops run its code with more rights than it has; a dedicated worker role and an operator role work with
# exactly the README's grants; loop_status() names the holder of a loop's lock.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $node = CertctlTest::node('security', owner => 'certctl',
	conf => { agent_health_interval => '1h', renewal_interval => '1h', job_processor_interval => '1h',
		short_lived_expiry_interval => '1h' });

# Runs SQL as certctl's table owner, an ordinary role.
sub as_owner { $node->safe_psql('certctl', $_[0], extra_params => ['-U', 'certctl']) }

# Waits until a run of loop started after the last one we saw has finished; returns its status.
my %seen;
sub run_loop_now
{
	my ($loop) = @_;
	my $last = $node->safe_psql('certctl', "SELECT coalesce(max(id), 0) FROM certctl_sched.run_history");
	$node->poll_query_until('certctl', "SELECT certctl_sched.run_now('$loop')");
	$node->poll_query_until('certctl',
		"SELECT count(*) = 1 FROM certctl_sched.run_history WHERE loop = '$loop' AND id > $last AND status <> 'running'")
	  or die "no run of $loop";
	return $node->safe_psql('certctl',
		"SELECT status || coalesce(': ' || error, '') FROM certctl_sched.run_history WHERE loop = '$loop' AND id > $last");
}

# certctl's data: stale agents, an expiring certificate of a short-lived profile, a pending job
$node->safe_psql('certctl', q{
	INSERT INTO teams (id, name) VALUES ('t1', 'team');
	INSERT INTO owners (id, name, email, team_id) VALUES ('o1', 'owner', 'o@example.com', 't1');
	INSERT INTO issuers (id, name, type) VALUES ('iss-local', 'local', 'local');
	INSERT INTO renewal_policies (id, name, renewal_window_days) VALUES ('rp', 'rp', 30);
	INSERT INTO certificate_profiles (id, name, allow_short_lived, max_ttl_seconds) VALUES ('cp', 'cp', true, 300);
	INSERT INTO managed_certificates (id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id,
		certificate_profile_id, status, expires_at)
	VALUES ('c1', 'c1', 'c1.example.com', 'o1', 't1', 'iss-local', 'rp', NULL, 'Active', now() + interval '5 days'),
		('c2', 'c2', 'c2.example.com', 'o1', 't1', 'iss-local', 'rp', 'cp', 'Active', now() - interval '1 hour');
	INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, api_key_hash)
		SELECT 'a' || i, 'a' || i, 'h', 'Online', now() - interval '1 day', 'x' FROM generate_series(1, 3) i;
	SET ROLE certctl;});

# --- 1. database settings and operators on the search_path reach none of the workers' own SQL
as_owner(q{
	CREATE TABLE public.evil_log (who name, session name);
	CREATE SCHEMA evil;
	CREATE FUNCTION evil.cat(a text, b integer) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.evil_log VALUES (current_user, session_user);
		BEGIN EXECUTE 'ALTER ROLE certctl SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
		RETURN a OPERATOR(pg_catalog.||) b::text;
	END $$;
	CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = integer, FUNCTION = evil.cat);
	ALTER DATABASE certctl SET search_path = evil, public;
	ALTER DATABASE certctl SET default_transaction_isolation = 'serializable';
	ALTER DATABASE certctl SET lock_timeout = '1ms';
	ALTER DATABASE certctl SET extra_float_digits = -15;});
# the settings apply to sessions started from now on: restart the workers
$node->restart;
# a run that never finished (as after a crash) makes the next run write its error message
$node->safe_psql('certctl', q{
	INSERT INTO certctl_sched.run_history (loop, trigger, scheduled_at, started_at, status, pid)
	VALUES ('agent_health', 'schedule', now(), now(), 'running', 999999)});
is(run_loop_now('agent_health'), 'ok', 'the loop runs under the database\'s hostile settings');
is($node->safe_psql('certctl', "SELECT error FROM certctl_sched.run_history WHERE pid = 999999"),
	'run did not finish: process 999999 exited while it ran (crash or restart)', 'the stale run is closed');
is($node->safe_psql('certctl', 'SELECT count(*) FROM public.evil_log'), '0',
	'no operator of the database owner ran in the worker');
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'certctl'"), 'f',
	'the owner did not become superuser');
is(run_loop_now('renewal'), 'ok', 'the renewal check runs under them too');
# (extra_float_digits = -15 would leave two significant digits)
like($node->safe_psql('certctl',
	"SELECT details->>'days_until_expiry' FROM audit_events WHERE action = 'renewal_job_created' AND resource_id = 'c1'"),
	qr/^[45]\.\d{6,}$/, 'with the full precision of its audit details, whatever extra_float_digits says');
as_owner(q{
	ALTER DATABASE certctl RESET ALL;
	DROP SCHEMA evil CASCADE;});

# --- 2. the owner's code on its tables runs with the owner's rights, and what it sets does not stick
as_owner(q{
	CREATE TABLE public.grab_log (what text, who name, superuser boolean);
	CREATE FUNCTION public.grab(what text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.grab_log
			SELECT what, current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
		BEGIN EXECUTE 'ALTER ROLE certctl SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
		PERFORM pg_catalog.set_config('search_path', 'public', false);
		RETURN true;
	END $$;
	CREATE FUNCTION public.grab_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN PERFORM public.grab('trigger on ' || TG_TABLE_NAME); RETURN NULL; END $$;
	CREATE TRIGGER grab AFTER UPDATE ON agents FOR EACH STATEMENT EXECUTE FUNCTION public.grab_trigger();
	CREATE TRIGGER grab AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION public.grab_trigger();
	ALTER TABLE notification_events ALTER COLUMN error SET DEFAULT (public.grab('default')::text);
	ALTER TABLE audit_events ADD CONSTRAINT grab CHECK (public.grab('check'));
	CREATE POLICY grab ON managed_certificates USING (public.grab('policy'));
	ALTER TABLE managed_certificates ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;});
# fresh work for every loop
$node->safe_psql('certctl', q{
	INSERT INTO managed_certificates (id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id,
		certificate_profile_id, status, expires_at)
	VALUES ('c3', 'c3', 'c3.example.com', 'o1', 't1', 'iss-local', 'rp', NULL, 'Active', now() + interval '5 days'),
		('c4', 'c4', 'c4.example.com', 'o1', 't1', 'iss-local', 'rp', 'cp', 'Active', now() - interval '1 hour');
	INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, api_key_hash)
		SELECT 'b' || i, 'b' || i, 'h', 'Online', now() - interval '1 day', 'x' FROM generate_series(1, 3) i;});
my $part2 = $node->safe_psql('certctl', 'SELECT max(id) FROM certctl_sched.run_history');
is(run_loop_now('agent_health'), 'ok', 'agent health runs the owner\'s trigger');
is(run_loop_now('renewal'), 'ok', 'the renewal check runs the owner\'s default, check and policy');
is(run_loop_now('short_lived_expiry'), 'ok', 'short-lived expiry too');
is($node->safe_psql('certctl', 'SELECT string_agg(DISTINCT what, \', \' ORDER BY what) FROM public.grab_log'),
	'check, default, policy, trigger on agents, trigger on jobs', 'the owner\'s code ran');
is($node->safe_psql('certctl', 'SELECT string_agg(DISTINCT who || \'/\' || superuser, \',\') FROM public.grab_log'),
	'certctl/false', 'always as the owner, never as a superuser');
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'certctl'"), 'f',
	'the owner did not become superuser');
is($node->safe_psql('certctl',
	"SELECT count(*) FROM certctl_sched.run_history WHERE id > $part2 AND status <> 'ok'"), '0',
	'the bookkeeping after each body ran with its own settings');

# the tables of one loop owned by two ordinary roles: the run fails with a clear error
$node->safe_psql('certctl', 'CREATE ROLE other; ALTER TABLE audit_events OWNER TO other');
like(run_loop_now('short_lived_expiry'),
	qr/^error: the certctl tables of loop "short_lived_expiry" have more than one owner: "certctl" and "other"/,
	'two owners: the run fails, naming them');
$node->safe_psql('certctl', 'ALTER TABLE audit_events OWNER TO certctl; DROP ROLE other');

# --- 3. CREATE EXTENSION refuses a schema certctl_sched that someone else prepared
$node->safe_psql('postgres', 'CREATE DATABASE squat OWNER certctl');
$node->safe_psql('squat', 'CREATE SCHEMA certctl_sched', extra_params => ['-U', 'certctl']);
my ($ret, $out, $err) = $node->psql('squat', 'CREATE EXTENSION certctl_sched');
like($err, qr/ERROR:  schema "certctl_sched" already exists and is owned by role "certctl"/,
	'a schema owned by another role is refused');
$node->safe_psql('squat', q{
	DROP SCHEMA certctl_sched;
	CREATE SCHEMA certctl_sched;
	CREATE FUNCTION certctl_sched._check_args(timestamptz, integer, text) RETURNS text LANGUAGE sql AS 'SELECT $3';});
($ret, $out, $err) = $node->psql('squat', 'CREATE EXTENSION certctl_sched');
like($err, qr/ERROR:  schema "certctl_sched" already exists and is not empty/, 'a schema holding objects is refused');

# --- 4. a dedicated worker role with exactly the README's grants (LOGIN, CONNECT) runs every loop, and an operator
# role with EXECUTE on the control functions controls them
$node->safe_psql('certctl', q{
	CREATE ROLE certctl_scheduler LOGIN;
	REVOKE CONNECT ON DATABASE certctl FROM PUBLIC;
	GRANT CONNECT ON DATABASE certctl TO certctl_scheduler, certctl;
	CREATE ROLE certctl_operator LOGIN;
	GRANT CONNECT ON DATABASE certctl TO certctl_operator;
	GRANT EXECUTE ON FUNCTION certctl_sched.pause(text), certctl_sched.resume(text), certctl_sched.run_now(text),
		certctl_sched.run_loop(text, timestamptz) TO certctl_operator;
	GRANT EXECUTE ON PROCEDURE certctl_sched.run(text, timestamptz) TO certctl_operator;
	GRANT pg_monitor TO certctl_operator;});
$node->append_conf('postgresql.conf', "certctl_sched.role = 'certctl_scheduler'\n");
$node->restart;
is($node->safe_psql('certctl',
	"SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'"),
	'certctl_scheduler', 'the workers connect as the dedicated role');
is(run_loop_now($_), 'ok', "$_ runs as the dedicated role") for qw(renewal job_processor agent_health short_lived_expiry);
# (the operator's own session)
sub as_operator { $node->safe_psql('certctl', $_[0], extra_params => ['-U', 'certctl_operator']) }
as_operator("SELECT certctl_sched.pause('agent_health')");
CertctlTest::poll_ok($node, "SELECT state = 'paused' FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'the operator pauses a loop');
is($node->safe_psql('certctl', "SELECT changed_by FROM certctl_sched.loop_control WHERE loop = 'agent_health'"),
	'certctl_operator', 'recorded as the operator\'s change');
as_operator("SELECT certctl_sched.resume('agent_health')");
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'and resumes it');
is(as_operator("SELECT status FROM certctl_sched.run_loop('agent_health')"), 'ok', 'the operator runs a loop');
as_operator("CALL certctl_sched.run('agent_health')");
is($node->safe_psql('certctl',
	"SELECT status FROM certctl_sched.run_history WHERE trigger = 'run' ORDER BY id DESC LIMIT 1"), 'ok',
	'and runs it as the worker does');
($ret, $out, $err) = $node->psql('certctl', "SELECT certctl_sched.pause('renewal')",
	extra_params => ['-U', 'certctl']);
like($err, qr/permission denied for function pause/, 'the table owner cannot control the loops');

# --- 5. a session holding a loop's lock stops the loop; loop_status() names it
my $holder = $node->background_psql('certctl');
$holder->query_safe("SELECT pg_advisory_lock(classid, objid) FROM certctl_sched.lock_key('agent_health')");
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('agent_health')");
CertctlTest::poll_ok($node,
	"SELECT last_result = 'skipped_locked' AND lock_holder = $holder_pid FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'loop_status() shows who holds the lock');
$holder->quit;
CertctlTest::poll_ok($node, "SELECT lock_holder IS NULL FROM certctl_sched.loops WHERE loop = 'agent_health'",
	'and nobody once it is released');

$node->stop;
done_testing();
