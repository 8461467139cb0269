package gen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Client is a minimal RESP2 client: enough to read Redis's command metadata
// and to compare the commands package's parsers with Redis's answers. It is
// not safe for concurrent use.
type Client struct {
	// Timeout bounds each Do call; zero means 10 seconds.
	Timeout time.Duration

	conn net.Conn
	r    *bufio.Reader
}

// Error is an error reply from Redis: its text without the leading '-'.
type Error string

func (e Error) Error() string { return string(e) }

// Dial connects to Redis ("tcp", "127.0.0.1:6379" or "unix", "/path.sock").
func Dial(network, address string) (*Client, error) {
	conn, err := net.DialTimeout(network, address, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to redis at %s: %w", address, err)
	}
	return &Client{conn: conn, r: bufio.NewReader(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Do sends one command and reads its reply: a string (simple, bulk,
// verbatim, double or big number), an int64, a bool, nil (null), or a []any
// (array, set, push; a map as keys and values in turn). An error reply is
// returned as an Error.
func (c *Client) Do(args ...string) (any, error) {
	if err := c.Send(args...); err != nil {
		return nil, err
	}
	return c.Receive()
}

// Send writes one command without reading its reply.
func (c *Client) Send(args ...string) error {
	b := make([]byte, 0, 64)
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, "\r\n"...)
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, "\r\n"...)
		b = append(b, a...)
		b = append(b, "\r\n"...)
	}
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout())); err != nil {
		return err
	}
	_, err := c.conn.Write(b)
	return err
}

// Receive reads one reply.
func (c *Client) Receive() (any, error) {
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout())); err != nil {
		return nil, err
	}
	v, err := c.read()
	if err != nil {
		return nil, err
	}
	if e, ok := v.(Error); ok {
		return nil, e
	}
	return v, nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return 10 * time.Second
}

var errProtocol = errors.New("unexpected reply from redis")

func (c *Client) read() (any, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: %q", errProtocol, line)
	}
	kind, text := line[0], line[1:len(line)-2]
	switch kind {
	case '+', ',', '(':
		return text, nil
	case '-':
		return Error(text), nil
	case '_':
		return nil, nil
	case '#':
		return text == "t", nil
	case ':':
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", errProtocol, line)
		}
		return n, nil
	case '$', '=', '!':
		n, err := strconv.Atoi(text)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("%w: %q", errProtocol, line)
		}
		if n == -1 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, err
		}
		if kind == '!' {
			return Error(b[:n]), nil
		}
		return string(b[:n]), nil
	case '*', '~', '>', '%':
		n, err := strconv.Atoi(text)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("%w: %q", errProtocol, line)
		}
		if n == -1 {
			return nil, nil
		}
		if kind == '%' {
			n *= 2
		}
		a := make([]any, n)
		for i := range a {
			// An error inside an array stays a value: only a top-level
			// error reply is returned as an error.
			if a[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	return nil, fmt.Errorf("%w: %q", errProtocol, line)
}
