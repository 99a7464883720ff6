#!/bin/sh
# test/sinks/make_certs.sh DIR: creates the test CA and every certificate the receivers in test/sinks serve.
#
# In DIR (created if missing; files overwritten on each run), each certificate X.pem with its key X.key:
#   ca             the test CA (RSA-2048, 10 years) that signs everything below
#   server         HTTPS/SMTPS server: IP 127.0.0.1 and DNS localhost
#   rsa ec ed25519 scan leaves: RSA-2048, ECDSA P-256, Ed25519
#   intermediate   an intermediate CA (signed by ca)
#   chain          a leaf signed by the intermediate; chain.pem holds the leaf then the intermediate
#   expired        valid from 2020-01-01 to 2021-01-01
#   names_*        subjects with distinguished-name formatting edge cases (see make_names)
# Leaves are valid for a year from now and carry DNS names in subjectAltName.  Prints nothing on success.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
TMP=$(mktemp -d "$DIR/.make_certs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Runs openssl with the given arguments; shows its output and stops only if it fails.
ossl() {
	if ! openssl "$@" >"$TMP/out" 2>&1; then
		cat "$TMP/out" >&2
		echo "make_certs.sh: 'openssl $1' failed" >&2
		exit 1
	fi
}

# Writes the OpenSSL configuration: extension sections, and a CA database for backdated certificates.
write_config() {
	: >"$TMP/index.txt"
	cat >"$TMP/openssl.cnf" <<EOF
[req]
distinguished_name = empty_dn
prompt = no
string_mask = utf8only

[empty_dn]

[ca_ext]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[intermediate_ext]
basicConstraints = critical,CA:true,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[leaf_ext]
basicConstraints = critical,CA:false
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ca]
default_ca = backdated

[backdated]
database = $TMP/index.txt
new_certs_dir = $TMP
rand_serial = yes
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = copy
x509_extensions = leaf_ext

[any_name]
commonName = optional
EOF
}

# Prints the -newkey arguments for a key type: rsa, ec or ed25519.
newkey() {
	case $1 in
	rsa) echo "-newkey rsa:2048" ;;
	ec) echo "-newkey ec -pkeyopt ec_paramgen_curve:P-256" ;;
	ed25519) echo "-newkey ed25519" ;;
	esac
}

# issue NAME KEYTYPE ISSUER EXTENSIONS SUBJECT [REQ_OPTION...]: creates NAME.key and NAME.pem signed by ISSUER
# (a name in DIR, or "self") with the extension section, the -subj SUBJECT and further openssl req options.
issue() {
	name=$1 type=$2 issuer=$3 ext=$4 subj=$5
	shift 5
	if [ "$issuer" = self ]; then
		set -- -days 3650 "$@"
	else
		set -- -days 365 -CA "$DIR/$issuer.pem" -CAkey "$DIR/$issuer.key" "$@"
	fi
	# shellcheck disable=SC2046  # newkey prints several words
	ossl req -x509 -new $(newkey "$type") -noenc -keyout "$DIR/$name.key" -out "$DIR/$name.pem" \
		-config "$TMP/openssl.cnf" -extensions "$ext" -subj "$subj" "$@"
}

# leaf NAME KEYTYPE ISSUER SUBJECT SAN [REQ_OPTION...]: issue() for a server leaf with subjectAltName SAN.
leaf() {
	name=$1 type=$2 issuer=$3 subj=$4 san=$5
	shift 5
	issue "$name" "$type" "$issuer" leaf_ext "$subj" -addext "subjectAltName=$san" "$@"
}

# Creates expired.pem/.key, valid from 2020-01-01 to 2021-01-01, through 'openssl ca' (x509 cannot backdate).
make_expired() {
	ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -keyout "$DIR/expired.key" \
		-out "$TMP/expired.csr" -config "$TMP/openssl.cnf" -subj "/O=certctl_sched tests/CN=expired.test" \
		-addext "subjectAltName=DNS:expired.test,DNS:www.expired.test"
	ossl ca -batch -config "$TMP/openssl.cnf" -cert "$DIR/ca.pem" -keyfile "$DIR/ca.key" -notext -preserveDN \
		-startdate 20200101000000Z -enddate 20210101000000Z -in "$TMP/expired.csr" -out "$DIR/expired.pem"
}

# Creates names_*.pem/.key, whose subjects exercise distinguished-name formatting (RFC 2253/4514 escaping,
# attribute order, multi-valued RDNs, attributes without a short name in Go, UTF-8).
make_names() {
	leaf names_multi_cn ec ca "/CN=first.example/CN=second.example/CN=third.example" DNS:names-multi-cn.test
	leaf names_multivalued ec ca "/O=Example/CN=a+OU=b" DNS:names-multivalued.test -multivalue-rdn
	leaf names_oids ec ca "/DC=com/DC=example/UID=jdoe/emailAddress=jdoe@example.com/serialNumber=SN-0042/CN=jdoe" \
		DNS:names-oids.test
	leaf names_full ec ca "/C=US/ST=California/L=San Francisco/street=1 Market Street/postalCode=94105\
/O=Example Corp/OU=Platform/OU=Security/CN=full.example.com" DNS:names-full.test
	leaf names_special ec ca "/CN=a,b\\+c\"d\\\\e<f>g;h=i/O=#hash first/OU= leading and trailing space \
/L=trailing space /ST= " DNS:names-special.test
	leaf names_utf8 ec ca "/C=DE/L=München/O=Société Générale/CN=Zoë Ünïcødé 日本語" DNS:names-utf8.test -utf8
	leaf names_empty ec ca "/" critical,DNS:names-empty.test
}

write_config
issue ca rsa self ca_ext "/O=certctl_sched tests/CN=certctl_sched test CA"
leaf server ec ca "/O=certctl_sched tests/CN=localhost" IP:127.0.0.1,DNS:localhost
leaf rsa rsa ca "/O=certctl_sched tests/CN=rsa.test" DNS:rsa.test,DNS:www.rsa.test
leaf ec ec ca "/O=certctl_sched tests/CN=ec.test" DNS:ec.test,DNS:www.ec.test
leaf ed25519 ed25519 ca "/O=certctl_sched tests/CN=ed25519.test" DNS:ed25519.test,DNS:www.ed25519.test
issue intermediate ec ca intermediate_ext "/O=certctl_sched tests/CN=certctl_sched test intermediate CA"
leaf chain ec intermediate "/O=certctl_sched tests/CN=chain.test" DNS:chain.test,DNS:www.chain.test
cat "$DIR/intermediate.pem" >>"$DIR/chain.pem"
make_expired
make_names
