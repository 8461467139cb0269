package main

import (
	"net"
	"os"
)

// sdNotify sends state to systemd (Type=notify) through the datagram socket
// in NOTIFY_SOCKET, and does nothing without one. It is the whole of the
// sd_notify protocol the proxy needs: READY=1 once it listens, RELOADING=1
// and READY=1 around a reload, STOPPING=1 when the drain begins.
func sdNotify(state string) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return
	}
	if name[0] == '@' {
		name = "\x00" + name[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}
