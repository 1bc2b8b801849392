package server

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/custodyhq/custody/internal/admission"
)

// admit takes an admission slot for the request c describes, or returns
// why not. The slot is released by finish once the request's audit record
// is durable, so the audit write counts as part of the request.
func (s *Server) admit(c *call) error {
	if s.admission == nil {
		return nil
	}
	release, err := s.admission.Acquire(c.identity)
	if err != nil {
		var r *admission.Refusal
		if errors.As(err, &r) {
			return &admissionError{r: r}
		}
		return err
	}
	c.release = release
	return nil
}

// admissionError is a refused admission. One identity over its in-flight
// cap is that caller's own limit: RESOURCE_EXHAUSTED, like a budget. Memory
// pressure is the server's state, not the caller's doing, and another
// replica may have room: UNAVAILABLE. Both carry a RetryInfo detail.
type admissionError struct{ r *admission.Refusal }

func (e *admissionError) Error() string { return "admission: " + e.r.Error() }
func (e *admissionError) Unwrap() error { return e.r }

// GRPCStatus lets status.FromError (and so toStatus) see the code and the
// retry information.
func (e *admissionError) GRPCStatus() *status.Status {
	code := codes.ResourceExhausted
	if errors.Is(e.r, admission.ErrMemory) {
		code = codes.Unavailable
	}
	st := status.New(code, e.Error())
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.r.RetryAfter)}); err == nil {
		return d
	}
	return st
}
