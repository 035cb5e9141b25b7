package main

import (
	"net"
	"os"
)

// sdNotify sends state to systemd when it started us with Type=notify.
// It is the whole of the sd_notify protocol we need: one datagram on the
// socket named by NOTIFY_SOCKET ("@" means the abstract namespace).
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
