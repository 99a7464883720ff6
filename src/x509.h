/*-------------------------------------------------------------------------
 *
 * x509.h
 *		The fields of a certificate as certctl's network scan records them
 *		(internal/service/network_scan.go, tlsCertToEntry), read from an
 *		OpenSSL X509 and formatted as Go's crypto/x509 formats them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_X509_H
#define CERTCTL_SCHED_X509_H

#include <openssl/x509.h>

#include "datatype/timestamp.h"

/*
 * One certificate as certctl's discovered_certificates row holds it.  Strings
 * are palloc'd in CurrentMemoryContext, valid UTF-8 and free of NUL bytes.
 */
typedef struct CertFields
{
	char		fingerprint_sha256[65]; /* lowercase hex SHA-256 of the DER */
	char	   *common_name;	/* Subject.CommonName: the last CN, may be "" */
	int			nsans;			/* number of DNS names; 0 = certctl stores NULL */
	char	  **sans;			/* cert.DNSNames, in certificate order */
	char	   *serial_number;	/* big.Int.Text(16) of the serial */
	char	   *issuer_dn;		/* pkix.Name.String() of the issuer */
	char	   *subject_dn;		/* pkix.Name.String() of the subject */
	TimestampTz not_before;
	TimestampTz not_after;
	const char *key_algorithm;	/* "RSA", "ECDSA", "Ed25519", "DSA" or "0" */
	int			key_size;		/* RSA modulus bits, curve bits, 256, or 0 */
	bool		is_ca;			/* basicConstraints cA */
	char	   *pem_data;		/* pem.EncodeToMemory of a CERTIFICATE block */
} CertFields;

/*
 * Fills *out from cert.  Returns false, with a message in errbuf, for a
 * certificate certctl would not record: one Go's x509.ParseCertificate (or
 * crypto/tls, for RSA keys over 8192 bits) rejects, or whose strings hold a
 * NUL byte that PostgreSQL text cannot store; *out is then zeroed.  Never
 * raises an error except on out-of-memory.  Allocates in CurrentMemoryContext.
 */
extern bool certctl_sched_x509_fields(X509 *cert, CertFields *out,
									  char *errbuf, size_t errlen);

#endif							/* CERTCTL_SCHED_X509_H */
