package connlimit

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestCounter(t *testing.T) {
	c := New(3, 2)
	for _, k := range []string{"a", "a", "b"} {
		if ok, why := c.Add(k); !ok {
			t.Fatalf("Add(%s) refused: %s", k, why)
		}
	}
	if ok, _ := c.Add("c"); ok {
		t.Error("a fourth connection accepted, max 3")
	}
	c.Remove("b")
	if ok, _ := c.Add("a"); ok {
		t.Error("a third connection of a accepted, per client 2")
	}
	if ok, why := c.Add("c"); !ok {
		t.Errorf("c refused after b left: %s", why)
	}
	if n := c.Total(); n != 3 {
		t.Errorf("Total %d, want 3", n)
	}
}

// The listener closes a client's connection over the cap at once and
// counts a closed one out.
func TestListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := New(0, 1)
	l := Listener(inner, c, nil)
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	dial := func() net.Conn {
		conn, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		return conn
	}
	dial()
	first := <-accepted
	if _, err := dial().Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("second connection: %v, want closed", err)
	}
	first.Close()
	first.Close() // counted out once
	dial()
	<-accepted
	if n := c.Total(); n != 1 {
		t.Errorf("Total %d, want 1", n)
	}
}
