package relay

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/client"
)

// Handler serves the relay's small HTTP API:
//
//	POST /conversations/{id}/messages  {"sender": "...", "text": "..."} -> {"seq": N}
//	GET  /conversations/{id}/messages?after=N&limit=M -> [{"seq", "sender", "text", "time"}]
//
// It has no authentication of its own: an example, to put behind whatever
// authenticates the relay's users.
func (r *Relay) Handler(log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /conversations/{id}/messages", func(w http.ResponseWriter, req *http.Request) {
		var in struct{ Sender, Text string }
		dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 2*MaxText))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			http.Error(w, "body must be JSON {\"sender\": ..., \"text\": ...}", http.StatusBadRequest)
			return
		}
		seq, err := r.Post(req.Context(), req.PathValue("id"), in.Sender, in.Text)
		if err != nil {
			writeErr(w, log, err)
			return
		}
		writeJSON(w, map[string]uint64{"seq": seq})
	})
	mux.HandleFunc("GET /conversations/{id}/messages", func(w http.ResponseWriter, req *http.Request) {
		after, _ := strconv.ParseUint(req.URL.Query().Get("after"), 10, 64)
		limit, _ := strconv.Atoi(req.URL.Query().Get("limit"))
		msgs, err := r.Read(req.Context(), req.PathValue("id"), after, limit)
		if err != nil {
			writeErr(w, log, err)
			return
		}
		writeJSON(w, msgs)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeErr maps errors to HTTP statuses; messages carry no message text.
func writeErr(w http.ResponseWriter, log *slog.Logger, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, client.ErrBudgetExhausted):
		code = http.StatusTooManyRequests
	case status.Code(err) == codes.PermissionDenied:
		code = http.StatusForbidden
	case errors.Is(err, client.ErrMessageAuth):
		code = http.StatusUnprocessableEntity
	case status.Code(err) == codes.Unavailable:
		code = http.StatusServiceUnavailable
	}
	if code == http.StatusInternalServerError {
		log.Error("relay request failed", "err", err)
	}
	http.Error(w, err.Error(), code)
}
