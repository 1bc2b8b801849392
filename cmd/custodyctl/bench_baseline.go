package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
)

// hsmBenchName is the raw-PKCS#11 benchmark binary. custodyctl runs it
// rather than importing the hsm package: custodyctl is a client and holds no
// HSM code, and the token PIN stays with the process that logs in.
const hsmBenchName = "custody-hsmbench"

// hsmBenchResult is the one JSON line custody-hsmbench prints (its fields
// must match cmd/custody-hsmbench).
type hsmBenchResult struct {
	Op          string  `json:"op"`
	Concurrency int     `json:"concurrency"`
	Payload     int     `json:"payload_bytes"`
	Seconds     float64 `json:"duration_seconds"`
	Ops         uint64  `json:"ops"`
	Errors      uint64  `json:"errors"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
}

// hsmBenchOp is the raw operation that corresponds to a vault operation: a
// batch decrypt is, inside the HSM, one decrypt per item.
func hsmBenchOp(op string) string {
	if op == "batch-decrypt" || op == "decrypt-coalesced" {
		return "decrypt"
	}
	return op
}

// findHSMBench locates custody-hsmbench: the --hsmbench flag, then the
// directory of this executable (bin/ holds both), then PATH.
func findHSMBench(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), hsmBenchName)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(hsmBenchName)
	if err != nil {
		return "", localError(codes.FailedPrecondition, fmt.Errorf("%s not found next to custodyctl or on PATH (go build ./cmd/%s): %w", hsmBenchName, hsmBenchName, err))
	}
	return p, nil
}

// runHSMBench measures the raw PKCS#11 rate of the bench operation on the
// token for d (at least one second).
func (a *app) runHSMBench(ctx context.Context, o benchOptions, d time.Duration) (*hsmBenchResult, error) {
	bin, err := findHSMBench(o.hsmBench)
	if err != nil {
		return nil, err
	}
	d = max(d.Round(100*time.Millisecond), time.Second)
	args := []string{
		"--uri", o.hsmURI, "--pin-file", o.hsmPINFile, "--op", hsmBenchOp(o.op),
		"--concurrency", strconv.Itoa(o.concurrency), "--duration", d.String(),
		"--payload", strconv.Itoa(o.payload),
	}
	if !o.quiet {
		fmt.Fprintf(a.stderr, "baseline: %s %s for %s at concurrency %d\n", hsmBenchName, hsmBenchOp(o.op), d, o.concurrency)
	}
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return nil, localError(codes.Unavailable, fmt.Errorf("%s: %w: %s", hsmBenchName, err, oneLine(errb.String())))
	}
	var r hsmBenchResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, localError(codes.Internal, fmt.Errorf("%s printed no result: %w", hsmBenchName, err))
	}
	return &r, nil
}

// profileFetch is the set of profiles being fetched from custodyd while the
// bench runs.
type profileFetch struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	files []string
	errs  []error
}

// startProfiles starts fetching the requested profiles from custodyd's
// pprof endpoint; each covers the bench duration (whole seconds, at least 1).
func (a *app) startProfiles(ctx context.Context, o benchOptions) *profileFetch {
	pf := &profileFetch{}
	secs := max(int(math.Round(o.duration.Seconds())), 1)
	for _, p := range []struct{ file, path string }{
		{o.cpuProfile, "/debug/pprof/profile"},
		{o.mutexProfile, "/debug/pprof/mutex"},
	} {
		if p.file == "" {
			continue
		}
		url := fmt.Sprintf("http://%s%s?seconds=%d", o.pprofAddr, p.path, secs)
		pf.wg.Go(func() {
			err := fetchProfile(ctx, url, p.file, time.Duration(secs+30)*time.Second)
			pf.mu.Lock()
			defer pf.mu.Unlock()
			if err != nil {
				pf.errs = append(pf.errs, err)
				return
			}
			pf.files = append(pf.files, p.file)
		})
	}
	return pf
}

// wait returns the profile files written once every fetch has finished.
func (pf *profileFetch) wait() ([]string, error) {
	pf.wg.Wait()
	if err := errors.Join(pf.errs...); err != nil {
		return nil, localError(codes.Unavailable, err)
	}
	return pf.files, nil
}

func fetchProfile(ctx context.Context, url, file string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("profile %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile (is custodyd running with --pprof?): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile %s: %s: %s", url, resp.Status, oneLine(string(msg)))
	}
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", file, err)
	}
	return f.Close()
}
