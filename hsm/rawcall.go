package hsm

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

// The few PKCS#11 v2.40 types the calls below need. CK_ULONG is unsigned
// long on every platform PKCS#11 modules are built for here (LP64 Linux).
typedef unsigned long ck_ulong;
typedef unsigned char ck_byte;

typedef struct {
	ck_ulong mechanism;
	void *parameter;
	ck_ulong parameter_len;
} ck_mechanism;

typedef struct {
	ck_ulong hash_alg;
	ck_ulong mgf;
	ck_ulong source;
	void *source_data;
	ck_ulong source_data_len;
} ck_oaep_params;

// CK_FUNCTION_LIST: a CK_VERSION, then the 68 v2.40 entry points in the
// order of pkcs11f.h. Only the ones used here are named; the layout is
// checked against the exported symbols of SoftHSM by a test.
enum { fl_set_pin = 11, fl_login = 18, fl_encrypt = 30, fl_decrypt = 34, fl_wrap_key = 60, fl_count = 68 };
typedef struct {
	unsigned char major, minor;
	void *fn[fl_count];
} ck_function_list;

typedef ck_ulong (*get_function_list_fn)(ck_function_list **);
typedef ck_ulong (*crypt_fn)(ck_ulong, ck_byte *, ck_ulong, ck_byte *, ck_ulong *);
typedef ck_ulong (*wrap_fn)(ck_ulong, ck_mechanism *, ck_ulong, ck_ulong, ck_byte *, ck_ulong *);
typedef ck_ulong (*login_fn)(ck_ulong, ck_ulong, ck_byte *, ck_ulong);
typedef ck_ulong (*set_pin_fn)(ck_ulong, ck_byte *, ck_ulong, ck_byte *, ck_ulong);

// custody_open finds the already loaded module (RTLD_NOLOAD: never a second
// copy with its own state) and its function list.
static void *custody_open(const char *path, ck_function_list **fl, ck_ulong *rv) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL) {
		return NULL;
	}
	get_function_list_fn get = (get_function_list_fn)dlsym(h, "C_GetFunctionList");
	if (get == NULL) {
		dlclose(h);
		return NULL;
	}
	*rv = get(fl);
	if (*rv != 0 || *fl == NULL) {
		dlclose(h);
		return NULL;
	}
	return h;
}

static void custody_close(void *h) { dlclose(h); }

static void *custody_fn(ck_function_list *fl, int i) { return fl->fn[i]; }

static void *custody_sym(void *h, const char *name) { return dlsym(h, name); }

static ck_ulong custody_encrypt(ck_function_list *fl, ck_ulong sh, ck_byte *in, ck_ulong in_len, ck_byte *out, ck_ulong *out_len) {
	return ((crypt_fn)fl->fn[fl_encrypt])(sh, in, in_len, out, out_len);
}

static ck_ulong custody_decrypt(ck_function_list *fl, ck_ulong sh, ck_byte *in, ck_ulong in_len, ck_byte *out, ck_ulong *out_len) {
	return ((crypt_fn)fl->fn[fl_decrypt])(sh, in, in_len, out, out_len);
}

// The PIN calls take the caller's bytes where they are (locked memory):
// no copy is made on either side of the cgo boundary.
static ck_ulong custody_login(ck_function_list *fl, ck_ulong sh, ck_ulong user, ck_byte *pin, ck_ulong pin_len) {
	return ((login_fn)fl->fn[fl_login])(sh, user, pin, pin_len);
}

static ck_ulong custody_set_pin(ck_function_list *fl, ck_ulong sh, ck_byte *old_pin, ck_ulong old_len, ck_byte *new_pin, ck_ulong new_len) {
	return ((set_pin_fn)fl->fn[fl_set_pin])(sh, old_pin, old_len, new_pin, new_len);
}

static ck_ulong custody_wrap(ck_function_list *fl, ck_ulong sh, ck_ulong mech, ck_ulong wrapping, ck_ulong key, ck_byte *out, ck_ulong *out_len) {
	ck_mechanism m = { mech, NULL, 0 };
	return ((wrap_fn)fl->fn[fl_wrap_key])(sh, &m, wrapping, key, out, out_len);
}

static ck_ulong custody_wrap_oaep(ck_function_list *fl, ck_ulong sh, ck_ulong mech, ck_ulong hash, ck_ulong mgf, ck_ulong wrapping, ck_ulong key, ck_byte *out, ck_ulong *out_len) {
	// CKZ_DATA_SPECIFIED (1) with an empty label.
	ck_oaep_params p = { hash, mgf, 1, NULL, 0 };
	ck_mechanism m = { mech, &p, sizeof(p) };
	return ((wrap_fn)fl->fn[fl_wrap_key])(sh, &m, wrapping, key, out, out_len);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// rawLib calls the few PKCS#11 functions whose output must be pre-sized.
//
// miekg/pkcs11 asks the module for the output size (a call with a NULL
// buffer) and then allocates exactly that. Some modules answer the size
// query wrongly: NSS softokn 3.87 answers too little for AES-GCM encryption
// and for RFC 5649 key wrap, and the real call then fails with
// CKR_BUFFER_TOO_SMALL. Custody always knows an upper bound of the output
// (plaintext + tag, key + 8, the RSA modulus), so these calls pass a buffer
// of that size directly. The module is the one miekg/pkcs11 already loaded
// (same handle, same state), so sessions and objects are shared.
type rawLib struct {
	h  unsafe.Pointer
	fl *C.ck_function_list
}

// openRaw finds the function list of the module at path, which must be
// loaded already.
func openRaw(path string) (*rawLib, error) {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	var fl *C.ck_function_list
	var rv C.ck_ulong
	h := C.custody_open(cs, &fl, &rv)
	if h == nil {
		if rv != 0 {
			return nil, fmt.Errorf("%w: C_GetFunctionList of %q: %w", ErrUnavailable, path, pkcs11.Error(rv))
		}
		return nil, fmt.Errorf("%w: pkcs11 module %q is not loaded or has no C_GetFunctionList", ErrUnavailable, path)
	}
	return &rawLib{h: h, fl: fl}, nil
}

func (r *rawLib) close() {
	if r != nil && r.h != nil {
		C.custody_close(r.h)
		r.h = nil
	}
}

// fnMatchesSymbol reports whether entry i of the function list is the
// module's exported symbol name (for the layout test).
func (r *rawLib) fnMatchesSymbol(i int, name string) bool {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	sym := C.custody_sym(r.h, cs)
	return sym != nil && sym == C.custody_fn(r.fl, C.int(i))
}

var stub = []byte{0}

func bytePtr(b []byte) *C.ck_byte {
	if len(b) == 0 {
		b = stub
	}
	return (*C.ck_byte)(unsafe.Pointer(unsafe.SliceData(b)))
}

// maxRetryGrowth bounds how much larger than Custody's own bound a module
// may ask the output to be after CKR_BUFFER_TOO_SMALL.
const maxRetryGrowth = 64

// call runs f with an output buffer of want bytes. If the module still
// says CKR_BUFFER_TOO_SMALL (the operation stays active then, per PKCS#11),
// it retries once with the size the module asked for, within a small bound.
func call(want int, f func(out *C.ck_byte, n *C.ck_ulong) C.ck_ulong) ([]byte, error) {
	out := make([]byte, max(want, 1))
	n := C.ck_ulong(len(out))
	rv := f(bytePtr(out), &n)
	if rv == C.ck_ulong(pkcs11.CKR_BUFFER_TOO_SMALL) && int(n) > len(out) && int(n) <= want+maxRetryGrowth {
		out = make([]byte, int(n))
		rv = f(bytePtr(out), &n)
	}
	if rv != 0 {
		return nil, pkcs11.Error(rv)
	}
	if int(n) > len(out) {
		return nil, fmt.Errorf("%w: token reported %d output bytes in a %d-byte buffer", ErrMechanism, int(n), len(out))
	}
	return out[:int(n)], nil
}

// encrypt is C_Encrypt (after C_EncryptInit) into a buffer of want bytes.
func (r *rawLib) encrypt(sh pkcs11.SessionHandle, in []byte, want int) ([]byte, error) {
	return call(want, func(out *C.ck_byte, n *C.ck_ulong) C.ck_ulong {
		return C.custody_encrypt(r.fl, C.ck_ulong(sh), bytePtr(in), C.ck_ulong(len(in)), out, n)
	})
}

// decrypt is C_Decrypt (after C_DecryptInit) into a buffer of want bytes.
func (r *rawLib) decrypt(sh pkcs11.SessionHandle, in []byte, want int) ([]byte, error) {
	return call(want, func(out *C.ck_byte, n *C.ck_ulong) C.ck_ulong {
		return C.custody_decrypt(r.fl, C.ck_ulong(sh), bytePtr(in), C.ck_ulong(len(in)), out, n)
	})
}

// wrap is C_WrapKey with a parameterless mechanism (AES key wrap).
func (r *rawLib) wrap(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, want int) ([]byte, error) {
	return call(want, func(out *C.ck_byte, n *C.ck_ulong) C.ck_ulong {
		return C.custody_wrap(r.fl, C.ck_ulong(sh), C.ck_ulong(mech), C.ck_ulong(wrapping), C.ck_ulong(key), out, n)
	})
}

// wrapOAEP is C_WrapKey with CKM_RSA_PKCS_OAEP (MGF1 over the same hash,
// empty label).
func (r *rawLib) wrapOAEP(sh pkcs11.SessionHandle, hash, mgf uint, wrapping, key pkcs11.ObjectHandle, want int) ([]byte, error) {
	return call(want, func(out *C.ck_byte, n *C.ck_ulong) C.ck_ulong {
		return C.custody_wrap_oaep(r.fl, C.ck_ulong(sh), C.ck_ulong(pkcs11.CKM_RSA_PKCS_OAEP), C.ck_ulong(hash), C.ck_ulong(mgf),
			C.ck_ulong(wrapping), C.ck_ulong(key), out, n)
	})
}

// login is C_Login with the PIN bytes passed in place. miekg/pkcs11's Login
// copies its PIN string into C.CString memory that free(3) leaves intact
// (a copy that outlives the call in the C heap), so the module never
// calls it: the PIN is read by the token straight from the pinVault's
// locked scratch area, which is zeroed after the call.
func (r *rawLib) login(sh pkcs11.SessionHandle, user uint, pin []byte) error {
	if len(pin) == 0 {
		return pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)
	}
	if rv := C.custody_login(r.fl, C.ck_ulong(sh), C.ck_ulong(user), bytePtr(pin), C.ck_ulong(len(pin))); rv != 0 {
		return pkcs11.Error(rv)
	}
	return nil
}

// setPIN is C_SetPIN with both PINs passed in place (see login).
func (r *rawLib) setPIN(sh pkcs11.SessionHandle, oldPIN, newPIN []byte) error {
	if len(oldPIN) == 0 || len(newPIN) == 0 {
		return pkcs11.Error(pkcs11.CKR_PIN_INVALID)
	}
	if rv := C.custody_set_pin(r.fl, C.ck_ulong(sh), bytePtr(oldPIN), C.ck_ulong(len(oldPIN)), bytePtr(newPIN), C.ck_ulong(len(newPIN))); rv != 0 {
		return pkcs11.Error(rv)
	}
	return nil
}

// initArgs is a C copy of hsm.init_args, passed as pReserved to
// C_Initialize. It lives as long as the module: a module may keep the
// pointer.
type initArgs struct{ p *C.char }

func newInitArgs(s string) *initArgs {
	if s == "" {
		return nil
	}
	return &initArgs{p: C.CString(s)}
}

func (a *initArgs) ptr() unsafe.Pointer {
	if a == nil {
		return nil
	}
	return unsafe.Pointer(a.p)
}

func (a *initArgs) free() {
	if a != nil && a.p != nil {
		C.free(unsafe.Pointer(a.p))
		a.p = nil
	}
}

// functionListNames are the v2.40 entry points in function-list order.
var functionListNames = []string{
	"C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList", "C_GetSlotInfo",
	"C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN", "C_SetPIN",
	"C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
	"C_SetOperationState", "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject",
	"C_GetObjectSize", "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects",
	"C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit",
	"C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", "C_DigestInit", "C_Digest", "C_DigestUpdate",
	"C_DigestKey", "C_DigestFinal", "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit",
	"C_SignRecover", "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal", "C_VerifyRecoverInit",
	"C_VerifyRecover", "C_DigestEncryptUpdate", "C_DecryptDigestUpdate", "C_SignEncryptUpdate",
	"C_DecryptVerifyUpdate", "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey",
	"C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus", "C_CancelFunction", "C_WaitForSlotEvent",
}
