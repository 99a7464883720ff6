/*-------------------------------------------------------------------------
 *
 * x509.c
 *		The fields certctl's network scan records for every certificate a TLS
 *		peer presents, read with OpenSSL and formatted as certctl's Go code
 *		formats them; and the SQL test hook certctl_sched._x509_fields(pem).
 *
 * certctl (internal/service/network_scan.go, tlsCertToEntry) stores the
 * SHA-256 of the DER, Subject.CommonName, DNSNames, SerialNumber.Text(16),
 * Issuer.String() and Subject.String(), the validity, the key's algorithm
 * and size, IsCA and the PEM.  OpenSSL parses the certificate and gives each
 * value; what is Go's is the formatting:
 *	- the serial in lowercase hex without leading zeros (big.Int.Text(16));
 *	- the DN by pkix.Name.String()'s rules: every attribute (multi-valued RDNs
 *	  flattened) sorted into the RDN list Go builds — non-standard attributes
 *	  each its own RDN, then C, ST, L, STREET, POSTALCODE, O, OU (all values of
 *	  one type joined by '+'), the last CN and the last SERIALNUMBER unless
 *	  empty — printed last to first and joined by ','; values escape , + " \
 *	  < > ; always, '#' first, ' ' first or last; a non-standard attribute
 *	  prints as OID=#hex, the hex being the DER of its value re-encoded as Go's
 *	  encoding/asn1 would (PrintableString when every character allows it,
 *	  else UTF8String), encoded here by OpenSSL;
 *	- the key as "RSA", "ECDSA", "Ed25519", "DSA" (size 0) or "0" (size 0).
 * A few refusals of Go's parser are cheap to mirror with OpenSSL's accessors
 * and are mirrored: a negative serial, a critical subject key identifier,
 * attribute values of other string types or with characters their type does
 * not allow, BMPString noncharacters, a DNS name that is not ASCII, an
 * elliptic curve other than NIST's, an RSA key over 8192 bits (crypto/tls);
 * so is a NUL byte in a name, which PostgreSQL's text cannot store.  Every
 * string is valid UTF-8.  Go's other, stricter DER checks are not:
 * a malformed certificate OpenSSL accepts is recorded.
 *
 * Everything is palloc'd in CurrentMemoryContext; no error is raised except
 * on out-of-memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "x509.h"

PG_FUNCTION_INFO_V1(certctl_sched_x509_fields_sql);

/* crypto/tls refuses server certificates with larger RSA keys */
#define TLS_MAX_RSA_BITS	8192

/* The attributes pkix.Name hoists into fields, in ToRDNSequence() order */
static const struct
{
	int			nid;
	const char *label;
	bool		last_only;		/* a single field: the last value, dropped when empty */
}			hoisted[] =
{
	{NID_countryName, "C", false},
	{NID_stateOrProvinceName, "ST", false},
	{NID_localityName, "L", false},
	{NID_streetAddress, "STREET", false},
	{NID_postalCode, "POSTALCODE", false},
	{NID_organizationName, "O", false},
	{NID_organizationalUnitName, "OU", false},
	{NID_commonName, "CN", true},
	{NID_serialNumber, "SERIALNUMBER", true},
};

#define NHOISTED	((int) lengthof(hoisted))

/* One attribute of a name, its value decoded to UTF-8 */
typedef struct NameAttr
{
	const ASN1_OBJECT *type;
	int			hoisted;		/* index into hoisted[], -1 for a non-standard type */
	char	   *value;
	int			len;
} NameAttr;

/* Writes a refusal into errbuf and returns false. */
static bool
refuse(char *errbuf, size_t errlen, const char *msg)
{
	strlcpy(errbuf, msg, errlen);
	return false;
}

/* Returns the index into hoisted[] of an attribute NID, or -1. */
static int
hoisted_index(int nid)
{
	for (int i = 0; i < NHOISTED; i++)
		if (hoisted[i].nid == nid)
			return i;
	return -1;
}

/* Returns whether a UTF-8 string holds a BMPString noncharacter Go refuses: U+FDD0-U+FDEF, U+FFFE, U+FFFF. */
static bool
has_bmp_nonchar(const char *s, int len)
{
	for (int i = 0; i + 2 < len; i++)
	{
		unsigned char a = (unsigned char) s[i];
		unsigned char b = (unsigned char) s[i + 1];
		unsigned char c = (unsigned char) s[i + 2];

		if (a == 0xef && ((b == 0xbf && (c == 0xbe || c == 0xbf)) || (b == 0xb7 && c >= 0x90 && c <= 0xaf)))
			return true;
	}
	return false;
}

/*
 * Returns whether the content of a name's string is what Go accepts for its
 * type: PrintableString's characters (Go allows '*' and '&' too),
 * NumericString's digits and space, IA5String's ASCII.
 */
static bool
string_content_ok(const ASN1_STRING *v)
{
	const unsigned char *p = ASN1_STRING_get0_data(v);
	int			len = ASN1_STRING_length(v);

	for (int i = 0; i < len; i++)
	{
		unsigned char c = p[i];

		switch (ASN1_STRING_type(v))
		{
			case V_ASN1_PRINTABLESTRING:
				if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
					  (c != '\0' && strchr(" '()+,-./:=?*&", c) != NULL)))
					return false;
				break;
			case V_ASN1_NUMERICSTRING:
				if (!((c >= '0' && c <= '9') || c == ' '))
					return false;
				break;
			case V_ASN1_IA5STRING:
				if (c >= 0x80)
					return false;
				break;
		}
	}
	return true;
}

/*
 * Reads every attribute of a name, in order (multi-valued RDNs flattened),
 * values as UTF-8.  Returns false with the reason for a value Go refuses.
 */
static bool
read_name(const X509_NAME *name, NameAttr **attrs, int *n, char *errbuf, size_t errlen)
{
	int			count = X509_NAME_entry_count(name);

	*attrs = palloc0(sizeof(NameAttr) * Max(count, 1));
	*n = count;
	for (int i = 0; i < count; i++)
	{
		const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
		const ASN1_STRING *v = X509_NAME_ENTRY_get_data(e);
		unsigned char *utf8 = NULL;
		int			len;
		NameAttr   *a = &(*attrs)[i];

		switch (ASN1_STRING_type(v))
		{
			case V_ASN1_PRINTABLESTRING:
			case V_ASN1_UTF8STRING:
			case V_ASN1_IA5STRING:
			case V_ASN1_NUMERICSTRING:
			case V_ASN1_T61STRING:
			case V_ASN1_BMPSTRING:
				break;
			default:
				return refuse(errbuf, errlen, "x509: invalid RDNSequence: invalid attribute value: unsupported string type");
		}
		if (!string_content_ok(v))
			return refuse(errbuf, errlen, "x509: invalid RDNSequence: invalid attribute value");
		len = ASN1_STRING_to_UTF8(&utf8, v);
		if (len < 0)
			return refuse(errbuf, errlen, "x509: invalid RDNSequence: invalid attribute value");
		/* Go strips a BMPString's terminating U+0000 */
		if (ASN1_STRING_type(v) == V_ASN1_BMPSTRING && len > 0 && utf8[len - 1] == '\0')
			len--;
		a->type = X509_NAME_ENTRY_get_object(e);
		a->hoisted = hoisted_index(OBJ_obj2nid(a->type));
		a->value = palloc(len + 1);
		memcpy(a->value, utf8, len);
		a->value[len] = '\0';
		a->len = len;
		OPENSSL_free(utf8);
		if (memchr(a->value, '\0', len) != NULL)
			return refuse(errbuf, errlen, "a name holds a NUL byte");
		if (ASN1_STRING_type(v) == V_ASN1_BMPSTRING && has_bmp_nonchar(a->value, len))
			return refuse(errbuf, errlen, "x509: invalid RDNSequence: invalid attribute value: invalid BMPString");
	}
	return true;
}

/* Returns the last attribute of hoisted type h, or NULL. */
static const NameAttr *
last_of(const NameAttr *attrs, int n, int h)
{
	const NameAttr *last = NULL;

	for (int i = 0; i < n; i++)
		if (attrs[i].hoisted == h)
			last = &attrs[i];
	return last;
}

/* Appends LABEL=value with RDNSequence.String()'s escaping. */
static void
append_escaped(StringInfo buf, const char *label, const NameAttr *a)
{
	appendStringInfo(buf, "%s=", label);
	for (int k = 0; k < a->len; k++)
	{
		char		c = a->value[k];
		bool		esc = strchr(",+\"\\<>;", c) != NULL ||
			(c == ' ' && (k == 0 || k == a->len - 1)) ||
			(c == '#' && k == 0);

		if (esc)
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, c);
	}
}

/* Returns whether encoding/asn1 would marshal s as a PrintableString ('*' and '&' not allowed). */
static bool
go_printable(const char *s, int len)
{
	for (int k = 0; k < len; k++)
	{
		unsigned char c = (unsigned char) s[k];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  strchr(" '()+,-./:=?", c) != NULL) || c == '\0')
			return false;
	}
	return true;
}

/* Appends OID=#hex for a non-standard attribute: the DER of its value as Go re-encodes it. */
static void
append_hex(StringInfo buf, const NameAttr *a)
{
	bool		printable = go_printable(a->value, a->len);
	ASN1_STRING *s = ASN1_STRING_type_new(printable ? V_ASN1_PRINTABLESTRING : V_ASN1_UTF8STRING);
	unsigned char *der = NULL;
	int			len = -1;
	int			oidlen = OBJ_obj2txt(NULL, 0, a->type, 1);
	char	   *oid = palloc(Max(oidlen, 0) + 1);

	if (s != NULL && ASN1_STRING_set(s, a->value, a->len))
		len = printable ? i2d_ASN1_PRINTABLESTRING(s, &der) : i2d_ASN1_UTF8STRING(s, &der);
	ASN1_STRING_free(s);
	if (len < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	OBJ_obj2txt(oid, oidlen + 1, a->type, 1);
	appendStringInfo(buf, "%s=#", oid);
	for (int k = 0; k < len; k++)
		appendStringInfo(buf, "%02x", der[k]);
	OPENSSL_free(der);
}

/* Returns pkix.Name.String() of a name's attributes. */
static char *
name_string(const NameAttr *attrs, int n)
{
	StringInfoData *rdns = palloc(sizeof(StringInfoData) * (n + NHOISTED));
	int			nrdns = 0;
	StringInfoData out;

	/* non-standard attributes first, each its own RDN (printed last) */
	for (int i = 0; i < n; i++)
		if (attrs[i].hoisted < 0)
		{
			initStringInfo(&rdns[nrdns]);
			append_hex(&rdns[nrdns++], &attrs[i]);
		}
	for (int h = 0; h < NHOISTED; h++)
	{
		bool		any = false;

		if (hoisted[h].last_only)
		{
			const NameAttr *last = last_of(attrs, n, h);

			if (last != NULL && last->len > 0)
			{
				initStringInfo(&rdns[nrdns]);
				append_escaped(&rdns[nrdns++], hoisted[h].label, last);
			}
			continue;
		}
		for (int i = 0; i < n; i++)
		{
			if (attrs[i].hoisted != h)
				continue;
			if (!any)
				initStringInfo(&rdns[nrdns]);
			else
				appendStringInfoChar(&rdns[nrdns], '+');
			append_escaped(&rdns[nrdns], hoisted[h].label, &attrs[i]);
			any = true;
		}
		if (any)
			nrdns++;
	}
	initStringInfo(&out);
	for (int i = nrdns - 1; i >= 0; i--)
	{
		appendBinaryStringInfo(&out, rdns[i].data, rdns[i].len);
		if (i > 0)
			appendStringInfoChar(&out, ',');
	}
	return out.data;
}

/* Sets the subject's and issuer's DNs and the common name; false (with the reason) for a name Go refuses. */
static bool
read_names(X509 *cert, CertFields *out, char *errbuf, size_t errlen)
{
	NameAttr   *attrs;
	int			n;
	const NameAttr *cn;

	if (!read_name(X509_get_issuer_name(cert), &attrs, &n, errbuf, errlen))
		return false;
	out->issuer_dn = name_string(attrs, n);
	if (!read_name(X509_get_subject_name(cert), &attrs, &n, errbuf, errlen))
		return false;
	out->subject_dn = name_string(attrs, n);
	cn = last_of(attrs, n, hoisted_index(NID_commonName));
	out->common_name = pstrdup(cn ? cn->value : "");
	return true;
}

/* Sets the DNS names of the subjectAltName extension, in order; false for a NUL byte in one. */
static bool
read_sans(X509 *cert, CertFields *out, char *errbuf, size_t errlen)
{
	GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	int			count = names ? sk_GENERAL_NAME_num(names) : 0;
	bool		ok = true;

	out->nsans = 0;
	out->sans = palloc(sizeof(char *) * Max(count, 1));
	for (int i = 0; i < count && ok; i++)
	{
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
		const ASN1_IA5STRING *dns;
		int			len;

		if (g->type != GEN_DNS)
			continue;
		dns = g->d.dNSName;
		len = ASN1_STRING_length(dns);
		/* Go requires IA5 (ASCII); a NUL byte PostgreSQL's text cannot store */
		for (int k = 0; k < len && ok; k++)
			ok = ASN1_STRING_get0_data(dns)[k] != 0 && ASN1_STRING_get0_data(dns)[k] < 0x80;
		if (ok)
			out->sans[out->nsans++] = pnstrdup((const char *) ASN1_STRING_get0_data(dns), len);
	}
	GENERAL_NAMES_free(names);
	return ok || refuse(errbuf, errlen, "x509: SAN dNSName is malformed");
}

/* Sets the serial as big.Int.Text(16) does; false for a negative serial (refused by Go). */
static bool
read_serial(X509 *cert, CertFields *out, char *errbuf, size_t errlen)
{
	const ASN1_INTEGER *serial = X509_get0_serialNumber(cert);
	BIGNUM	   *bn;
	char	   *hex;
	const char *p;

	if (ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER)
		return refuse(errbuf, errlen, "x509: negative serial number");
	bn = ASN1_INTEGER_to_BN(serial, NULL);
	hex = bn ? BN_bn2hex(bn) : NULL;
	BN_free(bn);
	if (hex == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	for (p = hex; *p == '0' && p[1] != '\0'; p++)
		;
	out->serial_number = pstrdup(p);
	for (char *c = out->serial_number; *c; c++)
		*c = pg_ascii_tolower(*c);
	OPENSSL_free(hex);
	return true;
}

/* Returns an ASN1_TIME as a timestamptz; false if OpenSSL cannot read it. */
static bool
asn1_time(const ASN1_TIME *t, TimestampTz *out)
{
	struct tm	tm;

	if (!ASN1_TIME_to_tm(t, &tm))
		return false;
	*out = time_t_to_timestamptz(timegm(&tm));
	return true;
}

/* Sets the key's algorithm and size as certctl reports them; false for an RSA key crypto/tls refuses. */
static bool
read_key(X509 *cert, CertFields *out, char *errbuf, size_t errlen)
{
	EVP_PKEY   *key = X509_get0_pubkey(cert);

	out->key_algorithm = "0";
	out->key_size = 0;
	if (key == NULL)
		return true;
	switch (EVP_PKEY_get_base_id(key))
	{
		case EVP_PKEY_RSA:
			out->key_algorithm = "RSA";
			out->key_size = EVP_PKEY_get_bits(key);
			if (out->key_size > TLS_MAX_RSA_BITS)
				return refuse(errbuf, errlen, "tls: server sent certificate containing RSA key larger than 8192 bits");
			break;
		case EVP_PKEY_EC:
			{
				char		group[64] = "";
				size_t		glen = 0;

				/* Go's x509 knows the NIST curves only */
				if (!EVP_PKEY_get_group_name(key, group, sizeof(group), &glen) ||
					(strcmp(group, "prime256v1") != 0 && strcmp(group, "secp384r1") != 0 &&
					 strcmp(group, "secp521r1") != 0 && strcmp(group, "secp224r1") != 0))
					return refuse(errbuf, errlen, "x509: unsupported elliptic curve");
				out->key_algorithm = "ECDSA";
				out->key_size = EVP_PKEY_get_bits(key);
			}
			break;
		case EVP_PKEY_ED25519:
			out->key_algorithm = "Ed25519";
			out->key_size = 256;
			break;
		case EVP_PKEY_DSA:
			out->key_algorithm = "DSA";
			break;
	}
	return true;
}

/* Returns whether the certificate's basicConstraints say cA. */
static bool
read_is_ca(X509 *cert)
{
	BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(cert, NID_basic_constraints, NULL, NULL);
	bool		ca = bc != NULL && bc->ca;

	BASIC_CONSTRAINTS_free(bc);
	return ca;
}

/* Sets the fingerprint (lowercase hex SHA-256 of the DER) and the PEM. */
static void
read_der(X509 *cert, CertFields *out)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	BIO		   *bio = BIO_new(BIO_s_mem());
	char	   *pem;
	long		len;

	if (!X509_digest(cert, EVP_sha256(), md, &mdlen) || bio == NULL || !PEM_write_bio_X509(bio, cert))
	{
		BIO_free(bio);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	}
	for (unsigned int i = 0; i < mdlen && i < 32; i++)
		snprintf(out->fingerprint_sha256 + 2 * i, 3, "%02x", md[i]);
	len = BIO_get_mem_data(bio, &pem);
	out->pem_data = pnstrdup(pem, len);
	BIO_free(bio);
}

/*
 * Fills *out from cert.  Returns false, with a message in errbuf, for a
 * certificate certctl would not record (see the file's comment); *out is
 * then zeroed.
 */
bool
certctl_sched_x509_fields(X509 *cert, CertFields *out, char *errbuf, size_t errlen)
{
	int			ski = X509_get_ext_by_NID(cert, NID_subject_key_identifier, -1);
	bool		ok;

	memset(out, 0, sizeof(*out));
	ok = (ski < 0 || !X509_EXTENSION_get_critical(X509_get_ext(cert, ski)) ||
		  refuse(errbuf, errlen, "x509: subject key identifier incorrectly marked critical")) &&
		read_serial(cert, out, errbuf, errlen) &&
		read_names(cert, out, errbuf, errlen) &&
		read_sans(cert, out, errbuf, errlen) &&
		read_key(cert, out, errbuf, errlen) &&
		((asn1_time(X509_get0_notBefore(cert), &out->not_before) &&
		  asn1_time(X509_get0_notAfter(cert), &out->not_after)) ||
		 refuse(errbuf, errlen, "x509: malformed validity"));
	ERR_clear_error();
	if (!ok)
	{
		memset(out, 0, sizeof(*out));
		return false;
	}
	out->is_ca = read_is_ca(cert);
	read_der(cert, out);
	return true;
}

/* ----------------------------------------------------------------
 * SQL test hook
 * ----------------------------------------------------------------
 */

/*
 * certctl_sched._x509_fields(pem text): the fields of the first certificate
 * of a PEM text (fingerprint_sha256, common_name, sans, serial_number,
 * issuer_dn, subject_dn, not_before, not_after, key_algorithm, key_size,
 * is_ca, pem_data); sans is NULL when there is no DNS name, as certctl stores
 * it.  A certificate certctl would not record raises an error saying why.
 */
Datum
certctl_sched_x509_fields_sql(PG_FUNCTION_ARGS)
{
	text	   *pem = PG_GETARG_TEXT_PP(0);
	TupleDesc	tupdesc;
	BIO		   *bio;
	X509	   *cert;
	CertFields	f;
	char		errbuf[256];
	bool		ok;
	Datum		values[12];
	bool		nulls[12] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE || tupdesc->natts != 12)
		elog(ERROR, "return type must be a row type of 12 columns");
	bio = BIO_new_mem_buf(VARDATA_ANY(pem), VARSIZE_ANY_EXHDR(pem));
	cert = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	ERR_clear_error();
	if (cert == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("could not read a PEM certificate")));
	ok = certctl_sched_x509_fields(cert, &f, errbuf, sizeof(errbuf));
	X509_free(cert);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("certificate not recordable: %s", errbuf)));

	values[0] = CStringGetTextDatum(f.fingerprint_sha256);
	values[1] = CStringGetTextDatum(f.common_name);
	if (f.nsans > 0)
	{
		Datum	   *elems = palloc(sizeof(Datum) * f.nsans);

		for (int i = 0; i < f.nsans; i++)
			elems[i] = CStringGetTextDatum(f.sans[i]);
		values[2] = PointerGetDatum(construct_array(elems, f.nsans, TEXTOID, -1, false, TYPALIGN_INT));
	}
	else
		nulls[2] = true;
	values[3] = CStringGetTextDatum(f.serial_number);
	values[4] = CStringGetTextDatum(f.issuer_dn);
	values[5] = CStringGetTextDatum(f.subject_dn);
	values[6] = TimestampTzGetDatum(f.not_before);
	values[7] = TimestampTzGetDatum(f.not_after);
	values[8] = CStringGetTextDatum(f.key_algorithm);
	values[9] = Int32GetDatum(f.key_size);
	values[10] = BoolGetDatum(f.is_ca);
	values[11] = CStringGetTextDatum(f.pem_data);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
