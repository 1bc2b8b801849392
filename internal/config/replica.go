package config

import (
	"os"
	"strings"
)

// maxReplicaID bounds replica_id (a DNS label is at most 63 bytes, a host
// name 253).
const maxReplicaID = 128

// applyReplicaDefault names the replica after its host when replica_id is
// unset.
func (c *Config) applyReplicaDefault() {
	if c.ReplicaID == "" {
		h, _ := os.Hostname()
		c.ReplicaID = h
	}
}

// validateReplicaID accepts letters, digits, '.', '-' and '_' (host names,
// pod names), 1 to 128 of them.
func validateReplicaID(ps *problems, id string) {
	switch {
	case id == "":
		ps.add("replica_id", "is empty and the host has no name; set it")
	case len(id) > maxReplicaID:
		ps.add("replica_id", "is %d bytes, limit %d", len(id), maxReplicaID)
	case strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) >= 0:
		ps.add("replica_id", "may hold only letters, digits, '.', '-' and '_'")
	}
}
