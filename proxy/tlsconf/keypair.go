package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// keyPair is a certificate and its private key loaded from PEM files. The live value
// sits in an atomic pointer that the TLS callbacks read on every handshake, so a
// reload can swap it without touching open connections (the ghostunnel certloader
// model).
type keyPair struct {
	certKey, certFile string // config key and path of the certificate, for errors
	keyKey, keyFile   string
	current           atomic.Pointer[tls.Certificate]
}

func loadKeyPair(certKey, certFile, keyKey, keyFile string) (*keyPair, error) {
	kp := &keyPair{certKey: certKey, certFile: certFile, keyKey: keyKey, keyFile: keyFile}
	if err := kp.reload(); err != nil {
		return nil, err
	}
	return kp, nil
}

// reload parses both files completely and stores the result only on success, so a
// bad file never replaces a good certificate.
func (kp *keyPair) reload() error {
	cert, err := readKeyPair(kp.certKey, kp.certFile, kp.keyKey, kp.keyFile)
	if err != nil {
		return err
	}
	kp.current.Store(cert)
	return nil
}

func (kp *keyPair) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return kp.current.Load(), nil
}

func (kp *keyPair) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return kp.current.Load(), nil
}

// readKeyPair parses the certificate and key separately first, so that each kind of
// mistake (missing file, wrong PEM, mismatched pair, expiry) names the right file.
func readKeyPair(certKey, certFile, keyKey, keyFile string) (*tls.Certificate, error) {
	if certFile == "" {
		return nil, fmt.Errorf("%s: is required", certKey)
	}
	if keyFile == "" {
		return nil, fmt.Errorf("%s: is required", keyKey)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("%s: read certificate %q: %w", certKey, certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: read private key %q: %w", keyKey, keyFile, err)
	}
	certs, err := parseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %q: %w", certKey, certFile, err)
	}
	if err := checkPrivateKey(keyPEM); err != nil {
		return nil, fmt.Errorf("%s: %q: %w", keyKey, keyFile, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s %q and %s %q do not belong together (%v): use the key the certificate was issued for",
			certKey, certFile, keyKey, keyFile, err)
	}
	leaf := certs[0]
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%s: %q expired on %s: issue a new certificate", certKey, certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("%s: %q is not valid before %s: check the clock", certKey, certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	pair.Leaf = leaf
	return &pair, nil
}

// ReadCertificates returns every PEM CERTIFICATE of file, in order; a file
// with none gives none (the callers that need one say so).
func ReadCertificates(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	certs, _, err := certificates(data)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", file, err)
	}
	return certs, nil
}

// certificates decodes every CERTIFICATE block, and reports whether data
// holds a private key too.
func certificates(data []byte) (certs []*x509.Certificate, sawKey bool, err error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, sawKey, nil
		}
		switch {
		case block.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, sawKey, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
			}
			certs = append(certs, c)
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			sawKey = true
		}
	}
}

// parseCertificates decodes every CERTIFICATE block; it needs at least one.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	certs, sawKey, err := certificates(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		if sawKey {
			return nil, errors.New("holds a private key but no certificate: are the certificate and key files swapped?")
		}
		return nil, errors.New("contains no PEM CERTIFICATE block")
	}
	return certs, nil
}

// checkPrivateKey makes sure data holds a parsable private key, without keeping it.
func checkPrivateKey(data []byte) error {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return errors.New("contains no PEM private key block")
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			continue
		}
		if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			return nil
		}
		if _, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
			return nil
		}
		if _, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
			return nil
		}
		return fmt.Errorf("cannot parse the %s block (supported: PKCS#8, EC, PKCS#1; encrypted keys are not)", block.Type)
	}
}

// loadCertPool reads PEM CA certificates for verifying peers; key names the config key.
func loadCertPool(key, file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: read CA certificates %q: %w", key, file, err)
	}
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %q: %w", key, file, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
