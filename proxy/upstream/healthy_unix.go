//go:build unix

package upstream

import "syscall"

// healthy reports whether an idle connection is still open. Redis sends
// nothing unasked to an idle connection, so anything to read (data, a TLS
// alert, or the end of the stream) means it is not. It peeks at the socket
// without blocking and without consuming anything.
func (c *Conn) healthy() bool {
	sc, ok := c.raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var one [1]byte
	var peekErr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, peekErr = syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait for readiness
	})
	return err == nil && (peekErr == syscall.EAGAIN || peekErr == syscall.EWOULDBLOCK)
}
