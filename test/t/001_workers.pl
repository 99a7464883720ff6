# Workers: one per loop in pg_stat_activity, waiting for CREATE EXTENSION, DROP EXTENSION, restart after
# pg_terminate_backend, a missing database without a restart storm, several databases, an invalid database
# list (refused by ALTER SYSTEM; in the file: no workers, one log line, the server up), too few worker slots,
# no preload.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $node = CertctlTest::node('workers', create_extension => 0,
	conf => { job_processor_interval => '200ms', short_lived_expiry_interval => '5s' });

# one worker per implemented loop, each with its own backend_type, idle on its latch
CertctlTest::poll_ok($node,
	"SELECT count(*) = 6 FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'
	   AND wait_event_type = 'Extension' AND datname = 'certctl'",
	'six workers waiting on their latch');
is($node->safe_psql('certctl',
	"SELECT string_agg(backend_type, ',' ORDER BY backend_type) FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'"),
	'certctl_sched agent_health,certctl_sched job_processor,certctl_sched network_scan,certctl_sched notifications,certctl_sched renewal,certctl_sched short_lived_expiry',
	'backend types name the loops');

# before CREATE EXTENSION: one log line per enabled worker, then quiet
ok($node->wait_for_log(qr/certctl_sched "job_processor" worker is waiting for CREATE EXTENSION certctl_sched in database "certctl"/),
	'worker says it waits for the extension');
my $jp_pid = CertctlTest::worker_pid($node, 'job_processor');

# CREATE EXTENSION wakes the workers: the job processor runs at once, short_lived_expiry only after one interval
$node->safe_psql('certctl', 'CREATE EXTENSION certctl_sched');
CertctlTest::poll_ok($node,
	"SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND status = 'ok'",
	'job processor runs once the extension exists');
is($node->safe_psql('certctl',
	"SELECT runs = 0 AND next_run > now() FROM certctl_sched.loops WHERE loop = 'short_lived_expiry'"),
	't', 'short_lived_expiry does not run at start');
CertctlTest::poll_ok($node,
	"SELECT runs > 0 FROM certctl_sched.loops WHERE loop = 'short_lived_expiry'",
	'short_lived_expiry runs after one interval');
is(CertctlTest::log_count($node, qr/"job_processor" worker is waiting for CREATE EXTENSION/), 1,
	'the waiting message was logged once');
is($node->safe_psql('certctl',
	"SELECT string_agg(loop || '=' || state, ',' ORDER BY loop) FROM certctl_sched.loops
	  WHERE loop IN ('notifications', 'network_scan', 'renewal')"),
	'network_scan=disabled,notifications=disabled,renewal=disabled',
	'disabled loops say so');

# DROP EXTENSION: the workers go quiet instead of failing, and come back with the extension
$node->safe_psql('certctl', 'DROP EXTENSION certctl_sched');
ok($node->wait_for_log(qr/"job_processor" worker is waiting for CREATE EXTENSION.*\n(?:.*\n)*.*"job_processor" worker is waiting for CREATE EXTENSION/),
	'worker waits again after DROP EXTENSION');
is(CertctlTest::worker_pid($node, 'job_processor'), $jp_pid, 'same worker process, no crash');
$node->safe_psql('certctl', 'CREATE EXTENSION certctl_sched');
CertctlTest::poll_ok($node,
	"SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND status = 'ok'",
	'runs resume after CREATE EXTENSION');

# pg_terminate_backend on one worker: it exits at once and the postmaster starts it again after its delay
my $offset = -s $node->logfile;
$node->safe_psql('certctl', "SELECT pg_terminate_backend($jp_pid)");
ok($node->wait_for_log(qr/certctl_sched "job_processor" worker shutting down/, $offset), 'terminated worker exits');
CertctlTest::poll_ok($node,
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'certctl_sched job_processor' AND pid <> $jp_pid",
	'terminated worker is restarted');
$node->stop;

# a database that does not exist yet: one clear FATAL per worker, no restart storm, then it connects
my $bad = PostgreSQL::Test::Cluster->new('baddb');
$bad->init;
$bad->append_conf('postgresql.conf', "shared_preload_libraries = 'certctl_sched'\ncertctl_sched.database = 'later'\n");
$bad->start;
ok($bad->wait_for_log(qr/FATAL:  database "later" does not exist\n.*CONTEXT:  certctl_sched "renewal" worker connecting to database "later" \(certctl_sched.database\)/),
	'missing database: a FATAL that names the setting');
$bad->safe_psql('postgres', 'CREATE DATABASE later');
ok($bad->poll_query_until('later',
	"SELECT count(*) = 6 FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'"),
	'workers connect once the database exists');
# (a worker that starts late may find the database already there: at most one failed attempt per worker)
my $fatals = CertctlTest::log_count($bad, qr/FATAL:  database "later" does not exist/);
ok($fatals >= 1 && $fatals <= 6, "at most one failed attempt per worker ($fatals)");
$bad->stop;

# several databases: a worker per loop in each, each running its loops in its own database
my $two = PostgreSQL::Test::Cluster->new('two');
$two->init;
$two->append_conf('postgresql.conf', "shared_preload_libraries = 'certctl_sched'\ncertctl_sched.database = 'one, two'\n"
	  . "max_worker_processes = 16\ncertctl_sched.job_processor_interval = '200ms'\n");
$two->start;
for my $db (qw(one two))
{
	$two->safe_psql('postgres', "CREATE DATABASE $db");
	$two->safe_psql($db, slurp_file("$CertctlTest::srcdir/test/certctl_schema.sql") . 'CREATE EXTENSION certctl_sched');
}
ok($two->poll_query_until('one',
	"SELECT count(DISTINCT database) = 2 AND bool_and(runs > 0) FROM certctl_sched.loops WHERE loop = 'job_processor'"),
	'the loops run in both databases');
is($two->safe_psql('one', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'"), '12',
	'six workers per database');
is($two->safe_psql('two', "SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor'"), 't',
	'each database keeps its own history');

# an invalid list of databases: ALTER SYSTEM refuses it ...
for my $bad ("'one,one'", "'one,,two'", "''", "'" . join(',', map { "d$_" } 1 .. 17) . "'")
{
	my ($ret, $out, $err) = $two->psql('postgres', "ALTER SYSTEM SET certctl_sched.database = $bad");
	like($err, qr/invalid value for parameter "certctl_sched.database"/, "ALTER SYSTEM refuses $bad");
}
# ... and written to the file by hand, it starts no worker: one log line, the server stays up, no other database
$two->append_conf('postgresql.conf', "certctl_sched.database = 'one,one'\n");
$two->restart;
ok($two->log_contains(qr/LOG:  certctl_sched starts no workers: invalid value for parameter "certctl_sched.database": "one,one"\n.*DETAIL:  Database "one" is listed twice/),
	'a duplicate database: one clear log line');
is($two->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'"), '0',
	'and no worker, in no database');
$two->stop;

# too few worker slots: a log line saying how many are needed
my $small = PostgreSQL::Test::Cluster->new('small');
$small->init;
$small->append_conf('postgresql.conf', "shared_preload_libraries = 'certctl_sched'\nmax_worker_processes = 3\n");
$small->start;
ok($small->log_contains(qr/certctl_sched needs 6 background worker slots, but max_worker_processes is 3/),
	'too few slots are reported');
ok($small->log_contains(qr/HINT:  Set max_worker_processes to at least 7/), 'with the number to set');
$small->stop;

# loaded without preload: CREATE EXTENSION warns, status functions refuse clearly, run_loop still works
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
my ($ret, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION certctl_sched');
is($ret, 0, 'CREATE EXTENSION works without preload');
like($err, qr/WARNING:  certctl_sched is not loaded via shared_preload_libraries, so its loops do not run/,
	'and warns that the loops do not run');
($ret, $out, $err) = $plain->psql('postgres', 'SELECT * FROM certctl_sched.loops');
like($err, qr/ERROR:  certctl_sched is not loaded via shared_preload_libraries\nHINT:  Add certctl_sched to shared_preload_libraries/,
	'loop_status() says why it cannot answer');
$plain->stop;

done_testing();
