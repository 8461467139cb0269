package main

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"
	"github.com/tlsproxy/tlsproxy/proxy"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// reloader reloads the proxy's configuration, certificates, keys, CA
// bundles and password file on SIGHUP, when one of those files changes
// (their directories are watched, so a rename into place or Kubernetes'
// symlink swap is seen), and every tls.reload_interval.
type reloader struct {
	path string // the config file; "" when there is none
	srv  *proxy.Server
	log  zerolog.Logger

	sums   map[string][32]byte // the files' contents at the last successful load
	failed map[string][32]byte // and at the last failed one, not tried again
	cfg    config.Config
}

// reloadDebounce is how long a burst of file events settles before the
// reload, and the wait before a failed watch-triggered reload is tried
// again (a certificate written before its key fails once, then loads).
var reloadDebounce = 300 * time.Millisecond

const reloadRetries = 4

func newReloader(path string, srv *proxy.Server, cfg config.Config, log zerolog.Logger) *reloader {
	r := &reloader{path: path, srv: srv, log: log, cfg: cfg}
	r.sums = r.checksums(cfg)
	return r
}

// files are those a reload reads.
func (r *reloader) files(cfg config.Config) []string {
	var out []string
	for _, f := range []string{r.path, cfg.Listen.TLS.CertFile, cfg.Listen.TLS.KeyFile, cfg.Listen.TLS.ClientCAFile,
		cfg.Upstream.PasswordFile, cfg.Upstream.TLS.CAFile, cfg.Upstream.TLS.CertFile, cfg.Upstream.TLS.KeyFile,
		cfg.Admin.TLS.CertFile, cfg.Admin.TLS.KeyFile, cfg.Admin.TLS.ClientCAFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (r *reloader) checksums(cfg config.Config) map[string][32]byte {
	m := map[string][32]byte{}
	for _, f := range r.files(cfg) {
		if b, err := os.ReadFile(f); err == nil {
			m[f] = sha256.Sum256(b)
		}
	}
	return m
}

// changed reports whether the files differ from what was last loaded, and
// from what last failed to load.
func (r *reloader) changed() bool {
	now := r.checksums(r.cfg)
	return !sameSums(now, r.sums) && !sameSums(now, r.failed)
}

func sameSums(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for f, sum := range a {
		if b[f] != sum {
			return false
		}
	}
	return true
}

// reload loads the configuration and applies it; retries > 0 tries again
// after reloadDebounce while it fails. Only the outcome is counted.
func (r *reloader) reload(why string, retries int) {
	var err error
	for attempt := 0; ; attempt++ {
		// The new configuration is resolved whole (every file read, every
		// TLS configuration built), then swapped in.
		var cfg config.Config
		var set *proxy.Settings
		if cfg, err = config.Load(r.path); err == nil {
			if set, err = proxy.Resolve(cfg); err == nil {
				r.srv.Apply(set)
				setLogLevel(cfg.Log)
				r.cfg, r.sums = cfg, r.checksums(cfg)
				break
			}
		}
		if attempt >= retries {
			r.failed = r.checksums(r.cfg)
			break
		}
		time.Sleep(reloadDebounce)
	}
	r.srv.NoteReload(why, err)
}

// run serves the reload triggers until ctx is done.
func (r *reloader) run(ctx context.Context, hup <-chan os.Signal) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		r.log.Warn().Err(err).Msg("cannot watch the certificate files; they are reloaded on SIGHUP and tls.reload_interval only")
	} else {
		defer w.Close()
		r.watch(w)
	}
	var events <-chan fsnotify.Event
	var werrs <-chan error
	if w != nil {
		events, werrs = w.Events, w.Errors
	}
	var tick <-chan time.Time
	if iv := r.cfg.TLS.ReloadInterval; iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		tick = t.C
	}
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			sdNotify("RELOADING=1")
			r.reload("SIGHUP", 0)
			sdNotify("READY=1")
		case <-events:
			settle = time.After(reloadDebounce) // wait for the burst to end
			continue
		case err := <-werrs:
			r.log.Warn().Err(err).Msg("watching the certificate files")
			continue
		case <-settle:
			settle = nil
			if !r.changed() {
				continue
			}
			r.reload("file change", reloadRetries)
		case <-tick:
			if !r.changed() {
				continue
			}
			r.reload("tls.reload_interval", 0)
		}
		if w != nil {
			r.watch(w) // the configuration may name new directories
		}
	}
}

// watch adds the directories of the files a reload reads, and the parent of
// every symlink on their paths: swapping a symlinked directory
// (dir/current -> v2) changes dir, not the directory current pointed to.
func (r *reloader) watch(w *fsnotify.Watcher) {
	for _, f := range r.files(r.cfg) {
		for _, dir := range watchDirs(f) {
			if err := w.Add(dir); err != nil {
				r.log.Warn().Err(err).Str("directory", dir).Msg("cannot watch for certificate changes")
			}
		}
	}
}

func watchDirs(file string) []string {
	dirs := []string{filepath.Dir(file)}
	for p := filepath.Dir(file); filepath.Dir(p) != p; p = filepath.Dir(p) {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	return dirs
}
