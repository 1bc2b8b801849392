package server

import (
	"context"
	"encoding/hex"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
)

var purposeToProto = map[keys.Purpose]custodyv1.KeyPurpose{
	keys.PurposeEncryptAES256GCM: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM,
	keys.PurposeMACHMACSHA256:    custodyv1.KeyPurpose_MAC_HMAC_SHA256,
	keys.PurposeSignECDSAP256:    custodyv1.KeyPurpose_SIGN_ECDSA_P256,
	keys.PurposeSignECDSAP384:    custodyv1.KeyPurpose_SIGN_ECDSA_P384,
	keys.PurposeSignEd25519:      custodyv1.KeyPurpose_SIGN_ED25519,
	keys.PurposeSignRSAPSS3072:   custodyv1.KeyPurpose_SIGN_RSA_PSS_3072,
}

var stateToProto = map[keys.State]custodyv1.KeyVersionState{
	keys.StateEnabled:          custodyv1.KeyVersionState_ENABLED,
	keys.StateDisabled:         custodyv1.KeyVersionState_DISABLED,
	keys.StateDestroyScheduled: custodyv1.KeyVersionState_DESTROY_SCHEDULED,
	keys.StateDestroyed:        custodyv1.KeyVersionState_DESTROYED,
}

// PurposeFromProto maps an API purpose to the model's.
func PurposeFromProto(p custodyv1.KeyPurpose) (keys.Purpose, error) {
	for k, v := range purposeToProto {
		if v == p {
			return k, nil
		}
	}
	return keys.PurposeUnspecified, fmt.Errorf("%w: purpose must be one of ENCRYPT_AES256_GCM, MAC_HMAC_SHA256, SIGN_ECDSA_P256, SIGN_ECDSA_P384, SIGN_ED25519, SIGN_RSA_PSS_3072", ErrInvalidArgument)
}

func ts(t interface{ IsZero() bool }) bool { return !t.IsZero() }

// KeyToProto renders a key's metadata. It never includes key material: the
// model holds none.
func KeyToProto(k *keys.Key) *custodyv1.Key {
	out := &custodyv1.Key{
		Name: k.Name, Purpose: purposeToProto[k.Purpose], Description: k.Description,
		PrimaryVersion: k.Primary, MinDecryptionVersion: k.MinDecrypt, CreateTime: timestamppb.New(k.Created),
	}
	for _, v := range k.Versions {
		pv := &custodyv1.KeyVersion{
			Version: v.Number, State: stateToProto[v.State], CreateTime: timestamppb.New(v.Created),
			HsmKeyId: hex.EncodeToString(v.HSMID),
			Attributes: &custodyv1.HsmAttributes{
				NeverExtractable: v.Attrs.NeverExtractable, AlwaysSensitive: v.Attrs.AlwaysSensitive,
				Local: v.Attrs.Local, Extractable: v.Attrs.Extractable, Sensitive: v.Attrs.Sensitive,
				Token: v.Attrs.Token, Private: v.Attrs.Private, Modifiable: v.Attrs.Modifiable,
			},
		}
		switch {
		case ts(v.DestroyedAt):
			pv.DestroyTime = timestamppb.New(v.DestroyedAt)
		case ts(v.DestroyAt):
			pv.DestroyTime = timestamppb.New(v.DestroyAt)
		}
		out.Versions = append(out.Versions, pv)
	}
	return out
}

// CreateKey creates a key whose first version is generated in the HSM.
func (s *Server) CreateKey(ctx context.Context, req *custodyv1.CreateKeyRequest) (*custodyv1.Key, error) {
	callFrom(ctx).key = req.GetName()
	if err := s.authorizeAdmin(ctx, policy.OpKeyAdmin); err != nil {
		return nil, err
	}
	if s.governed.Load() {
		return nil, fmt.Errorf("%w: key changes are made by governance proposals (custodyctl proposal create create-key)", ErrRequiresProposal)
	}
	p, err := PurposeFromProto(req.GetPurpose())
	if err != nil {
		return nil, err
	}
	k, err := s.keys.Create(ctx, req.GetName(), p, req.GetDescription())
	if err != nil {
		return nil, err
	}
	callFrom(ctx).version = k.Primary
	return KeyToProto(k), nil
}

// GetKey returns a key's metadata.
func (s *Server) GetKey(ctx context.Context, req *custodyv1.GetKeyRequest) (*custodyv1.Key, error) {
	callFrom(ctx).key = req.GetName()
	if err := s.authorizeAdmin(ctx, policy.OpKeyRead); err != nil {
		return nil, err
	}
	e, err := s.keys.Get(req.GetName())
	if err != nil {
		return nil, err
	}
	return KeyToProto(e.Key), nil
}

// ListKeys pages through keys by name. The page token is the last name of
// the previous page.
func (s *Server) ListKeys(ctx context.Context, req *custodyv1.ListKeysRequest) (*custodyv1.ListKeysResponse, error) {
	if err := s.authorizeAdmin(ctx, policy.OpKeyRead); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size < 0 {
		return nil, fmt.Errorf("%w: page_size must not be negative", ErrInvalidArgument)
	}
	if size == 0 || size > s.limits.MaxPageSize {
		size = s.limits.MaxPageSize
	}
	after := req.GetPageToken()
	if after != "" {
		if err := keys.ValidateName(after); err != nil {
			return nil, fmt.Errorf("%w: bad page_token", ErrInvalidArgument)
		}
	}
	ks, more := s.keys.List(after, size)
	out := &custodyv1.ListKeysResponse{}
	for _, k := range ks {
		out.Keys = append(out.Keys, KeyToProto(k))
	}
	if more && len(ks) > 0 {
		out.NextPageToken = ks[len(ks)-1].Name
	}
	return out, nil
}

func (s *Server) keyAdmin(ctx context.Context, name string, version uint32, fn func() (*keys.Key, error)) (*custodyv1.Key, error) {
	c := callFrom(ctx)
	c.key, c.version = name, version
	if err := s.authorizeAdmin(ctx, policy.OpKeyAdmin); err != nil {
		return nil, err
	}
	if s.governed.Load() {
		return nil, fmt.Errorf("%w: key changes are made by governance proposals", ErrRequiresProposal)
	}
	if err := requireName(name); err != nil {
		return nil, err
	}
	k, err := fn()
	if err != nil {
		return nil, err
	}
	return KeyToProto(k), nil
}

// RotateKey adds a version generated in the HSM and makes it primary.
func (s *Server) RotateKey(ctx context.Context, req *custodyv1.RotateKeyRequest) (*custodyv1.Key, error) {
	return s.keyAdmin(ctx, req.GetName(), 0, func() (*keys.Key, error) {
		k, err := s.keys.Rotate(ctx, req.GetName())
		if err == nil {
			callFrom(ctx).version = k.Primary
		}
		return k, err
	})
}

func requireVersion(v uint32) error {
	if v == 0 {
		return fmt.Errorf("%w: version is required", ErrInvalidArgument)
	}
	return nil
}

// EnableKeyVersion re-enables a disabled version.
func (s *Server) EnableKeyVersion(ctx context.Context, req *custodyv1.KeyVersionRequest) (*custodyv1.Key, error) {
	return s.keyAdmin(ctx, req.GetName(), req.GetVersion(), func() (*keys.Key, error) {
		if err := requireVersion(req.GetVersion()); err != nil {
			return nil, err
		}
		return s.keys.Enable(ctx, req.GetName(), req.GetVersion())
	})
}

// DisableKeyVersion disables a version other than the primary.
func (s *Server) DisableKeyVersion(ctx context.Context, req *custodyv1.KeyVersionRequest) (*custodyv1.Key, error) {
	return s.keyAdmin(ctx, req.GetName(), req.GetVersion(), func() (*keys.Key, error) {
		if err := requireVersion(req.GetVersion()); err != nil {
			return nil, err
		}
		return s.keys.Disable(ctx, req.GetName(), req.GetVersion())
	})
}

// SetMinDecryptionVersion refuses decryption below a version.
func (s *Server) SetMinDecryptionVersion(ctx context.Context, req *custodyv1.SetMinDecryptionVersionRequest) (*custodyv1.Key, error) {
	return s.keyAdmin(ctx, req.GetName(), req.GetVersion(), func() (*keys.Key, error) {
		if err := requireVersion(req.GetVersion()); err != nil {
			return nil, err
		}
		return s.keys.SetMinDecrypt(ctx, req.GetName(), req.GetVersion())
	})
}

// ScheduleKeyDestruction schedules a version's HSM object for deletion after
// a waiting period.
func (s *Server) ScheduleKeyDestruction(ctx context.Context, req *custodyv1.ScheduleKeyDestructionRequest) (*custodyv1.Key, error) {
	return s.keyAdmin(ctx, req.GetName(), req.GetVersion(), func() (*keys.Key, error) {
		if err := requireVersion(req.GetVersion()); err != nil {
			return nil, err
		}
		wait := s.limits.DestroyWaitDefault
		if d := req.GetWaitingPeriod(); d != nil {
			if err := d.CheckValid(); err != nil {
				return nil, fmt.Errorf("%w: waiting_period: %v", ErrInvalidArgument, err)
			}
			if d.AsDuration() != 0 {
				wait = d.AsDuration()
			}
		}
		return s.keys.ScheduleDestroy(ctx, req.GetName(), req.GetVersion(), wait)
	})
}

// CancelKeyDestruction cancels a scheduled destruction.
func (s *Server) CancelKeyDestruction(ctx context.Context, req *custodyv1.KeyVersionRequest) (*custodyv1.Key, error) {
	return s.keyAdmin(ctx, req.GetName(), req.GetVersion(), func() (*keys.Key, error) {
		if err := requireVersion(req.GetVersion()); err != nil {
			return nil, err
		}
		return s.keys.CancelDestroy(ctx, req.GetName(), req.GetVersion())
	})
}
