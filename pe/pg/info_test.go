package pg

import (
	"context"
	"net"
	"testing"
)

// Info of a configured cluster whose host accepts connections and never
// answers returns (with the error in its details) instead of hanging.
func TestInfoOfAMuteCluster(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	cl := Cluster{Name: "mute", Host: "127.0.0.1", Port: l.Addr().(*net.TCPAddr).Port, User: "astrolabe", Password: "x", SSLMode: "disable", DBName: "postgres"}
	m := newManager(t, cl)
	p, err := m.Get(context.Background(), mustID(t, "mute"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.Details["error"]; !ok {
		t.Errorf("info of a mute cluster: %v, want an error in its details", info.Details)
	}
	t.Log(info.Details["error"])
}
