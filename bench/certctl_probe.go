// bench/certctl_probe.go: the probing half of certctl's network scan, in Go with crypto/tls as certctl's server
// does it (figure 8's second baseline).
//
// bench/certctl_scan.c re-implements certctl's whole scan (probing and writes) with OpenSSL, the TLS library
// certctl_sched uses; this program probes the same endpoints with Go's standard library, as certctl's Go server
// does, so that the cost of a handshake in certctl's own TLS stack is measured too.  One target: its CIDRs expanded
// as certctl expands them (a CIDR of at most 12 host bits or a plain IPv4 address; a range of more than two
// addresses loses its first and last; each address crossed with each port, "ip:port"; no reserved-address filter:
// the servers are on loopback), then every endpoint probed by its own goroutine behind a semaphore of 50
// (CONCURRENCY), each a tls.DialWithDialer with net.Dialer{Timeout: TIMEOUT_MS} (connection and handshake),
// InsecureSkipVerify, no SNI for an IP address, Go's client defaults (TLS 1.2 and 1.3); every certificate the peer
// sent turned into what certctl records (SHA-256 fingerprint, PEM, common name, DNS names, serial, DNs, dates, key
// algorithm and size, CA flag); the connection closed.  Nothing is written to the database.
//
// usage: certctl_probe CIDRS PORTS TIMEOUT_MS [CONCURRENCY]   (comma-separated lists; default concurrency 50)
// prints one line: "<endpoints> <succeeded> <failed> <certificates> <seconds> <cpu seconds>" (cpu: getrusage of
// the process, user + system, every thread)
//
// build: GO111MODULE=off go build -o certctl_probe certctl_probe.go   (standard library only)
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// entry is what certctl keeps of one certificate a peer presented.
type entry struct {
	fingerprint, commonName, serial, issuer, subject string
	notBefore, notAfter, keyAlgorithm, pem, source   string
	sans                                             []string
	keySize                                          int
	isCA                                             bool
}

// result is one endpoint's outcome.
type result struct {
	err     error
	entries []entry
}

// addresses expands one CIDR or plain IPv4 address as certctl does (nil when it is neither or too wide).
func addresses(cidr string) []string {
	if !strings.Contains(cidr, "/") {
		if ip := net.ParseIP(cidr); ip != nil {
			return []string{ip.String()}
		}
		return nil
	}
	_, network, err := net.ParseCIDR(cidr)
	if err != nil || network.IP.To4() == nil {
		return nil
	}
	ones, bits := network.Mask.Size()
	if bits-ones > 12 {
		return nil
	}
	base := binary.BigEndian.Uint32(network.IP.To4())
	var out []string
	for i := uint32(0); i < 1<<uint(bits-ones); i++ {
		ip := make(net.IP, 4)
		binary.BigEndian.PutUint32(ip, base+i)
		out = append(out, ip.String())
	}
	if len(out) > 2 {
		out = out[1 : len(out)-1] // network and broadcast
	}
	return out
}

// keyInfo returns the key algorithm and size as certctl records them.
func keyInfo(c *x509.Certificate) (string, int) {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		return "RSA", k.N.BitLen()
	case *ecdsa.PublicKey:
		return "ECDSA", k.Curve.Params().BitSize
	case ed25519.PublicKey:
		return "Ed25519", 256
	}
	return c.PublicKeyAlgorithm.String(), 0
}

// toEntry converts one peer certificate into certctl's fields.
func toEntry(c *x509.Certificate, addr string) entry {
	sum := sha256.Sum256(c.Raw)
	alg, size := keyInfo(c)
	return entry{
		fingerprint:  hex.EncodeToString(sum[:]),
		commonName:   c.Subject.CommonName,
		sans:         c.DNSNames,
		serial:       c.SerialNumber.Text(16),
		issuer:       c.Issuer.String(),
		subject:      c.Subject.String(),
		notBefore:    c.NotBefore.UTC().Format(time.RFC3339),
		notAfter:     c.NotAfter.UTC().Format(time.RFC3339),
		keyAlgorithm: alg,
		keySize:      size,
		isCA:         c.IsCA,
		pem:          string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})),
		source:       addr,
	}
}

// probe makes one connection and TLS handshake within timeout and reads the peer's certificates.
func probe(addr string, timeout time.Duration) result {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return result{err: err}
	}
	defer conn.Close()
	var r result
	for _, c := range conn.ConnectionState().PeerCertificates {
		r.entries = append(r.entries, toEntry(c, addr))
	}
	return r
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: certctl_probe CIDRS PORTS TIMEOUT_MS [CONCURRENCY]")
		os.Exit(2)
	}
	timeoutMs, _ := strconv.Atoi(os.Args[3])
	concurrency := 50
	if len(os.Args) > 4 {
		concurrency, _ = strconv.Atoi(os.Args[4])
	}
	var endpoints []string
	for _, cidr := range strings.Split(os.Args[1], ",") {
		for _, ip := range addresses(strings.TrimSpace(cidr)) {
			for _, port := range strings.Split(os.Args[2], ",") {
				endpoints = append(endpoints, ip+":"+strings.TrimSpace(port))
			}
		}
	}
	t0 := time.Now()
	results := make([]result, len(endpoints))
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i, addr := range endpoints {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, addr string) {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = probe(addr, time.Duration(timeoutMs)*time.Millisecond)
		}(i, addr)
	}
	wg.Wait()
	seconds := time.Since(t0).Seconds()
	succeeded, certs := 0, 0
	for _, r := range results {
		if r.err == nil {
			succeeded++
			certs += len(r.entries)
		}
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	fmt.Printf("%d %d %d %d %.6f %.3f\n", len(endpoints), succeeded, len(endpoints)-succeeded, certs, seconds, cpu)
}
