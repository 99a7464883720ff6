-- x509: the fields the network scan records for a certificate, against what certctl's Go code records for the same
-- certificates (test/x509_cases: 20 certificates and expected.tsv, see its README): fingerprint, common name, DNS
-- names, serial, issuer and subject DN in Go's pkix.Name.String() form, validity, key algorithm and size, CA flag,
-- PEM; and the certificates certctl refuses
\set SHOW_CONTEXT never
CREATE TEMP TABLE expected (case_name text, error text, fingerprint_sha256 text, common_name text, sans text[],
	serial_number text, issuer_dn text, subject_dn text, not_before timestamptz, not_after timestamptz,
	key_algorithm text, key_size int, is_ca bool, pem_data text);
DO $$
BEGIN
	EXECUTE format('COPY expected FROM %L WITH (FORMAT text, HEADER true)',
		current_setting('data_directory') || '/../../test/x509_cases/expected.tsv');
END $$;

-- each case's fields, or the error that refuses it
CREATE FUNCTION pg_temp.fields(case_name text) RETURNS SETOF expected LANGUAGE plpgsql AS $$
DECLARE
	pem text := pg_read_file(current_setting('data_directory') || '/../../test/x509_cases/' || case_name || '.pem');
	r expected;
BEGIN
	r.case_name := case_name;
	BEGIN
		SELECT * INTO r.fingerprint_sha256, r.common_name, r.sans, r.serial_number, r.issuer_dn, r.subject_dn,
			r.not_before, r.not_after, r.key_algorithm, r.key_size, r.is_ca, r.pem_data
		FROM certctl_sched._x509_fields(pem);
	EXCEPTION WHEN OTHERS THEN
		r.error := regexp_replace(SQLERRM, '^certificate not recordable: ', '');
	END;
	RETURN NEXT r;
END $$;
CREATE TEMP TABLE got AS SELECT f.* FROM expected e, pg_temp.fields(e.case_name) f;

SELECT count(*) AS cases FROM expected;
-- every column of every case equals certctl's, except the one departure: validity times OpenSSL does not read (a
-- UTCTime without seconds, or with an offset, which RFC 5280 forbids and Go accepts) make the certificate refused
SELECT case_name, error FROM got WHERE case_name = '17_crafted_strings_times';
SELECT g.case_name, c.col, c.expected, c.got
FROM got g JOIN expected e USING (case_name)
CROSS JOIN LATERAL (VALUES
	('error', e.error, g.error),
	('fingerprint_sha256', e.fingerprint_sha256, g.fingerprint_sha256),
	('common_name', e.common_name, g.common_name),
	('sans', e.sans::text, g.sans::text),
	('serial_number', e.serial_number, g.serial_number),
	('issuer_dn', e.issuer_dn, g.issuer_dn),
	('subject_dn', e.subject_dn, g.subject_dn),
	('not_before', e.not_before::text, g.not_before::text),
	('not_after', e.not_after::text, g.not_after::text),
	('key_algorithm', e.key_algorithm, g.key_algorithm),
	('key_size', e.key_size::text, g.key_size::text),
	('is_ca', e.is_ca::text, g.is_ca::text),
	('pem_data', e.pem_data, g.pem_data)) AS c(col, expected, got)
WHERE c.expected IS DISTINCT FROM c.got AND g.case_name <> '17_crafted_strings_times'
ORDER BY 1, 2;

-- a few values, to read
SELECT case_name, serial_number, key_algorithm, key_size, is_ca, subject_dn FROM got
WHERE case_name IN ('02_rsa2048_leaf', '03_ec_p256_nosan', '06_ed25519', '09_multi_cn', '12_escaping')
ORDER BY 1;
SELECT certctl_sched._x509_fields('not a certificate');

-- more of Go's rules (test/x509_cases/extra): a DNS name that is not ASCII, a curve other than NIST's, characters
-- a PrintableString or an IA5String may not hold, a BMPString noncharacter are refused; a BMPString's terminating
-- U+0000 is dropped; an OID of any length is printed whole
SELECT f.case_name, coalesce(f.error, 'recorded: ' || f.subject_dn) AS result
FROM unnest(ARRAY['extra/san_ff', 'extra/k1', 'extra/printable_at', 'extra/ia5_latin1', 'extra/bmp_fdd0',
	'extra/bmp_term', 'extra/longoid']) AS c, pg_temp.fields(c) f
ORDER BY 1;
