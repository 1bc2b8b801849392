package keys

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"
)

// Limits on key metadata.
const (
	// MaxNameLen is the longest key name ValidateName accepts.
	MaxNameLen = 128
	// MaxDescriptionLen is the longest description, in bytes.
	MaxDescriptionLen = 1024
	// KeyIDLen is the length of the key ids NewKeyID makes.
	KeyIDLen = 16
	// MaxHSMIDLen bounds a version's CKA_ID.
	MaxHSMIDLen = 64
	// MaxHSMLabelLen bounds a version's CKA_LABEL, in bytes.
	MaxHSMLabelLen = 256
)

// Purpose is what a key is for. It fixes the HSM key type, the mechanisms
// the key may be used with and which use checks (ForEncrypt, ForSign, ...)
// succeed. It is written in JSON as its String form.
type Purpose int

// Purposes. The zero value is not a valid purpose.
const (
	PurposeUnspecified Purpose = iota
	PurposeEncryptAES256GCM
	PurposeMACHMACSHA256
	PurposeSignECDSAP256
	PurposeSignECDSAP384
	PurposeSignEd25519
	PurposeSignRSAPSS3072
)

var purposeNames = [...]string{
	PurposeUnspecified:      "unspecified",
	PurposeEncryptAES256GCM: "encrypt-aes256-gcm",
	PurposeMACHMACSHA256:    "mac-hmac-sha256",
	PurposeSignECDSAP256:    "sign-ecdsa-p256",
	PurposeSignECDSAP384:    "sign-ecdsa-p384",
	PurposeSignEd25519:      "sign-ed25519",
	PurposeSignRSAPSS3072:   "sign-rsa-pss-3072",
}

// String returns the purpose's name, such as "encrypt-aes256-gcm".
func (p Purpose) String() string {
	if p < 0 || int(p) >= len(purposeNames) {
		return fmt.Sprintf("purpose(%d)", int(p))
	}
	return purposeNames[p]
}

// Valid reports whether p is one of the defined purposes other than
// PurposeUnspecified.
func (p Purpose) Valid() bool {
	return p > PurposeUnspecified && int(p) < len(purposeNames)
}

// IsSigning reports whether p is an asymmetric signing purpose.
func (p Purpose) IsSigning() bool {
	switch p {
	case PurposeSignECDSAP256, PurposeSignECDSAP384, PurposeSignEd25519, PurposeSignRSAPSS3072:
		return true
	}
	return false
}

// ParsePurpose returns the purpose named s. It accepts exactly the names
// String returns for valid purposes.
func ParsePurpose(s string) (Purpose, error) {
	for p := PurposeUnspecified + 1; int(p) < len(purposeNames); p++ {
		if purposeNames[p] == s {
			return p, nil
		}
	}
	return PurposeUnspecified, fmt.Errorf("%w: unknown key purpose %q", ErrInvalidArgument, truncate(s))
}

// MarshalText implements encoding.TextMarshaler; it refuses invalid purposes.
func (p Purpose) MarshalText() ([]byte, error) {
	if !p.Valid() {
		return nil, fmt.Errorf("%w: cannot encode %s", ErrInvalidArgument, p)
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler using ParsePurpose.
func (p *Purpose) UnmarshalText(b []byte) error {
	v, err := ParsePurpose(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// State is the life-cycle state of a key version. It is written in JSON as
// its String form.
//
//	Enabled ⇄ Disabled
//	Enabled, Disabled → DestroyScheduled → Destroyed
//	DestroyScheduled → Disabled (CancelDestroy)
type State int

// States. The zero value is not a valid state.
const (
	StateUnspecified State = iota
	StateEnabled
	StateDisabled
	StateDestroyScheduled
	StateDestroyed
)

var stateNames = [...]string{
	StateUnspecified:      "unspecified",
	StateEnabled:          "enabled",
	StateDisabled:         "disabled",
	StateDestroyScheduled: "destroy-scheduled",
	StateDestroyed:        "destroyed",
}

// String returns the state's name, such as "destroy-scheduled".
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("state(%d)", int(s))
	}
	return stateNames[s]
}

// Valid reports whether s is a defined state other than StateUnspecified.
func (s State) Valid() bool {
	return s > StateUnspecified && int(s) < len(stateNames)
}

// ParseState returns the state named s.
func ParseState(s string) (State, error) {
	for st := StateUnspecified + 1; int(st) < len(stateNames); st++ {
		if stateNames[st] == s {
			return st, nil
		}
	}
	return StateUnspecified, fmt.Errorf("%w: unknown version state %q", ErrInvalidArgument, truncate(s))
}

// MarshalText implements encoding.TextMarshaler; it refuses invalid states.
func (s State) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("%w: cannot encode %s", ErrInvalidArgument, s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler using ParseState.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Attrs are the PKCS#11 attributes read back from the HSM after a version's
// key was generated. Only a key that was generated inside the HSM and can
// never leave it is recorded (see Validate).
type Attrs struct {
	NeverExtractable bool `json:"never_extractable"` // CKA_NEVER_EXTRACTABLE
	AlwaysSensitive  bool `json:"always_sensitive"`  // CKA_ALWAYS_SENSITIVE
	Local            bool `json:"local"`             // CKA_LOCAL: generated on the token
	Extractable      bool `json:"extractable"`       // CKA_EXTRACTABLE
	Sensitive        bool `json:"sensitive"`         // CKA_SENSITIVE
	// Token, Private and Modifiable (CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE)
	// are nil in versions recorded before they were kept; every version
	// made now records them.
	Token      *bool `json:"token,omitempty"`
	Private    *bool `json:"private,omitempty"`
	Modifiable *bool `json:"modifiable,omitempty"`
}

// Validate refuses attributes that would let the key leave the HSM, now or
// ever: it requires NeverExtractable, AlwaysSensitive, Local and Sensitive,
// and refuses Extractable; where recorded, it requires Token and Private and
// refuses Modifiable.
func (a Attrs) Validate() error {
	switch {
	case a.Token != nil && !*a.Token:
		return fmt.Errorf("%w: hsm key is not a token object", ErrInvalidArgument)
	case a.Private != nil && !*a.Private:
		return fmt.Errorf("%w: hsm key is not private", ErrInvalidArgument)
	case a.Modifiable != nil && *a.Modifiable:
		return fmt.Errorf("%w: hsm key is modifiable", ErrInvalidArgument)
	case a.Extractable:
		return fmt.Errorf("%w: hsm key is extractable", ErrInvalidArgument)
	case !a.Sensitive:
		return fmt.Errorf("%w: hsm key is not sensitive", ErrInvalidArgument)
	case !a.NeverExtractable:
		return fmt.Errorf("%w: hsm key was extractable at some time", ErrInvalidArgument)
	case !a.AlwaysSensitive:
		return fmt.Errorf("%w: hsm key was not always sensitive", ErrInvalidArgument)
	case !a.Local:
		return fmt.Errorf("%w: hsm key was not generated on the token", ErrInvalidArgument)
	}
	return nil
}

// Version is one version of a key: one key object inside the HSM.
type Version struct {
	// Number counts from 1; version n is Key.Versions[n-1].
	Number uint32 `json:"number"`
	State  State  `json:"state"`
	// HSMID is the object's CKA_ID, HSMLabel its CKA_LABEL.
	HSMID    []byte    `json:"hsm_id"`
	HSMLabel string    `json:"hsm_label"`
	Created  time.Time `json:"created"`
	// DestroyAt is when a scheduled destruction becomes due. It is kept
	// after destruction and cleared by CancelDestroy.
	DestroyAt time.Time `json:"destroy_at,omitzero"`
	// DestroyedAt is when MarkDestroyed recorded the HSM object's deletion.
	DestroyedAt time.Time `json:"destroyed_at,omitzero"`
	Attrs       Attrs     `json:"attrs"`
}

func (v Version) clone() Version {
	v.HSMID = bytes.Clone(v.HSMID)
	return v
}

// Key is a named key and its versions. Encrypt, sign and MAC use the
// primary version; decrypt and verify accept any enabled version at or
// above MinDecrypt (0 means no minimum).
//
// A Key is plain data; it is not safe for concurrent use, and callers that
// share one should Clone it, change the clone and store it with
// compare-and-swap.
type Key struct {
	ID          []byte    `json:"id"`
	Name        string    `json:"name"`
	Purpose     Purpose   `json:"purpose"`
	Description string    `json:"description,omitempty"`
	Primary     uint32    `json:"primary"`
	MinDecrypt  uint32    `json:"min_decrypt"`
	Versions    []Version `json:"versions"`
	Created     time.Time `json:"created"`
}

// DestroyWindow bounds the wait between scheduling a version's
// destruction and the destruction itself. The caller takes it from
// configuration.
type DestroyWindow struct {
	Min, Max time.Duration
}

// NewKeyID returns a fresh random key id of KeyIDLen bytes.
func NewKeyID() []byte {
	id := make([]byte, KeyIDLen)
	_, _ = rand.Read(id) // crypto/rand.Read never returns an error.
	return id
}

// ValidateName checks a key name: 1..MaxNameLen characters from
// [a-zA-Z0-9._-], not starting with '.' or '-'. Errors wrap ErrInvalidName.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalidName, len(name), MaxNameLen)
	case name[0] == '.' || name[0] == '-':
		return fmt.Errorf("%w: must not start with %q", ErrInvalidName, name[0])
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: byte %d is %q, want one of [a-zA-Z0-9._-]", ErrInvalidName, i, c)
		}
	}
	return nil
}

func validateDescription(d string) error {
	if len(d) > MaxDescriptionLen {
		return fmt.Errorf("%w: description is %d bytes, at most %d allowed", ErrInvalidArgument, len(d), MaxDescriptionLen)
	}
	if !utf8.ValidString(d) {
		return fmt.Errorf("%w: description is not valid utf-8", ErrInvalidArgument)
	}
	return nil
}

func validateKeyID(id []byte) error {
	if len(id) == 0 || len(id) > MaxKeyIDLen {
		return fmt.Errorf("%w: key id is %d bytes, want 1..%d", ErrInvalidArgument, len(id), MaxKeyIDLen)
	}
	return nil
}

func validateHSMRef(id []byte, label string) error {
	if len(id) == 0 || len(id) > MaxHSMIDLen {
		return fmt.Errorf("%w: hsm id is %d bytes, want 1..%d", ErrInvalidArgument, len(id), MaxHSMIDLen)
	}
	if label == "" || len(label) > MaxHSMLabelLen || !utf8.ValidString(label) {
		return fmt.Errorf("%w: hsm label must be 1..%d bytes of utf-8", ErrInvalidArgument, MaxHSMLabelLen)
	}
	return nil
}

// normTime strips the monotonic reading and the location so that a Key
// survives a JSON round trip unchanged.
func normTime(t time.Time) time.Time { return t.Round(0).UTC() }

func requireTime(t time.Time, what string) error {
	if t.IsZero() {
		return fmt.Errorf("%w: %s time is zero", ErrInvalidArgument, what)
	}
	return nil
}

// NewKey returns a key with no versions. Call AddVersion to give it its
// first, primary version.
func NewKey(id []byte, name string, purpose Purpose, description string, now time.Time) (*Key, error) {
	if err := validateKeyID(id); err != nil {
		return nil, err
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if !purpose.Valid() {
		return nil, fmt.Errorf("%w: invalid key purpose %s", ErrInvalidArgument, purpose)
	}
	if err := validateDescription(description); err != nil {
		return nil, err
	}
	if err := requireTime(now, "creation"); err != nil {
		return nil, err
	}
	return &Key{
		ID:          bytes.Clone(id),
		Name:        name,
		Purpose:     purpose,
		Description: description,
		Created:     normTime(now),
	}, nil
}

// Clone returns a deep copy of k.
func (k *Key) Clone() *Key {
	c := *k
	c.ID = bytes.Clone(k.ID)
	if k.Versions != nil {
		c.Versions = make([]Version, len(k.Versions))
		for i, v := range k.Versions {
			c.Versions[i] = v.clone()
		}
	}
	return &c
}

// Version returns a copy of version n and whether the key has it.
func (k *Key) Version(n uint32) (Version, bool) {
	if n == 0 || uint64(n) > uint64(len(k.Versions)) {
		return Version{}, false
	}
	return k.Versions[n-1].clone(), true
}

// version returns a pointer to version n for transitions.
func (k *Key) version(n uint32) (*Version, error) {
	if n == 0 || uint64(n) > uint64(len(k.Versions)) {
		return nil, fmt.Errorf("%w: key has no version %d", ErrVersionNotFound, n)
	}
	return &k.Versions[n-1], nil
}

// Validate checks the invariants every stored key satisfies: a valid id,
// name, purpose and description; versions numbered 1..n in order with valid
// states, HSM references, safe attributes and the timestamps their states
// need; an enabled primary version when there are versions; and MinDecrypt
// at most Primary. Use it on keys read from storage.
func (k *Key) Validate() error {
	if err := validateKeyID(k.ID); err != nil {
		return err
	}
	if err := ValidateName(k.Name); err != nil {
		return err
	}
	if !k.Purpose.Valid() {
		return fmt.Errorf("%w: invalid key purpose %s", ErrInvalidArgument, k.Purpose)
	}
	if err := validateDescription(k.Description); err != nil {
		return err
	}
	if err := requireTime(k.Created, "key creation"); err != nil {
		return err
	}
	if uint64(len(k.Versions)) > math.MaxUint32 {
		return fmt.Errorf("%w: too many versions", ErrInvalidArgument)
	}
	for i, v := range k.Versions {
		if v.Number != uint32(i+1) {
			return fmt.Errorf("%w: versions[%d] has number %d, want %d", ErrInvalidArgument, i, v.Number, i+1)
		}
		if !v.State.Valid() {
			return fmt.Errorf("%w: version %d has invalid state %s", ErrInvalidArgument, v.Number, v.State)
		}
		if err := validateHSMRef(v.HSMID, v.HSMLabel); err != nil {
			return fmt.Errorf("version %d: %w", v.Number, err)
		}
		if err := v.Attrs.Validate(); err != nil {
			return fmt.Errorf("version %d: %w", v.Number, err)
		}
		if err := requireTime(v.Created, "version creation"); err != nil {
			return fmt.Errorf("version %d: %w", v.Number, err)
		}
		needDestroyAt := v.State == StateDestroyScheduled || v.State == StateDestroyed
		if needDestroyAt != !v.DestroyAt.IsZero() {
			return fmt.Errorf("%w: version %d is %s but destroy_at is %s", ErrInvalidArgument, v.Number, v.State, setOrUnset(v.DestroyAt))
		}
		if (v.State == StateDestroyed) != !v.DestroyedAt.IsZero() {
			return fmt.Errorf("%w: version %d is %s but destroyed_at is %s", ErrInvalidArgument, v.Number, v.State, setOrUnset(v.DestroyedAt))
		}
		for _, w := range k.Versions[:i] {
			if bytes.Equal(w.HSMID, v.HSMID) || w.HSMLabel == v.HSMLabel {
				return fmt.Errorf("%w: versions %d and %d share an hsm object", ErrInvalidArgument, w.Number, v.Number)
			}
		}
	}
	if len(k.Versions) == 0 {
		if k.Primary != 0 || k.MinDecrypt != 0 {
			return fmt.Errorf("%w: key without versions has primary %d and min decrypt %d, want 0 and 0", ErrInvalidArgument, k.Primary, k.MinDecrypt)
		}
		return nil
	}
	p, err := k.version(k.Primary)
	if err != nil {
		return fmt.Errorf("%w: primary version %d does not exist", ErrInvalidArgument, k.Primary)
	}
	if p.State != StateEnabled {
		return fmt.Errorf("%w: primary version %d is %s", ErrInvalidArgument, p.Number, p.State)
	}
	if k.MinDecrypt > k.Primary {
		return fmt.Errorf("%w: min decrypt %d is above primary %d", ErrInvalidArgument, k.MinDecrypt, k.Primary)
	}
	return nil
}

func setOrUnset(t time.Time) string {
	if t.IsZero() {
		return "unset"
	}
	return "set"
}

// AddVersion records a new version, created in the HSM as object (hsmID,
// hsmLabel) with the read-back attributes attrs, and makes it the enabled
// primary version. It returns the new version. It refuses attributes that
// fail Attrs.Validate and an HSM object already recorded for this key.
func (k *Key) AddVersion(hsmID []byte, hsmLabel string, attrs Attrs, now time.Time) (Version, error) {
	if err := validateHSMRef(hsmID, hsmLabel); err != nil {
		return Version{}, err
	}
	if err := attrs.Validate(); err != nil {
		return Version{}, err
	}
	if err := requireTime(now, "version creation"); err != nil {
		return Version{}, err
	}
	if uint64(len(k.Versions)) >= math.MaxUint32 {
		return Version{}, fmt.Errorf("%w: key has the maximum number of versions", ErrFailedPrecondition)
	}
	for _, w := range k.Versions {
		if bytes.Equal(w.HSMID, hsmID) || w.HSMLabel == hsmLabel {
			return Version{}, fmt.Errorf("%w: hsm object is already version %d", ErrInvalidArgument, w.Number)
		}
	}
	v := Version{
		Number:   uint32(len(k.Versions) + 1),
		State:    StateEnabled,
		HSMID:    bytes.Clone(hsmID),
		HSMLabel: hsmLabel,
		Created:  normTime(now),
		Attrs:    attrs,
	}
	k.Versions = append(k.Versions, v)
	k.Primary = v.Number
	return v.clone(), nil
}

// Enable makes version n usable again. Enabling an enabled version does
// nothing. A version scheduled for destruction must be cancelled first
// (CancelDestroy), and a destroyed version cannot come back.
func (k *Key) Enable(n uint32) error {
	v, err := k.version(n)
	if err != nil {
		return err
	}
	switch v.State {
	case StateEnabled:
		return nil
	case StateDisabled:
		v.State = StateEnabled
		return nil
	case StateDestroyScheduled:
		return fmt.Errorf("%w: version %d is scheduled for destruction; cancel the destruction first", ErrFailedPrecondition, n)
	case StateDestroyed:
		return fmt.Errorf("%w: version %d", ErrVersionDestroyed, n)
	}
	return invalidState(v)
}

// Disable stops version n from being used. Disabling a disabled version
// does nothing. The primary version cannot be disabled: add a version first.
func (k *Key) Disable(n uint32) error {
	v, err := k.version(n)
	if err != nil {
		return err
	}
	if n == k.Primary {
		return fmt.Errorf("%w: version %d is the primary version; rotate the key before disabling it", ErrFailedPrecondition, n)
	}
	switch v.State {
	case StateEnabled:
		v.State = StateDisabled
		return nil
	case StateDisabled:
		return nil
	case StateDestroyScheduled:
		return fmt.Errorf("%w: version %d is scheduled for destruction", ErrFailedPrecondition, n)
	case StateDestroyed:
		return fmt.Errorf("%w: version %d", ErrVersionDestroyed, n)
	}
	return invalidState(v)
}

// SetMinDecrypt sets the lowest version that decrypt and verify accept.
// Version n must exist and be at most the primary version.
func (k *Key) SetMinDecrypt(n uint32) error {
	if _, err := k.version(n); err != nil {
		return err
	}
	if n > k.Primary {
		return fmt.Errorf("%w: min decrypt %d would exclude primary version %d", ErrFailedPrecondition, n, k.Primary)
	}
	k.MinDecrypt = n
	return nil
}

// ScheduleDestroy schedules version n for destruction at now+wait. wait
// must lie within limits. The primary version cannot be scheduled, nor a
// version already scheduled or destroyed. A scheduled version is unusable
// until CancelDestroy or MarkDestroyed.
func (k *Key) ScheduleDestroy(n uint32, now time.Time, wait time.Duration, limits DestroyWindow) error {
	if err := requireTime(now, "schedule"); err != nil {
		return err
	}
	if limits.Min < 0 || limits.Max < limits.Min {
		return fmt.Errorf("%w: destroy window %s..%s is empty or negative", ErrInvalidArgument, limits.Min, limits.Max)
	}
	if wait < limits.Min || wait > limits.Max {
		return fmt.Errorf("%w: destroy wait %s is outside the allowed %s..%s", ErrInvalidArgument, wait, limits.Min, limits.Max)
	}
	v, err := k.version(n)
	if err != nil {
		return err
	}
	if n == k.Primary {
		return fmt.Errorf("%w: version %d is the primary version; rotate the key before destroying it", ErrFailedPrecondition, n)
	}
	switch v.State {
	case StateEnabled, StateDisabled:
		v.State = StateDestroyScheduled
		v.DestroyAt = normTime(now.Add(wait))
		return nil
	case StateDestroyScheduled:
		return fmt.Errorf("%w: version %d is already scheduled for destruction", ErrFailedPrecondition, n)
	case StateDestroyed:
		return fmt.Errorf("%w: version %d", ErrVersionDestroyed, n)
	}
	return invalidState(v)
}

// CancelDestroy cancels the scheduled destruction of version n, which
// becomes Disabled; enabling it again is a separate decision (Enable).
func (k *Key) CancelDestroy(n uint32) error {
	v, err := k.version(n)
	if err != nil {
		return err
	}
	switch v.State {
	case StateDestroyScheduled:
		v.State = StateDisabled
		v.DestroyAt = time.Time{}
		return nil
	case StateDestroyed:
		return fmt.Errorf("%w: version %d", ErrVersionDestroyed, n)
	}
	return fmt.Errorf("%w: version %d is %s, not scheduled for destruction", ErrFailedPrecondition, n, v.State)
}

// MarkDestroyed records that version n's HSM object has been destroyed. The
// version must be scheduled for destruction and due (now at or after
// DestroyAt). The version's record, including its HSM id, is kept.
func (k *Key) MarkDestroyed(n uint32, now time.Time) error {
	if err := requireTime(now, "destruction"); err != nil {
		return err
	}
	v, err := k.version(n)
	if err != nil {
		return err
	}
	switch v.State {
	case StateDestroyed:
		return fmt.Errorf("%w: version %d", ErrVersionDestroyed, n)
	case StateDestroyScheduled:
	default:
		return fmt.Errorf("%w: version %d is %s, not scheduled for destruction", ErrFailedPrecondition, n, v.State)
	}
	if now.Before(v.DestroyAt) {
		return fmt.Errorf("%w: version %d is not due for destruction until %s", ErrFailedPrecondition, n, v.DestroyAt.Format(time.RFC3339))
	}
	v.State = StateDestroyed
	v.DestroyedAt = normTime(now)
	return nil
}

// DueForDestruction returns, in ascending order, the versions scheduled for
// destruction whose time has come at now.
func (k *Key) DueForDestruction(now time.Time) []uint32 {
	var due []uint32
	for _, v := range k.Versions {
		if v.State == StateDestroyScheduled && !now.Before(v.DestroyAt) {
			due = append(due, v.Number)
		}
	}
	return due
}

// ForEncrypt returns the version to encrypt with: the primary version of
// an encrypt-aes256-gcm key, which must be enabled.
func (k *Key) ForEncrypt() (Version, error) {
	return k.forPrimary("encrypt", PurposeEncryptAES256GCM)
}

// ForDecrypt returns version n of an encrypt-aes256-gcm key if it may
// decrypt: it must exist (ErrVersionNotFound), not be destroyed
// (ErrVersionDestroyed), be at least MinDecrypt (ErrVersionTooOld) and be
// enabled (ErrVersionDisabled).
func (k *Key) ForDecrypt(n uint32) (Version, error) {
	return k.forVersion("decrypt", n, PurposeEncryptAES256GCM)
}

// ForSign returns the version to sign with: the enabled primary version of
// a sign-* key.
func (k *Key) ForSign() (Version, error) {
	return k.forPrimary("sign", signingPurposes...)
}

// ForVerify returns version n of a sign-* key if it may verify, by the same
// rules as ForDecrypt.
func (k *Key) ForVerify(n uint32) (Version, error) {
	return k.forVersion("verify", n, signingPurposes...)
}

// ForMAC returns the version to compute a MAC with: the enabled primary
// version of a mac-hmac-sha256 key.
func (k *Key) ForMAC() (Version, error) {
	return k.forPrimary("mac", PurposeMACHMACSHA256)
}

// ForVerifyMAC returns version n of a mac-hmac-sha256 key if it may verify
// a MAC, by the same rules as ForDecrypt.
func (k *Key) ForVerifyMAC(n uint32) (Version, error) {
	return k.forVersion("verify mac", n, PurposeMACHMACSHA256)
}

var signingPurposes = []Purpose{PurposeSignECDSAP256, PurposeSignECDSAP384, PurposeSignEd25519, PurposeSignRSAPSS3072}

func (k *Key) checkPurpose(op string, allowed []Purpose) error {
	if !slices.Contains(allowed, k.Purpose) {
		return fmt.Errorf("%w: cannot %s with a %s key", ErrWrongPurpose, op, k.Purpose)
	}
	return nil
}

func (k *Key) forPrimary(op string, allowed ...Purpose) (Version, error) {
	if err := k.checkPurpose(op, allowed); err != nil {
		return Version{}, err
	}
	if len(k.Versions) == 0 {
		return Version{}, fmt.Errorf("%w: key has no versions", ErrFailedPrecondition)
	}
	v, err := k.version(k.Primary)
	if err != nil {
		return Version{}, fmt.Errorf("primary: %w", err)
	}
	switch v.State {
	case StateEnabled:
		return v.clone(), nil
	case StateDestroyed:
		return Version{}, fmt.Errorf("%w: primary version %d", ErrVersionDestroyed, v.Number)
	}
	return Version{}, fmt.Errorf("%w: primary version %d is %s", ErrVersionDisabled, v.Number, v.State)
}

func (k *Key) forVersion(op string, n uint32, allowed ...Purpose) (Version, error) {
	if err := k.checkPurpose(op, allowed); err != nil {
		return Version{}, err
	}
	v, err := k.version(n)
	if err != nil {
		return Version{}, err
	}
	switch {
	case v.State == StateDestroyed:
		return Version{}, fmt.Errorf("%w: version %d", ErrVersionDestroyed, n)
	case n < k.MinDecrypt:
		return Version{}, fmt.Errorf("%w: version %d is below the minimum %d", ErrVersionTooOld, n, k.MinDecrypt)
	case v.State == StateEnabled:
		return v.clone(), nil
	}
	return Version{}, fmt.Errorf("%w: version %d is %s", ErrVersionDisabled, n, v.State)
}

func invalidState(v *Version) error {
	return fmt.Errorf("%w: version %d has invalid state %s", ErrFailedPrecondition, v.Number, v.State)
}

// truncate shortens untrusted input echoed in an error message.
func truncate(s string) string {
	const limit = 64
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}
