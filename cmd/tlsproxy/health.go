package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// healthCmd GETs the admin endpoint's /healthz: the container HEALTHCHECK,
// since the image has no shell tools.
func healthCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("health", "tlsproxy health [--config FILE] [--url URL]\n\n"+
		"GETs /healthz of the admin endpoint (admin.address of the config; 0.0.0.0 or :: means\n"+
		"loopback) and exits 0 when it answers 200, 1 otherwise. Over HTTPS (admin.tls) the\n"+
		"endpoint must present admin.tls.cert_file itself; --cert/--key give a client\n"+
		"certificate when admin.tls.client_ca_file asks for one.")
	path := configFlag(cmd.fs)
	url := cmd.fs.String("url", "", "`URL` to GET instead of the config's admin endpoint")
	certFile := cmd.fs.String("cert", "", "client certificate `file` (PEM) for an admin endpoint that requires one")
	keyFile := cmd.fs.String("key", "", "private key `file` (PEM) of --cert")
	timeout := cmd.fs.Duration("timeout", 3*time.Second, "give up after this `duration`")
	if ok, code := cmd.parse(args, stdout, stderr); !ok {
		return code
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return 1
	}
	client, target, err := healthClient(cfg.Admin, *url, *certFile, *keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "tlsproxy health: %v\n", err)
		return 1
	}
	client.Timeout = *timeout
	resp, err := client.Get(target)
	if err != nil {
		fmt.Fprintf(stderr, "tlsproxy health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "tlsproxy health: %s answered %s: %s\n", target, resp.Status, bytes.TrimSpace(body))
		return 1
	}
	fmt.Fprintf(stdout, "tlsproxy health: %s: %s\n", target, bytes.TrimSpace(body))
	return 0
}

// healthClient returns the HTTP client and URL for the admin endpoint a.
func healthClient(a config.Admin, url, certFile, keyFile string) (*http.Client, string, error) {
	client := &http.Client{}
	if url == "" {
		if a.Address == "" {
			return nil, "", errors.New("admin.address is empty: the admin endpoint is disabled (use --url)")
		}
		host, port, err := net.SplitHostPort(a.Address)
		if err != nil {
			return nil, "", fmt.Errorf("admin.address: %w", err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		scheme := "http"
		if a.TLS.CertFile != "" {
			scheme = "https"
		}
		url = scheme + "://" + net.JoinHostPort(host, port) + "/healthz"
	}
	if a.TLS.CertFile == "" {
		return client, url, nil
	}
	// The endpoint must present exactly the admin certificate: the check
	// runs beside the proxy, often by an IP the certificate does not name.
	pinned, err := leafDER(a.TLS.CertFile)
	if err != nil {
		return nil, "", err
	}
	tc := &tls.Config{
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], pinned) {
				return errors.New("the admin endpoint did not present admin.tls.cert_file")
			}
			return nil
		},
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, "", err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	client.Transport = &http.Transport{TLSClientConfig: tc}
	return client, url, nil
}

func leafDER(file string) ([]byte, error) {
	certs, err := tlsconf.ReadCertificates(file)
	if err != nil {
		return nil, fmt.Errorf("admin.tls.cert_file: %w", err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("admin.tls.cert_file %s: no PEM certificate", file)
	}
	return certs[0].Raw, nil
}
