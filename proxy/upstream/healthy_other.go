//go:build !unix

package upstream

// healthy cannot peek at a socket here; a closed connection shows up as an
// error on first use instead.
func (c *Conn) healthy() bool { return true }
