#!/usr/bin/perl
# test/sinks/selftest.pl: checks the receivers in test/sinks through test/t/Sinks.pm (not part of the TAP suite).
# Run by hand as any user: perl test/sinks/selftest.pl.  Works in a temporary directory; needs curl, openssl
# and python3-aiosmtpd.  PG_CONFIG may name the pg_config whose PGXS holds PostgreSQL's test modules.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Temp ();
use FindBin;

our @libs;

BEGIN
{
	# PostgreSQL::Test::* come with PGXS; they keep a log in $TESTDIR/tmp_check, here a temporary directory
	my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
	chomp(my $pgxs = `$pg_config --pgxs`);
	die "$pg_config --pgxs failed\n" unless $pgxs;
	@libs = (dirname(dirname($pgxs)) . '/test/perl', "$FindBin::RealBin/../t");
	unshift @INC, @libs;
	$ENV{TESTDIR} //= File::Temp::tempdir('sinks_selftest_XXXX', TMPDIR => 1, CLEANUP => 1);
}

use IO::Select;
use IO::Socket::INET;
use IPC::Run;
use MIME::Base64 qw(decode_base64);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use Sinks;

my $certs = Sinks::make_certs();
my $work = PostgreSQL::Test::Utils::tempdir('work');

# Runs a command with empty stdin; returns its exit code, stdout and stderr.
sub run_cmd
{
	my @cmd = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '<', \'', '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# POSTs data to a URL with curl; returns curl's exit code and the response with its headers.
sub post
{
	my ($url, $data, @curl_opts) = @_;
	return run_cmd('curl', '-sS', '-i', '--cacert', "$certs/ca.pem", '-d', $data, @curl_opts, $url);
}

# The status code a POST to a URL gets.
sub status_of
{
	my ($url) = @_;
	my (undef, $out) = post($url, 'x');
	return $out =~ m{^HTTP/1.1 (\d+)} ? $1 : 'none';
}

# Writes a file in the work directory; returns its path.
sub write_file
{
	my ($name, $content) = @_;
	open my $fh, '>:raw', "$work/$name" or die "$work/$name: $!";
	print $fh $content;
	close $fh;
	return "$work/$name";
}

# Tells whether a process exists and is not a zombie.
sub alive
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return 0;
	return (split ' ', <$fh>)[2] ne 'Z';
}

# Polls until a process is gone (timeout_default); tells whether it went.
sub gone
{
	my ($pid) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	sleep 0.05 while alive($pid) && time < $deadline;
	return !alive($pid);
}

# The behaviours, control endpoints and log of http_sink.py.
sub test_http
{
	my $http = Sinks::start_http();
	my ($rc, $out) = post($http->url('/r/202'), '{"n":1}', '-H', 'Content-Type: application/json');
	like($out, qr{^HTTP/1.1 202 Accepted\r\n}, 'http: /r/202');
	(undef, $out) = post($http->url('/r/429?retry_after=7'), 'x');
	like($out, qr{^HTTP/1.1 429 .*^Retry-After: 7\r$}ms, 'http: 429 with Retry-After');
	is(join(' ', map { status_of($http->url('/r/seq/s/500,503,200')) } 1 .. 4), '500 503 200 200', 'http: seq');
	($rc, $out) = run_cmd('curl', '-sS', '-d', 'x', $http->url('/r/body/200/5000'));
	ok(length $out == 5000 && $out =~ /^01234567890123/, 'http: body of 5000 bytes');
	my $start = time;
	is(status_of($http->url('/r/slow/300/500')), 500, 'http: slow answer');
	cmp_ok(time - $start, '>=', 0.3, 'http: slow answer came after 300 ms');
	($rc) = run_cmd('curl', '-sS', '-m', '1', '-d', 'x', $http->url('/r/hang'));
	is($rc, 28, 'http: hang makes the client time out');
	is(status_of($http->url('/elsewhere')), 404, 'http: unknown path');
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $http->port) or die "connect: $!";
	print $sock "POST /r/200 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc";
	close $sock;
	my $binary = write_file('binary', join '', map { chr } 0 .. 255);
	is(status_of($http->url('/r/200')), 200, 'http: served after a client left mid-request');
	($rc, $out) = run_cmd('curl', '-sS', '-o', '/dev/null', '-o', '/dev/null', '-w', '%{num_connects},',
		'--data-binary', "\@$binary", $http->url('/r/204'), $http->url('/r/200'));
	is($out, '1,0,', 'http: keep-alive (two requests, one connection)');

	my @log = $http->wait_entries(13);
	is(scalar @log, 13, 'http: every request logged');
	is_deeply([ @{ $log[0] }{qw(method path query body body_base64 status)} ],
		[ 'POST', '/r/202', '', '{"n":1}', JSON::PP::false, 202 ], 'http: log record');
	is($log[0]{headers}{'content-type'}, 'application/json', 'http: headers logged');
	is($log[1]{query}, 'retry_after=7', 'http: query logged');
	is($log[8]{status}, undef, 'http: hang logged without status');
	ok($log[11]{body_base64} && decode_base64($log[11]{body}) eq join('', map { chr } 0 .. 255),
		'http: binary body logged as base64');

	(undef, $out) = run_cmd('curl', '-sS', $http->url('/_count'));
	is($out, '13', 'http: /_count');
	(undef, $out) = run_cmd('curl', '-sS', $http->url('/_requests'));
	is(scalar @{ JSON::PP::decode_json($out) }, 13, 'http: /_requests');
	run_cmd('curl', '-sS', '-X', 'POST', $http->url('/_reset'));
	is(status_of($http->url('/r/seq/s/500,503,200')), 500, 'http: /_reset restarts seq');
	(undef, $out) = run_cmd('curl', '-sS', $http->url('/_count'));
	is($out, '1', 'http: /_reset clears the records');
	is($http->stop, 0, 'http: stops cleanly');

	my $https = Sinks::start_http(tls => $certs);
	is(status_of($https->url('/r/201')), 201, 'https: 127.0.0.1 verified with the test CA');
	is(status_of('https://localhost:' . $https->port . '/r/200'), 200, 'https: localhost verified');
	is(scalar $https->wait_entries(2), 2, 'https: logged');
}

# Sends a message with curl to an SMTP URL; returns curl's exit code.
sub mail
{
	my ($url, @curl_opts) = @_;
	my $msg = write_file('msg.txt', "From: a\@example.com\r\nTo: b\@example.com\r\nSubject: sink test\r\n\r\nhello\r\n");
	my ($rc) = run_cmd('curl', '-sS', '--cacert', "$certs/ca.pem", '--mail-from', 'a@example.com',
		'--mail-rcpt', 'b@example.com', '--upload-file', $msg, @curl_opts, $url);
	return $rc;
}

# Returns the EHLO answer of an SMTP sink (plain connection).
sub ehlo
{
	my ($smtp) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $smtp->port) or die "connect: $!";
	my $banner = <$sock>;
	print $sock "EHLO client.test\r\n";
	my $answer = '';
	$answer .= <$sock> until $answer =~ /^250 /m;
	print $sock "QUIT\r\n";
	return $answer;
}

# Each mode, AUTH, rejected recipients and failed DATA of smtp_sink.py.
sub test_smtp
{
	my $plain = Sinks::start_smtp();
	my $url = $plain->url;
	is(mail($url), 0, 'smtp plain: sent');
	unlike(ehlo($plain), qr/AUTH|STARTTLS/, 'smtp plain: neither AUTH nor STARTTLS offered');
	my ($entry) = $plain->wait_entries(1);
	is_deeply([ @$entry{qw(mail_from rcpt_tos tls auth_user status)} ],
		[ 'a@example.com', ['b@example.com'], JSON::PP::false, undef, 250 ], 'smtp plain: logged');
	like($entry->{message}, qr/^Subject: sink test\r$/m, 'smtp plain: message logged');

	my $starttls = Sinks::start_smtp(mode => 'starttls', tls => $certs);
	$url = $starttls->url;
	is(mail($url), 0, 'smtp starttls: sent without TLS');
	is(mail($url, '--ssl-reqd'), 0, 'smtp starttls: sent with STARTTLS');
	is(join(',', map { $_->{tls} ? 'tls' : 'plain' } $starttls->wait_entries(2)), 'plain,tls', 'smtp starttls: logged');

	my $required = Sinks::start_smtp(mode => 'starttls-required', tls => $certs);
	$url = $required->url;
	is(mail($url), 55, 'smtp starttls-required: refused without TLS');
	is(mail($url, '--ssl-reqd'), 0, 'smtp starttls-required: sent with STARTTLS');

	my $smtps = Sinks::start_smtp(mode => 'smtps', tls => $certs);
	is(mail($smtps->url), 0, 'smtps: sent');
	is(mail('smtps://localhost:' . $smtps->port), 0, 'smtps: sent to localhost');
	like(($smtps->wait_entries(2))[1]{tls_version}, qr/^TLSv1\.[23]$/, 'smtps: logged under TLS');

	my $auth = Sinks::start_smtp(mode => 'starttls', tls => $certs, auth => 'user:s3cret',
		reject_rcpt => 'bad@example.com');
	$url = $auth->url;
	like(ehlo($auth), qr/^250-AUTH LOGIN PLAIN\r$/m, 'smtp auth: AUTH offered');
	is(mail($url, '--ssl-reqd', '--user', 'user:s3cret'), 0, 'smtp auth: PLAIN accepted');
	is(mail($url, '--user', 'user:s3cret', '--login-options', 'AUTH=LOGIN'), 0, 'smtp auth: LOGIN accepted');
	is(mail($url, '--ssl-reqd', '--user', 'user:wrong'), 67, 'smtp auth: wrong password refused');
	is(mail($url, '--ssl-reqd'), 55, 'smtp auth: MAIL refused without AUTH');
	is(mail($url, '--user', 'user:s3cret', '--mail-rcpt', 'bad@example.com'), 55, 'smtp: rejected recipient');
	is(join(',', map { "$_->{auth_user}/" . ($_->{tls} ? 'tls' : 'plain') } $auth->wait_entries(2)),
		'user/tls,user/plain', 'smtp auth: logged with the user');

	my $fail = Sinks::start_smtp(fail_data => 1);
	isnt(mail($fail->url), 0, 'smtp fail-data: refused');
	is(($fail->wait_entries(1))[0]{status}, 451, 'smtp fail-data: logged with 451');
	is($_->stop, 0, "smtp: $_->{name} stops cleanly") for $plain, $starttls, $required, $smtps, $auth, $fail;
}

# Runs openssl s_client against a listener; returns its output.
sub s_client
{
	my ($listener, @opts) = @_;
	my (undef, $out, $err) = run_cmd('openssl', 's_client', '-connect', "$listener->{host}:$listener->{port}",
		'-CAfile', "$certs/ca.pem", '-showcerts', @opts);
	return $out . $err;
}

# Handshakes with every kind of listener of tls_servers.py, and a port shared by 300 addresses.
sub test_tls
{
	my @group = Sinks::addresses('127.0.1.1', 300);
	my %leaf = map { ($_ => { kind => 'tls', cert => "$certs/$_.pem", key => "$certs/$_.key" }) }
	  qw(rsa ec ed25519 chain expired names_special);
	my @config = (
		(map { { host => '127.0.0.1', port => 0, %{ $leaf{$_} } } } qw(rsa ec ed25519 chain expired names_special)),
		{ host => '127.0.0.1', port => 0, %{ $leaf{rsa} }, min_version => 'TLSv1', max_version => 'TLSv1' },
		{ host => '127.0.0.1', port => 0, %{ $leaf{ec} }, min_version => 'TLSv1_3' },
		{ host => '127.0.0.2', port => 0, kind => 'silent' },
		{ host => '127.0.0.3', port => 0, kind => 'trickle' },
		map { { host => $_, port => 0, group => 'scan', %{ $leaf{ec} } } } @group);
	my $tls = Sinks::start_tls(listeners => \@config);
	my @l = $tls->listeners;
	is(scalar @l, @config, 'tls: every listener reported');

	like(s_client($l[0]), qr/CN = rsa\.test.*Server public key is 2048 bit.*Verify return code: 0 /s, 'tls: RSA');
	like(s_client($l[1]), qr/CN = ec\.test.*Server public key is 256 bit.*Verify return code: 0 /s, 'tls: ECDSA');
	like(s_client($l[2]), qr/CN = ed25519\.test.*Peer signature type: ed25519.*Verify return code: 0 /si,
		'tls: Ed25519');
	my $out = s_client($l[3]);
	is(scalar(() = $out =~ /^ ?\d s:/mg), 2, 'tls: chain of leaf and intermediate presented');
	like($out, qr/Verify return code: 0 /, 'tls: chain verifies');
	like(s_client($l[4]), qr/Verify return code: 10 \(certificate has expired\)/, 'tls: expired');
	like(s_client($l[5], '-nameopt', 'RFC2253'), qr/^subject=.*O=\\#hash first/m, 'tls: special subject');
	like(s_client($l[6], '-cipher', 'DEFAULT:@SECLEVEL=0'), qr/^ +Protocol +: TLSv1\n/m,
		'tls: TLS 1.0 only, client at SECLEVEL 0');
	like(s_client($l[6]), qr/Cipher is \(NONE\)/, 'tls: TLS 1.0 refused by a client at the default SECLEVEL');
	like(s_client($l[7], '-tls1_2'), qr/Cipher is \(NONE\)/, 'tls: TLS 1.3 only refuses TLS 1.2');
	like(s_client($l[7]), qr/^New, TLSv1\.3,/m, 'tls: TLS 1.3 only accepts TLS 1.3');

	my $silent = IO::Socket::INET->new(PeerAddr => $l[8]{host}, PeerPort => $l[8]{port}) or die "connect: $!";
	ok(!IO::Select->new($silent)->can_read(1), 'tls: silent sends nothing');
	my $trickle = IO::Socket::INET->new(PeerAddr => $l[9]{host}, PeerPort => $l[9]{port}) or die "connect: $!";
	my $start = time;
	my $got = '';
	while (length $got < 2) { sysread($trickle, $got, 10, length $got) or last }
	ok($got eq "\x16\x03" && time - $start > 0.9, 'tls: trickle sends a byte a second');

	my @scan = @l[ 10 .. $#l ];
	is(scalar(keys %{ { map { ($_->{port} => 1) } @scan } }), 1, 'tls: the group shares one port');
	like(s_client($scan[$_]), qr/CN = ec\.test/, "tls: $scan[$_]{host} answers") for 0, 150, 299;
	my @log = $tls->wait_entries(11);
	is($log[0]{tls_version}, 'TLSv1.3', 'tls: handshakes logged');
	is($tls->stop, 0, 'tls: stops cleanly');
}

# Sinks stop at END when the test forgets them, and when the test process is killed.
sub test_cleanup
{
	my $code = q{
		use Sinks;
		my @sinks = (Sinks::start_http(dir => $ARGV[0], name => "$ARGV[1]_http"),
			Sinks::start_smtp(dir => $ARGV[0], name => "$ARGV[1]_smtp"));
		open my $fh, '>', "$ARGV[0]/$ARGV[1].pids" or die;
		print $fh join ' ', map { $_->{pid} } @sinks;
		close $fh;
		sleep 600 if $ARGV[2];
	};
	my @perl = ($^X, (map { "-I$_" } @libs), '-e', $code, $work);
	system(@perl, 'forgotten', 0) == 0 or die 'perl failed';
	my @pids = split ' ', slurp_file("$work/forgotten.pids");
	is(scalar(grep { gone($_) } @pids), 2, 'cleanup: forgotten sinks are stopped at END');

	my $child = IPC::Run::start([ @perl, 'orphan', 1 ]);
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	sleep 0.05 until -s "$work/orphan.pids" || time > $deadline;
	@pids = split ' ', slurp_file("$work/orphan.pids");
	is(scalar(grep { alive($_) } @pids), 2, 'cleanup: sinks of a sleeping test run');
	$child->signal('KILL');
	$child->finish;
	is(scalar(grep { gone($_) } @pids), 2, 'cleanup: sinks exit when their test is killed');
}

test_http();
test_smtp();
test_tls();
test_cleanup();
done_testing();
