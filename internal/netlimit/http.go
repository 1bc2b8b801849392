package netlimit

import (
	"context"
	"net"
	"net/http"
)

type connKey struct{}

// ConnContext is an http.Server ConnContext hook that remembers each
// connection, so that EstablishOnRequest can find it.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// EstablishOnRequest wraps h so that a budget-counted connection becomes
// established when its first request reaches the handler: a connection
// still in its TLS handshake or trickling its first request's headers
// stays pending (evictable, timed out). Use it with ConnContext.
func EstablishOnRequest(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			Established(c)
		}
		h.ServeHTTP(w, r)
	})
}
