package config

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
)

// CipherSuiteID returns Go's id of the TLS 1.2 suite called name.
func CipherSuiteID(name string) (uint16, bool) {
	for _, c := range tls.CipherSuites() {
		if c.Name == name && slices.Contains(c.SupportedVersions, tls.VersionTLS12) {
			return c.ID, true
		}
	}
	return 0, false
}

// checkCipherSuite accepts the TLS 1.2 suites Go considers secure.
func checkCipherSuite(name string) error {
	if _, ok := CipherSuiteID(name); ok {
		return nil
	}
	for _, c := range tls.InsecureCipherSuites() {
		if c.Name == name {
			return fmt.Errorf("%s is insecure (no forward secrecy or a broken cipher): choose from %s", name, strings.Join(DefaultCipherSuites, ", "))
		}
	}
	for _, c := range tls.CipherSuites() {
		if c.Name == name {
			return fmt.Errorf("%s is a TLS 1.3 suite, which Go always enables and does not let you choose", name)
		}
	}
	return fmt.Errorf("%q is not a TLS 1.2 cipher suite Go knows (e.g. %s)", name, DefaultCipherSuites[0])
}
