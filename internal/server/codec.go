package server

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// tolerantCodec is gRPC's protobuf codec, except that a request that does
// not decode (malformed protobuf, invalid UTF-8 in a string field) is not
// refused inside gRPC, where it would be answered INTERNAL before any
// interceptor ran and so never reach the audit log. Instead the message is
// left empty and the decode error is parked; the interceptor picks it up,
// audits the request and answers INVALID_ARGUMENT.
type tolerantCodec struct{}

var protoCodec = encoding.GetCodecV2("proto")

// undecodable parks decode errors by message pointer until the
// interceptor (or a stream's RecvMsg) collects them.
var undecodable sync.Map

func (tolerantCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (tolerantCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := protoCodec.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	proto.Reset(m)
	undecodable.Store(v, fmt.Errorf("%w: request does not decode as %s: %v", ErrInvalidArgument, m.ProtoReflect().Descriptor().FullName(), err))
	return nil
}

func (tolerantCodec) Name() string { return protoCodec.Name() }

// decodeError returns, and forgets, the decode error parked for msg.
func decodeError(msg any) error {
	if msg == nil {
		return nil
	}
	if err, ok := undecodable.LoadAndDelete(msg); ok {
		return err.(error)
	}
	return nil
}

// Codec is the codec every custody gRPC server must force (ServerOptions
// does; a daemon that builds its gRPC server before the Server exists uses
// this), so that a request that does not decode still reaches the
// interceptors.
func Codec() encoding.CodecV2 { return tolerantCodec{} }

// DecodeError returns, and forgets, the decode error parked for a request
// that did not decode, for a handler that does not run behind the
// interceptors (the seal service, health): it must answer it.
func DecodeError(msg any) error { return decodeError(msg) }
