# Shared set-up for certctl_sched's TAP tests: a node with the library preloaded and a certctl database.
package CertctlTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use File::Basename qw(dirname);

our $srcdir = dirname(dirname(dirname(__FILE__)));    # repository root

# Returns a started node with database "certctl" holding certctl's schema and the extension created
# (unless create_extension => 0), certctl_sched preloaded for that database, every loop disabled but
# those given in %conf, which maps setting names (without the prefix) to values.  With owner => ROLE,
# that ordinary role (LOGIN, created here) owns the database and certctl's tables, as in a real certctl
# deployment; otherwise the bootstrap superuser does.  With schema => 'head', certctl's tables are today's
# (test/certctl_schema_head.sql) rather than 4d59fd1's.
sub node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	$node->append_conf('postgresql.conf', "max_worker_processes = 16\nlog_min_messages = warning\n");
	$node->start;
	my $schema = slurp_file("$srcdir/test/" . (($opt{schema} // '') eq 'head' ? 'certctl_schema_head.sql' : 'certctl_schema.sql'));
	if ($opt{owner})
	{
		$node->safe_psql('postgres', "CREATE ROLE $opt{owner} LOGIN; CREATE DATABASE certctl OWNER $opt{owner}");
		$node->safe_psql('certctl', $schema, extra_params => ['-U', $opt{owner}]);
	}
	else
	{
		$node->safe_psql('postgres', 'CREATE DATABASE certctl');
		$node->safe_psql('certctl', $schema);
	}
	my $conf = "shared_preload_libraries = 'certctl_sched'\ncertctl_sched.database = 'certctl'\n";
	for my $loop (qw(renewal job_processor agent_health notifications short_lived_expiry network_scan))
	{
		$conf .= "certctl_sched.${loop}_interval = -1\n" unless exists $opt{conf}{"${loop}_interval"};
	}
	$conf .= "certctl_sched.$_ = '$opt{conf}{$_}'\n" for sort keys %{ $opt{conf} // {} };
	$conf .= $opt{extra} // '';
	$node->append_conf('postgresql.conf', $conf);
	$node->restart;
	$node->safe_psql('certctl', 'CREATE EXTENSION certctl_sched') if $opt{create_extension} // 1;
	return $node;
}

# Adds n online agents with a stale heartbeat (and a deployment target each) to the certctl database.
sub stale_agents
{
	my ($node, $n, $prefix) = @_;
	$prefix //= 'agent';
	$node->safe_psql('certctl', qq{
		INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, api_key_hash)
		SELECT '$prefix-' || i, '$prefix-' || i, 'host-' || i, 'Online', now() - interval '1 day', 'x'
		FROM generate_series(1, $n) i});
}

# Installs a statement-level trigger on agents whose behaviour the test controls through table test_ctl:
# every UPDATE of agents sleeps test_ctl.sleep seconds, then raises an error if test_ctl.fail.
sub control_trigger
{
	my ($node) = @_;
	$node->safe_psql('certctl', q{
		CREATE TABLE test_ctl (sleep float8 NOT NULL DEFAULT 0, fail boolean NOT NULL DEFAULT false);
		INSERT INTO test_ctl DEFAULT VALUES;
		CREATE FUNCTION test_ctl_trigger() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
		DECLARE c test_ctl;
		BEGIN
			SELECT * INTO c FROM test_ctl;
			PERFORM pg_sleep(c.sleep);
			IF c.fail THEN RAISE EXCEPTION 'test_ctl says fail'; END IF;
			RETURN NULL;
		END $$;
		CREATE TRIGGER test_ctl AFTER UPDATE ON agents FOR EACH STATEMENT EXECUTE FUNCTION test_ctl_trigger();});
}

# Waits until a commit on the node waits for synchronous replication, i.e. the checkpointer has published
# synchronous_standby_names (set before the node's start): a probe session commits with synchronous_commit = on,
# is seen waiting in SyncRep, and is cancelled (its commit then completes locally).
sub wait_sync_rep_published
{
	my ($node) = @_;
	my $probe = $node->background_psql('certctl', on_error_stop => 0);
	my $pid = $probe->query_safe('SELECT pg_backend_pid()');
	$probe->query_safe('SET synchronous_commit = on');
	for (my $n = 0;; $n++)
	{
		# a transaction that writes WAL, whose commit waits for the standby once the setting is in force (not a
		# temporary table: dropping it at the session's exit would wait too, and hold up a fast shutdown)
		$probe->query_until(qr/probe_sent/,
			"\\echo probe_sent\nCREATE TABLE sync_probe_$n ();\n");
		$node->poll_query_until('certctl', qq{
			SELECT CASE WHEN wait_event = 'SyncRep' THEN 'waiting'
						WHEN state = 'idle' AND query LIKE 'CREATE TABLE sync_probe_$n %' THEN 'done' END IS NOT NULL
			FROM pg_stat_activity WHERE pid = $pid}) or die 'probe session stuck';
		last if $node->safe_psql('certctl', "SELECT wait_event FROM pg_stat_activity WHERE pid = $pid") eq 'SyncRep';
	}
	$node->safe_psql('certctl', "SELECT pg_cancel_backend($pid)");
	$probe->quit;
}

# Returns the pid of a loop's worker (polling until it is up).
sub worker_pid
{
	my ($node, $loop) = @_;
	$node->poll_query_until('certctl',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'certctl_sched $loop'")
	  or die "worker $loop not running";
	return $node->safe_psql('certctl',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'certctl_sched $loop'");
}

# Polls until a query returns the expected value; fails the test with a name if it never does.
sub poll_ok
{
	my ($node, $sql, $name, $expected) = @_;
	ok($node->poll_query_until('certctl', $sql, $expected // 't'), $name);
}

# Returns the number of times a regex matches the node's log.
sub log_count
{
	my ($node, $re) = @_;
	my $log = slurp_file($node->logfile);
	my @m = ($log =~ /$re/g);
	return scalar @m;
}

1;
