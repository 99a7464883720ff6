# Hot standby and promotion: no worker and no run during recovery, loop_status() answers "standby", and the
# loops start within about a second of promotion.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $primary = CertctlTest::node('primary', init => { allows_streaming => 1 },
	conf => { job_processor_interval => '200ms' });
CertctlTest::poll_ok($primary,
	"SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor'", 'primary runs its loops');
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

is($standby->safe_psql('certctl', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'certctl_sched %'"),
	'0', 'no workers on the standby');
is($standby->safe_psql('certctl', "SELECT string_agg(DISTINCT state, ',') FROM certctl_sched.loops"), 'standby',
	'loop_status() works on the standby');

# the old primary goes away, the standby is promoted and its loops start
$primary->stop;
my $promoted_at = $standby->safe_psql('certctl', 'SELECT now()');
$standby->promote;
CertctlTest::poll_ok($standby,
	"SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND started_at > '$promoted_at'",
	'loops run after promotion');
ok($standby->safe_psql('certctl', qq{
	SELECT min(started_at) - '$promoted_at' < interval '5 s' FROM certctl_sched.run_history
	WHERE loop = 'job_processor' AND started_at > '$promoted_at'}) eq 't', 'promptly');
# (a 200 ms loop is sometimes caught mid-run: wait for it to be idle between runs)
CertctlTest::poll_ok($standby, "SELECT state = 'idle' AND pid IS NOT NULL FROM certctl_sched.loops WHERE loop = 'job_processor'",
	'and shows them idle between runs');

$standby->stop;
done_testing();
