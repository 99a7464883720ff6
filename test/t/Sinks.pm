# Local receivers for the TAP tests: runs test/sinks/*.py as child processes, reads their logs, stops them.
#
#   my $certs = Sinks::make_certs();                  # test CA and certificates (test/sinks/make_certs.sh)
#   my $http  = Sinks::start_http(tls => $certs);     # HTTPS with $certs/server.pem; $http->url('/r/200')
#   my $smtp  = Sinks::start_smtp(mode => 'starttls', tls => $certs, auth => 'user:secret');
#   my $scan  = Sinks::start_tls(listeners => [ { host => '127.0.1.1', port => 0, kind => 'tls',
#                                                  cert => "$certs/rsa.pem", key => "$certs/rsa.key" } ]);
#   my @got   = $http->wait_entries(3);               # log lines as hashes, once there are 3 (or at timeout)
#   $http->stop;                                      # also done at END for every sink still running
#
# Each sink lives in a directory (option dir, default a new PostgreSQL::Test::Utils::tempdir) holding
# NAME.ready, NAME.log and NAME.out (its stdout and stderr), NAME being option name (default kind and a
# number: http1, smtp1, tls1...).  Sinks exit by themselves when this process dies (their stdin is a pipe).
package Sinks;

use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use PostgreSQL::Test::Utils;

our $sinkdir = abs_path(dirname(__FILE__) . '/../sinks');
our $python = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';    # Debian's, which sees aiosmtpd

my $json = JSON::PP->new->utf8->canonical;
my %started;    # kind => how many were started, for default names
my @running;    # sinks not stopped yet

# Creates the test certificates in $dir (default: a new tempdir) and returns that directory.
sub make_certs
{
	my ($dir) = @_;
	$dir //= PostgreSQL::Test::Utils::tempdir('certs');
	system('sh', "$sinkdir/make_certs.sh", $dir) == 0 or die "make_certs.sh $dir failed";
	return $dir;
}

# Starts test/sinks/http_sink.py.  Options: host (default 127.0.0.1), port (default 0: picked),
# tls (a make_certs directory: serve HTTPS with its server.pem), dir, name.
sub start_http
{
	my (%opt) = @_;
	my @args = _listen_args(%opt);
	push @args, _tls_args($opt{tls}) if $opt{tls};
	return _start('http', 'http_sink.py', \@args, %opt, scheme => $opt{tls} ? 'https' : 'http');
}

# Starts test/sinks/smtp_sink.py.  Options: host, port, mode (plain, starttls, starttls-required, smtps),
# tls (a make_certs directory, needed by the TLS modes), auth ('user:password'), reject_rcpt (an address or
# a list of them), fail_data (true: 451 at the end of DATA), dir, name.
sub start_smtp
{
	my (%opt) = @_;
	my @args = (_listen_args(%opt), '--mode', $opt{mode} // 'plain');
	push @args, _tls_args($opt{tls}) if $opt{tls};
	push @args, '--auth', $opt{auth} if defined $opt{auth};
	my $reject = $opt{reject_rcpt} // [];
	push @args, map { ('--reject-rcpt', $_) } ref $reject ? @$reject : ($reject);
	push @args, '--fail-data' if $opt{fail_data};
	return _start('smtp', 'smtp_sink.py', \@args, %opt, scheme => ($opt{mode} // '') eq 'smtps' ? 'smtps' : 'smtp');
}

# Starts test/sinks/tls_servers.py with the listeners given (option listeners: a list of hashes as in its
# --config; relative cert and key paths are taken from dir), dir, name.  $sink->listeners tells the ports.
sub start_tls
{
	my (%opt) = @_;
	my $dir = $opt{dir} //= PostgreSQL::Test::Utils::tempdir('sink');
	my $name = $opt{name} //= _default_name('tls');
	my $config = "$dir/$name.json";
	open my $fh, '>', $config or die "could not write $config: $!";
	print $fh $json->encode($opt{listeners});
	close $fh or die "could not write $config: $!";
	return _start('tls', 'tls_servers.py', [ '--config', $config ], %opt);
}

# Returns $n consecutive IPv4 addresses from $first ('127.0.1.1', 300 gives 127.0.1.1 .. 127.0.2.44).
sub addresses
{
	my ($first, $n) = @_;
	my $start = unpack('N', pack('C4', split /\./, $first));
	return map { join '.', unpack('C4', pack('N', $start + $_)) } 0 .. $n - 1;
}

# The port a HTTP or SMTP sink listens on.
sub port { return $_[0]{port} }

# The URL of a path on a HTTP sink (http or https), or of a SMTP sink with no path (smtp or smtps).
sub url
{
	my ($self, $path) = @_;
	return "$self->{scheme}://$self->{host}:$self->{port}" . ($path // '');
}

# The listeners of a TLS sink, as in its ready file: a list of { host, port, kind } in config order.
sub listeners { return @{ $_[0]{listeners} } }

# Returns the sink's log as a list of hashes, one per complete line (see each script for the fields).
sub entries
{
	my ($self) = @_;
	return () unless -e $self->{log};
	my $text = slurp_file($self->{log});
	$text =~ s/[^\n]*\z//;    # a line still being written
	return map { $json->decode($_) } split /\n/, $text;
}

# Polls the log until it holds at least $n entries or timeout_default seconds pass; returns the entries.
sub wait_entries
{
	my ($self, $n) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	my @entries;
	sleep 0.02 until (@entries = $self->entries) >= $n || time > $deadline;
	return @entries;
}

# Stops the sink (SIGTERM, then SIGKILL if it lingers) and reaps it; returns its wait status.
sub stop
{
	my ($self) = @_;
	return $self->{status} unless $self->{pid};
	kill 'TERM', $self->{pid};
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (waitpid($self->{pid}, WNOHANG) == 0)
	{
		kill 'KILL', $self->{pid} if time > $deadline;
		sleep 0.02;
	}
	$self->{status} = $?;
	_forget($self);
	return $self->{status};
}

# The --host/--port arguments of a sink.
sub _listen_args
{
	my (%opt) = @_;
	return ('--host', $opt{host} // '127.0.0.1', '--port', $opt{port} // 0);
}

# The --tls-cert/--tls-key arguments for the server certificate of a make_certs directory.
sub _tls_args
{
	my ($certs) = @_;
	return ('--tls-cert', "$certs/server.pem", '--tls-key', "$certs/server.key");
}

# The next default name for a sink of a kind: http1, http2...
sub _default_name
{
	my ($kind) = @_;
	return $kind . ++$started{$kind};
}

# Runs a sink script with its arguments plus the common ones, waits for its ready file and returns the sink.
sub _start
{
	my ($kind, $script, $args, %opt) = @_;
	my $dir = $opt{dir} // PostgreSQL::Test::Utils::tempdir('sink');
	my $name = $opt{name} // _default_name($kind);
	my $self = bless {
		kind => $kind,
		name => $name,
		host => $opt{host} // '127.0.0.1',
		scheme => $opt{scheme},
		owner => $$,
		map { ($_ => "$dir/$name.$_") } qw(ready log out)
	}, 'Sinks';
	unlink $self->{ready};
	_spawn($self, "$sinkdir/$script", @$args, '--ready', $self->{ready}, '--log', $self->{log}, '--stdin-watch');
	push @running, $self;
	_wait_ready($self);
	return $self;
}

# Forks and execs python on the script: stdin a pipe whose end we keep, stdout and stderr to the .out file.
sub _spawn
{
	my ($self, @command) = @_;
	pipe(my $reader, my $writer) or die "pipe: $!";
	my $pid = fork // die "fork: $!";
	if ($pid == 0)
	{
		# the child must not die (that would run this process's END blocks): exec, or else _exit
		open(STDIN, '<&', $reader) or POSIX::_exit(126);
		open(STDOUT, '>>', $self->{out}) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(126);
		$ENV{PYTHONDONTWRITEBYTECODE} = 1;    # no __pycache__ in test/sinks
		exec { $python } $python, @command or print STDERR "could not run $python: $!\n";
		POSIX::_exit(127);
	}
	close $reader;
	@$self{qw(pid stdin)} = ($pid, $writer);
}

# Polls the ready file until it is there, then reads the port(s); dies if the sink exits or takes too long.
sub _wait_ready
{
	my ($self) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	until (-s $self->{ready})
	{
		if (waitpid($self->{pid}, WNOHANG) == $self->{pid})
		{
			_forget($self);
			die "sink $self->{name} exited ($?) before it was ready:\n" . slurp_file($self->{out});
		}
		if (time > $deadline)
		{
			$self->stop;
			die "sink $self->{name} not ready after $PostgreSQL::Test::Utils::timeout_default s:\n"
			  . slurp_file($self->{out});
		}
		sleep 0.02;
	}
	my $ready = slurp_file($self->{ready});
	if ($self->{kind} eq 'tls') { $self->{listeners} = $json->decode($ready) }
	else { ($self->{port}) = $ready =~ /(\d+)/ }
}

# Marks a sink as no longer running; closes its stdin only now, as that end of file would race with SIGTERM.
sub _forget
{
	my ($self) = @_;
	close $self->{stdin};
	delete $self->{pid};
	@running = grep { $_ != $self } @running;
}

# Stops the sinks this process started and did not stop, keeping the exit status of the test.
END
{
	local $?;
	my @mine = grep { $_->{owner} == $$ } @running;    # a copy: stop() changes @running
	$_->stop for @mine;
}

1;
