package daemon

import (
	"errors"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/config"
)

func TestClientConnectionCapIsDerivedBelowTheDescriptorLimit(t *testing.T) {
	var c config.Config
	c.ApplyDefaults()
	l := c.Limits
	if n, err := clientConnCap(l, 20000); err != nil || n != 20000-1024-64 {
		t.Fatalf("derived cap for 20000 descriptors = %d, %v; want %d", n, err, 20000-1024-64)
	}
	l.MaxConnections = 5000
	if n, err := clientConnCap(l, 20000); err != nil || n != 5000 {
		t.Fatalf("configured cap = %d, %v", n, err)
	}
	l.MaxConnections = 19000
	_, err := clientConnCap(l, 20000)
	if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "limits.max_connections: 19000 exceeds the 18912 descriptors") {
		t.Fatalf("cap above the descriptor budget: %v", err)
	}
	l.MaxConnections = 0
	if _, err := clientConnCap(l, 1024); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "limits.fd_reserve") {
		t.Fatalf("1024 descriptors with a 1024 reserve: %v", err)
	}
}

func TestRaiseNoFileLeavesSoftAtHard(t *testing.T) {
	n, err := raiseNoFile()
	if err != nil || n < 64 {
		t.Fatalf("raiseNoFile = %d, %v", n, err)
	}
	if again, _ := raiseNoFile(); again != n {
		t.Fatalf("second call %d, first %d", again, n)
	}
}
