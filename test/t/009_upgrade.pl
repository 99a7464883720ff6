# Upgrade: release 0.1 updated with ALTER EXTENSION UPDATE has the same objects, definitions, privileges and
# dump registrations as a fresh install; before the update, the new library waits, says why, and does not loop
# on errors.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CertctlTest;

my $node = CertctlTest::node('upgrade', create_extension => 0, conf => { job_processor_interval => '200ms' });

# Everything of the extension that a user, pg_dump or the workers depend on, one line per object property (an ACL
# with its entries in order: GRANT and REVOKE may leave the same privileges in another order).
my $catalog = q{
	CREATE FUNCTION pg_temp.sorted_acl(aclitem[]) RETURNS text[] LANGUAGE sql
		AS 'SELECT array_agg(a::text ORDER BY a::text) FROM unnest($1) a';
	WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'certctl_sched'),
	members AS (
		SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
		WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
	)
	SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM members
	UNION ALL
	SELECT format('function %s: kind %s, %s, strict %s, secdef %s, config %s, lang %s, result %s, args %s, acl %s, body %s, symbol %s',
		p.oid::regprocedure, p.prokind, p.provolatile, p.proisstrict, p.prosecdef, p.proconfig, l.lanname,
		pg_get_function_result(p.oid), pg_get_function_arguments(p.oid), pg_temp.sorted_acl(p.proacl), md5(p.prosrc), p.probin)
	FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
	WHERE p.pronamespace = 'certctl_sched'::regnamespace
	UNION ALL
	SELECT format('relation %s: kind %s, acl %s', c.oid::regclass, c.relkind, pg_temp.sorted_acl(c.relacl))
	FROM pg_class c WHERE c.relnamespace = 'certctl_sched'::regnamespace
	UNION ALL
	SELECT format('column %s.%s: %s, not null %s, identity %s, default %s', a.attrelid::regclass, a.attname,
		format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, pg_get_expr(ad.adbin, ad.adrelid))
	FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	WHERE c.relnamespace = 'certctl_sched'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT format('index %s', pg_get_indexdef(i.indexrelid))
	FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'certctl_sched'::regnamespace
	UNION ALL
	SELECT format('constraint %s on %s: %s', conname, conrelid::regclass, pg_get_constraintdef(oid))
	FROM pg_constraint WHERE connamespace = 'certctl_sched'::regnamespace
	UNION ALL
	SELECT format('trigger %s', pg_get_triggerdef(t.oid))
	FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	WHERE c.relnamespace = 'certctl_sched'::regnamespace AND NOT t.tgisinternal
	UNION ALL
	SELECT format('view %s: %s', c.oid::regclass, pg_get_viewdef(c.oid))
	FROM pg_class c WHERE c.relnamespace = 'certctl_sched'::regnamespace AND c.relkind = 'v'
	UNION ALL
	SELECT format('initial privileges of %s: %s', pg_describe_object(i.classoid, i.objoid, i.objsubid),
		pg_temp.sorted_acl(i.initprivs))
	FROM pg_init_privs i JOIN members m ON (m.classid, m.objid) = (i.classoid, i.objoid)
	UNION ALL
	SELECT format('config dump: %s %s', e.extconfig::regclass[], e.extcondition)
	FROM pg_extension e WHERE e.extname = 'certctl_sched'
	UNION ALL
	SELECT format('schema acl %s', pg_temp.sorted_acl(nspacl)) FROM pg_namespace WHERE nspname = 'certctl_sched'
	ORDER BY 1;};

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE updated');
$node->safe_psql('fresh', 'CREATE EXTENSION certctl_sched');
$node->safe_psql('updated', "CREATE EXTENSION certctl_sched VERSION '0.1'");
is($node->safe_psql('updated', "SELECT extversion FROM pg_extension WHERE extname = 'certctl_sched'"), '0.1',
	'release 0.1 installs with the new library');
$node->safe_psql('updated', 'ALTER EXTENSION certctl_sched UPDATE');
is($node->safe_psql('updated', "SELECT extversion FROM pg_extension WHERE extname = 'certctl_sched'"), '0.2',
	'ALTER EXTENSION UPDATE brings it to 0.2');
my @fresh = split /\n/, $node->safe_psql('fresh', $catalog);
my @updated = split /\n/, $node->safe_psql('updated', $catalog);
cmp_ok(scalar @fresh, '>', 50, 'the catalog description lists the objects (' . scalar(@fresh) . ' lines)');
is_deeply(\@updated, \@fresh, 'an updated 0.1 is identical to a fresh 0.2');

# the workers' database still at 0.1: they wait, say why, and do not fail in a loop
my $offset = -s $node->logfile;
$node->safe_psql('certctl', "CREATE EXTENSION certctl_sched VERSION '0.1'");
ok($node->wait_for_log(
	qr/LOG:  certctl_sched "job_processor" worker is waiting for ALTER EXTENSION certctl_sched UPDATE in database "certctl"\n.*DETAIL:  The extension is at version 0.1; this library needs version 0.2/,
	$offset), 'the workers say they wait for ALTER EXTENSION UPDATE');
is($node->safe_psql('fresh', q{
	SELECT string_agg(DISTINCT state || ': ' || last_error, '; ')
	FROM certctl_sched.loops WHERE database = 'certctl' AND interval IS NOT NULL}),
	'waiting_for_extension: extension "certctl_sched" is at version 0.1, but its library needs version 0.2: run ALTER EXTENSION certctl_sched UPDATE',
	'loop_status() (read from another database) shows the waiting state and the reason');
my ($ret, $out, $err) = $node->psql('certctl', 'SELECT * FROM certctl_sched.loops');
like($err, qr/ERROR:  function certctl_sched.loop_status\(\) returns 17 columns, but the certctl_sched library returns 18\nHINT:  Run ALTER EXTENSION certctl_sched UPDATE/,
	'the old status function fails clearly');
($ret, $out, $err) = $node->psql('certctl', "SELECT * FROM certctl_sched.run_loop('job_processor')");
like($err, qr/ERROR:  extension "certctl_sched" is at version 0.1, but its library needs version 0.2: run ALTER EXTENSION certctl_sched UPDATE/,
	'and so does run_loop()');
$node->poll_query_until('certctl', "SELECT now() > '" . $node->safe_psql('certctl', 'SELECT now()') . "'::timestamptz + interval '1 s'");
is(CertctlTest::log_count($node, qr/"job_processor" worker is waiting for ALTER EXTENSION/), 1, 'logged once');
unlike(substr(slurp_file($node->logfile), $offset), qr/\[\d+\] (ERROR|FATAL)/, 'no error in the workers');

# the update wakes them, and the loops run
$node->safe_psql('certctl', 'ALTER EXTENSION certctl_sched UPDATE');
CertctlTest::poll_ok($node,
	"SELECT count(*) > 0 FROM certctl_sched.run_history WHERE loop = 'job_processor' AND status = 'ok'",
	'after ALTER EXTENSION UPDATE the loops run');

$node->stop;
done_testing();
