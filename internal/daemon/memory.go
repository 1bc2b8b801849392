package daemon

import (
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/config"
)

// SoftHSMRecycleAfterSessionObjects is how many session objects custodyd
// lets SoftHSM accumulate before recycling the module (hsm/recycle.go) when
// hsm.recycle_after_session_objects is 0. SoftHSM 2.6.1 keeps ~260 bytes
// of every destroyed session object until C_Finalize, so this caps that
// memory near 5 MB. A recycle pauses calls for ~10 ms plus ~0.2 ms per key
// object on the token (measured with 1 and 1,000 keys), so vaults with
// thousands of keys under heavy key-transport load may want a larger value.
const SoftHSMRecycleAfterSessionObjects = 20_000

// recycleAfter is hsm.Config.RecycleAfterSessionObjects for the configured
// token: the configured count, or for 0 the module's default (SoftHSM leaks
// session objects; other modules are not known to), or never for -1.
//
// TODO(hsmcompat): take the leak from the vendor profile
// (LeaksSessionObjects) instead of the module's file name.
func recycleAfter(h config.HSMConfig, log *slog.Logger) int {
	n := h.RecycleAfterSessionObjects
	if n == 0 {
		if u, err := hsm.ParseURI(h.URI); err == nil && strings.Contains(filepath.Base(u.ModulePath), "softhsm") {
			n = SoftHSMRecycleAfterSessionObjects
		}
	}
	if n <= 0 {
		return 0
	}
	log.Info("hsm: the module will be recycled to free session objects", "after_session_objects", n,
		"malloc_arenas_limited", hsm.LimitMallocArenas(MallocArenasWhenRecycling))
	return n
}

// MallocArenasWhenRecycling caps glibc's malloc arenas on a module that is
// recycled (hsm.LimitMallocArenas): measured with make soak, the C side
// then stays flat instead of creeping ~4 MB over the first minutes.
const MallocArenasWhenRecycling = 2
