# The network scan loop end to end, against TLS servers this test starts on loopback addresses: a /27 on two ports
# finds exactly the certificates served (RSA, ECDSA, Ed25519, a chain, an expired one, TLS 1.0), with the fields
# openssl x509 reads from the same files and DNs in Go's form; a rescan touches last_seen_at only; the interval is
# respected; silent and trickling peers cost one timeout; loopback needs allow_loopback; SIGTERM mid-scan; the
# worker racing run_loop() sessions.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CertctlTest;
use Sinks;

my $certs = Sinks::make_certs();
my @served = (
	[ '127.0.1.2', 'rsa' ], [ '127.0.1.3', 'ec' ], [ '127.0.1.4', 'ed25519' ], [ '127.0.1.5', 'chain' ],
	[ '127.0.1.6', 'expired' ], [ '127.0.1.7', 'names_full' ], [ '127.0.1.8', 'names_oids' ]);
my @listeners;
for my $group ('a', 'b')
{
	push @listeners, map { { host => $_->[0], port => 0, group => $group, kind => 'tls',
		cert => "$certs/$_->[1].pem", key => "$certs/$_->[1].key" } } @served;
}
# a TLS 1.0-only server, a silent one and a trickling one (port a), and 62 silent ones for the SIGTERM test
push @listeners, { host => '127.0.1.9', port => 0, group => 'a', kind => 'tls', cert => "$certs/ec.pem",
	key => "$certs/ec.key", max_version => 'TLSv1' };
push @listeners, { host => '127.0.1.20', port => 0, group => 'a', kind => 'silent' };
push @listeners, { host => '127.0.1.21', port => 0, group => 'a', kind => 'trickle' };
push @listeners, map { { host => $_, port => 0, group => 'a', kind => 'silent' } } Sinks::addresses('127.0.2.1', 62);
my $tls = Sinks::start_tls(listeners => \@listeners);
my ($port_a, $port_b) = map { $_->{port} } (($tls->listeners)[0], ($tls->listeners)[7]);
isnt($port_a, $port_b, "two ports ($port_a, $port_b)");

my $node = CertctlTest::node('scan', owner => 'certctl_app', schema => 'head',
	conf => { network_scan_interval => '1h', allow_loopback => 'on', shutdown_timeout => '30s' });
my $app = ['-U', 'certctl_app'];
sub app_sql { return $node->safe_psql('certctl', $_[0], extra_params => $app) }

# Runs the loop once from a session at now() + $offset; returns "status|rows|error".
sub run_loop
{
	my ($offset) = @_;
	return $node->safe_psql('certctl',
		"SELECT status, rows, error FROM certctl_sched.run_loop('network_scan', now() + interval '" . ($offset // '0 s') . "')");
}

# What openssl x509 reads from a certificate file: fingerprint, serial, dates, DNS names, as certctl stores them.
sub openssl_fields
{
	my ($file) = @_;
	my $out = `openssl x509 -in '$file' -noout -fingerprint -sha256 -serial -dateopt iso_8601 -startdate -enddate -ext subjectAltName 2>&1`;
	my ($fp) = $out =~ /Fingerprint=([0-9A-F:]+)/;
	my ($serial) = $out =~ /serial=([0-9A-F]+)/;
	my ($nb) = $out =~ /notBefore=(\S+ \S+)/;
	my ($na) = $out =~ /notAfter=(\S+ \S+)/;
	my @dns = $out =~ /DNS:([^,\s]+)/g;
	($fp = lc $fp) =~ s/://g;
	($serial = lc $serial) =~ s/^0+(?=.)//;
	return join '|', $fp, $serial, $nb, $na, @dns ? '{' . join(',', @dns) . '}' : '';
}

# ---------------------------------------------------------------------------------------------------------------
# a /27 of loopback addresses on two ports: exactly the certificates served, as openssl reads them
app_sql("INSERT INTO network_scan_targets (id, name, cidrs, ports, timeout_ms)
	VALUES ('lab', 'lab', '{127.0.1.0/27}', '{$port_a, $port_b}', 2000)");
like(run_loop(), qr/^ok\|1\|$/, 'one run scans the target');
my %want;
for my $s (@served)
{
	my ($ip, $name) = @$s;
	for my $port ($port_a, $port_b)
	{
		$want{"$ip:$port|" . openssl_fields("$certs/$name.pem")} = 1;
	}
}
$want{"127.0.1.5:$_|" . openssl_fields("$certs/intermediate.pem")} = 1 for ($port_a, $port_b);
$want{"127.0.1.9:$port_a|" . openssl_fields("$certs/ec.pem")} = 1;
my %got = map { $_ => 1 } split /\n/, $node->safe_psql('certctl', q{
	SELECT source_path || '|' || fingerprint_sha256 || '|' || serial_number || '|' ||
		to_char(not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') || '|' ||
		to_char(not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') || '|' || coalesce(sans::text, '')
	FROM discovered_certificates});
is_deeply(\%got, \%want, scalar(keys %want) . ' certificates: fingerprints, serials, dates and DNS names as openssl reads them');
is($node->safe_psql('certctl', "SELECT key_algorithm || ' ' || key_size || ' ' || is_ca FROM discovered_certificates
	WHERE source_path = '127.0.1.$_->[0]:$port_a' AND NOT is_ca"), $_->[1], "key of $_->[2]")
  for ([ 2, 'RSA 2048 false', 'rsa' ], [ 3, 'ECDSA 256 false', 'ec' ], [ 4, 'Ed25519 256 false', 'ed25519' ]);
is($node->safe_psql('certctl', "SELECT subject_dn FROM discovered_certificates WHERE source_path = '127.0.1.7:$port_a'"),
	'CN=full.example.com,OU=Platform+OU=Security,O=Example Corp,POSTALCODE=94105,STREET=1 Market Street,L=San Francisco,ST=California,C=US',
	'subject DN in Go\'s pkix.Name.String() form');
is($node->safe_psql('certctl', "SELECT subject_dn FROM discovered_certificates WHERE source_path = '127.0.1.8:$port_a'"),
	'SERIALNUMBER=SN-0042,CN=jdoe,1.2.840.113549.1.9.1=#0c106a646f65406578616d706c652e636f6d,'
	  . '0.9.2342.19200300.100.1.1=#13046a646f65,0.9.2342.19200300.100.1.25=#13076578616d706c65,'
	  . '0.9.2342.19200300.100.1.25=#1303636f6d',
	'attributes without a name in Go as OID=#hex, after the named ones');
is($node->safe_psql('certctl', "SELECT issuer_dn FROM discovered_certificates WHERE source_path = '127.0.1.5:$port_a' AND NOT is_ca"),
	'CN=certctl_sched test intermediate CA,O=certctl_sched tests', 'a chain: the leaf issued by the intermediate');
is($node->safe_psql('certctl', q{SELECT string_agg(DISTINCT source_format || '/' || agent_id || '/' || status, ',')
	FROM discovered_certificates}), 'network/server-scanner/Unmanaged', 'recorded as certctl records them');
my ($found, $new, $errors, $endpoints) = split /\|/, $node->safe_psql('certctl', q{
	SELECT certificates_found, certificates_new, errors_count, (SELECT details ->> 'endpoints' FROM audit_events
		WHERE action = 'discovery_scan_completed') FROM discovery_scans});
is("$found|$new", (scalar(keys %want)) . '|' . scalar(keys %want), 'the scan row counts them, all new');
is($endpoints, 60, '30 addresses (the /27 without network and broadcast) on two ports');
is($errors, 60 - 2 * 7 - 1, 'every other endpoint is an error (closed ports, silent, trickling)');
is($node->safe_psql('certctl', q{SELECT last_scan_certs_found IS NOT NULL AND last_scan_at IS NOT NULL
	FROM network_scan_targets WHERE id = 'lab'}), 't', 'the target\'s last scan is recorded');

# a rescan, once scan_interval_hours (6) has passed: last_seen_at only; not before
is(run_loop('5 hours'), 'ok|0|', 'not due after 5 hours');
my $before = $node->safe_psql('certctl', 'SELECT string_agg(id || first_seen_at || status, \',\' ORDER BY id) FROM discovered_certificates');
is(run_loop('6 hours'), 'ok|1|', 'due again after 6');
is($node->safe_psql('certctl', 'SELECT string_agg(id || first_seen_at || status, \',\' ORDER BY id) FROM discovered_certificates'),
	$before, 'the same rows, first_seen_at and status unchanged');
is($node->safe_psql('certctl', q{SELECT count(*) FILTER (WHERE last_seen_at > first_seen_at) = count(*)
	AND count(DISTINCT discovery_scan_id) = 1 FROM discovered_certificates}), 't', 'last_seen_at and the scan moved on');
is($node->safe_psql('certctl', 'SELECT string_agg(certificates_new::text, \',\' ORDER BY started_at) FROM discovery_scans'),
	scalar(keys %want) . ',0', 'nothing new the second time');

# silent and trickling peers cost one timeout each, never a stuck run
app_sql("INSERT INTO network_scan_targets (id, name, cidrs, ports, timeout_ms)
	VALUES ('quiet', 'quiet', '{127.0.1.20, 127.0.1.21}', '{$port_a}', 1000)");
is(run_loop(), 'ok|1|', 'scanned');
is($node->safe_psql('certctl', q{SELECT string_agg(e ->> 'error', ' / ' ORDER BY e ->> 'endpoint')
	FROM audit_events, jsonb_array_elements(details -> 'errors') e WHERE details ->> 'target_id' = 'quiet'}),
	'timed out after 1000 ms while in the TLS handshake / timed out after 1000 ms while in the TLS handshake',
	'each cost its timeout');

# loopback is refused unless certctl_sched.allow_loopback
app_sql("UPDATE network_scan_targets SET last_scan_at = NULL WHERE id = 'quiet'");
is($node->safe_psql('certctl', q{SET certctl_sched.allow_loopback = off;
	SELECT status FROM certctl_sched.run_loop('network_scan')}), 'ok', 'run with allow_loopback off');
is($node->safe_psql('certctl', q{SELECT details -> 'notes' ->> 0 || ' ' || (details ->> 'endpoints') FROM audit_events
	WHERE details ->> 'target_id' = 'quiet' ORDER BY timestamp DESC LIMIT 1}),
	'127.0.1.20: 1 address not scanned (loopback) 0', 'nothing probed, the reason noted');
# the allowed networks, as written by hand (stray commas and spaces): the run goes on, leaving out what is outside
app_sql("UPDATE network_scan_targets SET last_scan_at = NULL WHERE id = 'quiet'");
is($node->safe_psql('certctl', q{SET certctl_sched.network_scan_allowed_networks = '10.0.0.0/8,, 192.168.0.0/16 ';
	SELECT status FROM certctl_sched.run_loop('network_scan')}), 'ok', 'run with network_scan_allowed_networks set');
like($node->safe_psql('certctl', q{SELECT details -> 'notes' ->> 0 FROM audit_events
	WHERE details ->> 'target_id' = 'quiet' ORDER BY timestamp DESC LIMIT 1}),
	qr/^127\.0\.1\.20: 1 address not scanned \(outside certctl_sched\.network_scan_allowed_networks\)$/, 'outside them: not probed');
app_sql("UPDATE network_scan_targets SET enabled = false WHERE id IN ('quiet', 'lab')");

# a target too slow to finish within a run does not keep the others from being scanned: the next run takes it last
$node->safe_psql('certctl', q{ALTER SYSTEM SET certctl_sched.network_scan_timeout = '3s';
	ALTER SYSTEM SET certctl_sched.network_scan_concurrency = 4; SELECT pg_reload_conf();});
$node->poll_query_until('certctl', "SELECT current_setting('certctl_sched.network_scan_concurrency') = '4'") or die;
app_sql("INSERT INTO network_scan_targets (id, name, cidrs, ports, timeout_ms) VALUES
	('a-slow', 'slow', '{127.0.2.0/27}', '{$port_a}', 2500), ('b-fast', 'fast', '{127.0.1.2}', '{$port_a}', 2000)");
is(run_loop(), 'ok|1|', 'the first run scans the slow target alone (it fills the batch) and is cut short');
is($node->safe_psql('certctl', q{SELECT string_agg(id || ':' || (last_scan_at IS NOT NULL), ' ' ORDER BY id)
	FROM network_scan_targets WHERE id IN ('a-slow', 'b-fast')}), 'a-slow:false b-fast:false', 'neither is scanned yet');
is($node->safe_psql('certctl', 'SELECT string_agg(target_id, \',\') FROM certctl_sched.scan_deferrals'), 'a-slow',
	'the slow one is deferred');
run_loop();
is($node->safe_psql('certctl', q{SELECT last_scan_at IS NOT NULL FROM network_scan_targets WHERE id = 'b-fast'}), 't',
	'the next run scans the other target first');
app_sql("UPDATE network_scan_targets SET enabled = false WHERE id IN ('a-slow', 'b-fast')");
$node->safe_psql('certctl', q{ALTER SYSTEM RESET certctl_sched.network_scan_timeout;
	ALTER SYSTEM RESET certctl_sched.network_scan_concurrency; SELECT pg_reload_conf();});
$node->poll_query_until('certctl', "SELECT current_setting('certctl_sched.network_scan_concurrency') = '256'") or die;

# ---------------------------------------------------------------------------------------------------------------
# SIGTERM mid-scan: the handshakes in flight are abandoned, the worker exits at once, what completed is recorded,
# and the target cut short is scanned again by the next run
app_sql("INSERT INTO network_scan_targets (id, name, cidrs, ports, timeout_ms) VALUES
	('silent', 'silent', '{127.0.2.0/26}', '{$port_a}', 60000),
	('served', 'served', '{127.0.1.2, 127.0.1.3}', '{$port_a}', 60000)");
my $silent_before = 0;
my $silent_seen = sub { scalar(grep { $_->{kind} eq 'silent' && $_->{host} =~ /^127\.0\.2\./ } $tls->entries) - $silent_before };
$silent_before = $silent_seen->();
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('network_scan')");
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
Time::HiRes::sleep(0.05) until $silent_seen->() >= 62 || time > $deadline;
is($silent_seen->(), 62, 'all 62 silent endpoints connected, waiting for their handshakes');
my $pid = CertctlTest::worker_pid($node, 'network_scan');
my $t0 = time;
$node->safe_psql('certctl', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('certctl', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid") or die 'worker did not exit';
my $took = time - $t0;
ok($took < 10, sprintf('the worker exits at once, not after the 60 s timeouts (%.1f s)', $took));
is($node->safe_psql('certctl', "SELECT status FROM certctl_sched.run_history WHERE loop = 'network_scan' ORDER BY id DESC LIMIT 1"),
	'interrupted', 'the run is recorded as interrupted');
is($node->safe_psql('certctl', q{SELECT string_agg(t.id || ':' || (t.last_scan_at IS NOT NULL) || ':' || (a.details ->> 'complete')
	|| ':' || s.errors_count, ' ' ORDER BY t.id)
	FROM network_scan_targets t JOIN audit_events a ON a.details ->> 'target_id' = t.id
	JOIN discovery_scans s ON s.id = a.resource_id WHERE t.id IN ('silent', 'served')}),
	'served:true:true:0 silent:false:false:62',
	'the completed target is recorded; the one cut short keeps no last scan, its endpoints counted unfinished');
is($node->safe_psql('certctl', q{SELECT count(*) FROM discovered_certificates d JOIN discovery_scans s ON s.id = d.discovery_scan_id
	JOIN audit_events a ON a.resource_id = s.id WHERE a.details ->> 'target_id' = 'served'}), '2',
	'its certificates are recorded');
app_sql("UPDATE network_scan_targets SET timeout_ms = 300 WHERE id = 'silent'");
CertctlTest::poll_ok($node, q{SELECT last_scan_at IS NOT NULL FROM network_scan_targets WHERE id = 'silent'},
	'the restarted worker scans the target cut short again');
app_sql("UPDATE network_scan_targets SET enabled = false WHERE id IN ('silent', 'served')");

# ---------------------------------------------------------------------------------------------------------------
# the worker and three run_loop() sessions racing: one scan per due target, no duplicate rows
app_sql("UPDATE network_scan_targets SET enabled = true, last_scan_at = NULL WHERE id = 'lab'");
my $scans_before = $node->safe_psql('certctl', 'SELECT count(*) FROM discovery_scans');
my $rows_before = $node->safe_psql('certctl', 'SELECT count(*) FROM discovered_certificates');
my $script = PostgreSQL::Test::Utils::tempdir('bench') . '/run_loop.sql';
append_to_file($script, "SELECT * FROM certctl_sched.run_loop('network_scan');\n");
my ($out, $err) = ('', '');
my $bench = IPC::Run::start(['pgbench', '--no-vacuum', '--client=3', '--transactions=20', '-f', $script,
	'-h', $node->host, '-p', $node->port, 'certctl'], '>', \$out, '2>', \$err);
$node->safe_psql('certctl', "SELECT certctl_sched.run_now('network_scan')");
$bench->finish;
like($out, qr{processed: 60/60}, 'three sessions ran the loop 20 times each, racing the worker');
CertctlTest::poll_ok($node, "SELECT state = 'idle' FROM certctl_sched.loops WHERE loop = 'network_scan'", 'worker idle');
is($node->safe_psql('certctl', "SELECT count(*) - $scans_before FROM discovery_scans"), '1', 'one scan of the target');
is($node->safe_psql('certctl', "SELECT count(*) - $rows_before FROM discovered_certificates"), '0',
	'no duplicate certificate rows');

$node->stop;
$tls->stop;
done_testing();
