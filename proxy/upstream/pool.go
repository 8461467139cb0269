package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// Limits bound the connections a Pool keeps to Redis.
type Limits struct {
	MaxShared int // multiplexed connections per protocol version and database
	MinIdle   int // idle connections kept ready for pinned sessions
	MaxIdle   int // idle connections kept after pinned sessions end
	MaxPinned int // dedicated connections leased at once
}

// ErrClosed is returned once the pool is closed.
var ErrClosed = errors.New("proxy is shutting down")

// Pool holds the connections to one Redis as one upstream user: a few shared,
// multiplexed connections per protocol version for stateless commands, and
// dedicated connections leased to sessions that need connection state.
type Pool struct {
	opts   Options
	limits Limits
	log    zerolog.Logger

	shared   sync.Map // sharedKey -> []*sharedSlot, made on first use
	next     atomic.Uint32
	pinned   chan struct{} // one token per leased connection
	minBadDB atomic.Int64  // the lowest database Redis refused to SELECT

	mu       sync.Mutex
	idle     [2][]*Conn
	closed   bool
	dialErr  error     // last dial failure, returned to clients until retryAt
	retryAt  time.Time // no new dial before this (backoff)
	backoff  time.Duration
	announce sync.Once
	stop     chan struct{}
}

// sharedKey names a set of shared connections: every connection of a set
// speaks one protocol version in one database.
type sharedKey struct{ proto, db int }

type sharedSlot struct {
	mu sync.Mutex // held while dialing
	m  atomic.Pointer[mux]
}

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// NewPool returns a pool; Start begins keeping idle connections ready.
func NewPool(o Options, l Limits, log zerolog.Logger) *Pool {
	p := &Pool{
		opts:   o,
		limits: l,
		log:    log,
		pinned: make(chan struct{}, l.MaxPinned),
		stop:   make(chan struct{}),
	}
	p.minBadDB.Store(math.MaxInt64)
	return p
}

// Start dials the first connection and keeps MinIdle idle connections ready
// in the background, redialing with backoff while Redis is unreachable.
func (p *Pool) Start() {
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			p.fillIdle()
			select {
			case <-t.C:
			case <-p.stop:
				return
			}
		}
	}()
}

func (p *Pool) fillIdle() {
	for {
		p.mu.Lock()
		need := !p.closed && len(p.idle[0]) < p.limits.MinIdle
		p.mu.Unlock()
		if !need {
			return
		}
		c, err := p.dial(2, p.opts.DB)
		if err != nil {
			return
		}
		p.putIdle(c)
	}
}

// Do sends a batch of stateless commands over a shared connection of the
// given protocol and database, and waits for the replies. When Redis cannot
// be reached, every command gets an error reply at once.
func (p *Pool) Do(proto, db int, b *Batch) {
	m, err := p.sharedConn(proto, db)
	if err != nil {
		b.owed = len(b.Cmds)
		b.fail(err)
		return
	}
	if h := p.opts.Hooks; h != nil && h.Batch != nil {
		start := time.Now()
		m.do(b)
		h.Batch(time.Since(start))
		return
	}
	m.do(b)
}

// Exchange sends one command on a shared connection of the given protocol
// and database and returns Redis's reply. A connection that cannot be made is
// the error: a *ReplyError when Redis refused its set-up (for a pool made
// for a client's AUTH, the client's credentials).
func (p *Pool) Exchange(proto, db int, cmd []byte) ([]byte, error) {
	m, err := p.sharedConn(proto, db)
	if err != nil {
		return nil, err
	}
	b := &Batch{Cmds: [][]byte{cmd}}
	m.do(b)
	if b.Lost {
		return nil, errors.New("the shared connection failed before Redis answered")
	}
	return b.Out, nil
}

// User is the ACL user the pool's connections log in as ("default" when
// none is configured).
func (p *Pool) User() string {
	if p.opts.Username == "" {
		return "default"
	}
	return p.opts.Username
}

// Password is the password the pool's connections log in with.
func (p *Pool) Password() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opts.Password
}

// SetTLS makes new connections use tc (a reload of the upstream CA or
// client certificate); open connections keep theirs. A nil tc leaves a
// plain pool plain.
func (p *Pool) SetTLS(tc *tls.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.opts.TLS != nil && tc != nil {
		p.opts.TLS = tc
	}
}

// SetPassword makes new connections log in with password (a rotated
// upstream.password_file); open connections stay logged in.
func (p *Pool) SetPassword(password string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opts.Password = password
}

// ForUser returns a pool like p whose connections log in as user with
// password, for the sessions of clients that authenticated as that user.
// It keeps no idle connections ready.
func (p *Pool) ForUser(user, password string) *Pool {
	p.mu.Lock()
	o := p.opts
	p.mu.Unlock()
	o.Username, o.Password = user, password
	l := p.limits
	l.MinIdle = 0
	return NewPool(o, l, p.log.With().Str("upstream_user", user).Logger())
}

// ErrBadDB is what Redis answers to SELECT of a database it does not have.
var ErrBadDB = &ReplyError{Command: "SELECT", Reply: "ERR DB index is out of range"}

// CheckDB reports whether db may exist. Redis's databases are numbered from
// 0 up, so once Redis refused one, every higher one is refused without asking
// it again.
func (p *Pool) CheckDB(db int) error {
	if db < 0 || int64(db) >= p.minBadDB.Load() {
		return ErrBadDB
	}
	return nil
}

func (p *Pool) slots(proto, db int) []*sharedSlot {
	k := sharedKey{proto, db}
	if v, ok := p.shared.Load(k); ok {
		return v.([]*sharedSlot)
	}
	slots := make([]*sharedSlot, p.limits.MaxShared)
	for i := range slots {
		slots[i] = new(sharedSlot)
	}
	v, _ := p.shared.LoadOrStore(k, slots)
	return v.([]*sharedSlot)
}

func (p *Pool) sharedConn(proto, db int) (*mux, error) {
	if err := p.CheckDB(db); err != nil {
		return nil, err
	}
	slots := p.slots(proto, db)
	start := int(p.next.Add(1))
	// Prefer a connection with nothing in flight: the batch goes out at once.
	for i := range slots {
		m := slots[(start+i)%len(slots)].m.Load()
		if m != nil && m.pending.Load() == 0 && len(m.queue) == 0 && m.alive() {
			return m, nil
		}
	}
	s := slots[start%len(slots)]
	if m := s.m.Load(); m != nil && m.alive() {
		return m, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.m.Load(); m != nil && m.alive() {
		return m, nil
	}
	c, err := p.dial(proto, db)
	if err != nil {
		return nil, err
	}
	m := newMux(c, p.log)
	s.m.Store(m)
	return m, nil
}

// ErrPinnedExhausted means every dedicated connection allowed by
// upstream.pool.max_pinned is in use.
var ErrPinnedExhausted = errors.New("all dedicated connections (upstream.pool.max_pinned) are in use")

// lease hands out a dedicated connection speaking the given protocol in the
// given database. The caller owns it until release.
func (p *Pool) lease(ctx context.Context, proto, db int) (*Conn, error) {
	if err := p.CheckDB(db); err != nil {
		return nil, err
	}
	select {
	case p.pinned <- struct{}{}:
	default:
		t := time.NewTimer(p.opts.DialTimeout)
		defer t.Stop()
		select {
		case p.pinned <- struct{}{}:
		case <-t.C:
			return nil, ErrPinnedExhausted
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for {
		c := p.takeIdle(proto)
		if c == nil {
			break
		}
		if !c.healthy() {
			c.Close()
			continue
		}
		if c.db != db {
			err := c.selectDB(db)
			var re *ReplyError
			if errors.As(err, &re) {
				// Redis refused the database; the connection is fine.
				p.putIdle(c)
				<-p.pinned
				p.noteBadDB(db, re)
				return nil, err
			}
			if err != nil {
				c.Close()
				continue
			}
		}
		return c, nil
	}
	c, err := p.dial(proto, db)
	if err != nil {
		<-p.pinned
		return nil, err
	}
	return c, nil
}

// noteBadDB remembers that Redis has no database db, when that is what it
// said (a user without the right to SELECT gets NOPERM instead, which says
// nothing about the database).
func (p *Pool) noteBadDB(db int, re *ReplyError) {
	if db <= 0 || !strings.HasPrefix(re.Reply, "ERR DB index is out of range") {
		return
	}
	for {
		bad := p.minBadDB.Load()
		if int64(db) >= bad || p.minBadDB.CompareAndSwap(bad, int64(db)) {
			return
		}
	}
}

// IsShared reports whether id (Redis's CLIENT ID) or addr (the address
// Redis's CLIENT LIST shows, addr=) names one of the pool's shared
// connections. Empty or zero arguments match nothing.
func (p *Pool) IsShared(id int64, addr string) bool {
	found := false
	p.shared.Range(func(_, v any) bool {
		for _, s := range v.([]*sharedSlot) {
			m := s.m.Load()
			if m == nil {
				continue
			}
			if id != 0 && m.c.id == id || addr != "" && tcpAddr(m.c.raw.LocalAddr()) == addr {
				found = true
				return false
			}
		}
		return true
	})
	return found
}

// Conns counts the pool's connections to Redis: shared (live multiplexed
// connections), pinned (leased to sessions) and idle (ready to lease).
func (p *Pool) Conns() (shared, pinned, idle int) {
	p.shared.Range(func(_, v any) bool {
		for _, s := range v.([]*sharedSlot) {
			if m := s.m.Load(); m != nil && m.alive() {
				shared++
			}
		}
		return true
	})
	p.mu.Lock()
	idle = len(p.idle[0]) + len(p.idle[1])
	p.mu.Unlock()
	return shared, len(p.pinned), idle
}

// ReleaseMode says what state a leased connection comes back in.
type ReleaseMode int

const (
	// Clean: the client left no state on the connection.
	Clean ReleaseMode = iota
	// Dirty: the client changed connection state; RESET before reuse.
	Dirty
	// Broken: replies may still be on the way or the connection failed.
	Broken
)

// release returns a leased connection.
func (p *Pool) release(c *Conn, mode ReleaseMode) {
	defer func() { <-p.pinned }()
	if mode == Dirty {
		if err := c.reset(); err != nil {
			mode = Broken
		}
	}
	if mode == Broken || c.r != c.w || c.scan.InReply() {
		c.Close()
		return
	}
	p.putIdle(c)
}

func (p *Pool) takeIdle(proto int) *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	idle := p.idle[proto-2]
	if len(idle) == 0 {
		return nil
	}
	c := idle[len(idle)-1]
	p.idle[proto-2] = idle[:len(idle)-1]
	return c
}

func (p *Pool) putIdle(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := c.proto - 2
	if p.closed || len(p.idle[i]) >= max(p.limits.MaxIdle, p.limits.MinIdle) {
		c.Close()
		return
	}
	p.idle[i] = append(p.idle[i], c)
}

// dial opens a connection unless a recent failure is still backing off, in
// which case it returns that failure at once: clients get a prompt error
// instead of each waiting for a dial timeout.
func (p *Pool) dial(proto, db int) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if p.dialErr != nil && time.Now().Before(p.retryAt) {
		err := p.dialErr
		p.mu.Unlock()
		return nil, err
	}
	o := p.opts // the connection keeps the credentials it was made with
	p.mu.Unlock()

	c, err := Dial(context.Background(), &o, proto, db)
	if h := p.opts.Hooks; h != nil && h.Dial != nil {
		h.Dial(err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	var re *ReplyError
	if errors.As(err, &re) && re.Command == "SELECT" {
		// Redis is there; it refused the database.
		p.noteBadDB(db, re)
		return nil, err
	}
	if err != nil {
		if p.dialErr == nil {
			p.log.Warn().Err(err).Str("upstream", p.opts.Address).Msg("cannot connect to Redis")
		}
		p.backoff = min(max(2*p.backoff, minBackoff), maxBackoff)
		p.retryAt = time.Now().Add(p.backoff)
		p.dialErr = err
		return nil, err
	}
	if p.dialErr != nil {
		p.log.Info().Str("upstream", p.opts.Address).Msg("Redis is reachable again")
	}
	p.dialErr, p.backoff = nil, 0
	p.announce.Do(p.announceEncryption)
	return c, nil
}

// announceEncryption logs, once, whether the link to Redis is encrypted: the
// line operators grep for to confirm TLS is on.
func (p *Pool) announceEncryption() {
	if p.opts.TLS != nil {
		p.log.Info().Str("upstream", p.opts.Address).Bool("tls", true).Msg("Connected to Redis (TLS enabled)")
		return
	}
	p.log.Warn().Str("upstream", p.opts.Address).Str("network", p.opts.Network).
		Bool("loopback", isLoopback(p.opts.Network, p.opts.Address)).Bool("tls", false).
		Msg("WARNING: Redis connection is not encrypted")
}

func isLoopback(network, addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return network == "unix" || err == nil && config.IsLoopbackHost(host)
}

// Close closes every connection; clients waiting on a shared connection get
// an error reply.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	for i := range p.idle {
		for _, c := range p.idle[i] {
			c.Close()
		}
		p.idle[i] = nil
	}
	p.mu.Unlock()
	p.shared.Range(func(_, v any) bool {
		for _, s := range v.([]*sharedSlot) {
			if m := s.m.Load(); m != nil {
				m.fail(ErrClosed)
			}
		}
		return true
	})
}
