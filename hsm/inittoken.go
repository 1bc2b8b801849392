package hsm

import (
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// InitToken initialises the first uninitialised token of a module with a
// label, an SO PIN and a user PIN, through PKCS#11 so that no PIN appears on
// a command line. It is for development and test set-up; it finalises the
// library when done, so call it before any Module is opened in the process.
func InitToken(modulePath, label string, soPIN, userPIN []byte) error {
	p := pkcs11.New(modulePath)
	if p == nil {
		return fmt.Errorf("%w: cannot load pkcs11 module %q", ErrUnavailable, modulePath)
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		return mapErr("initialise", err)
	}
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return mapErr("list slots", err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			if strings.TrimRight(ti.Label, " \x00") == label {
				return fmt.Errorf("%w: token %q is already initialised", ErrExists, label)
			}
			continue
		}
		if err := p.InitToken(s, string(soPIN), label); err != nil {
			return mapErr("init token", err)
		}
		// SoftHSM moves an initialised token to a new slot: find it by label.
		slot, err := findLabel(p, label)
		if err != nil {
			return err
		}
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return mapErr("open session", err)
		}
		defer p.CloseSession(sh)
		if err := p.Login(sh, pkcs11.CKU_SO, string(soPIN)); err != nil {
			return mapErr("so login", err)
		}
		defer p.Logout(sh)
		return mapErr("init pin", p.InitPIN(sh, string(userPIN)))
	}
	return fmt.Errorf("%w: no uninitialised token slot in %q", ErrNotFound, modulePath)
}

func findLabel(p *pkcs11.Ctx, label string) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, mapErr("list slots", err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimRight(ti.Label, " \x00") == label {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: token %q not found after initialisation", ErrNotFound, label)
}
