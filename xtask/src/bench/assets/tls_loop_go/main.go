// Command tlsloop is the Go client of the TLS per-call bench (`cargo xtask bench`, section
// 7): back-to-back MCP `tools/call`s over one HTTP/1.1 keep-alive connection on net/http and
// crypto/tls, standard library only.
//
//	tlsloop -url https://127.0.0.1:PORT/mcp -ca CERT -warmup W -calls N
//
// It makes initialize, notifications/initialized, W calls, then N timed ones, and prints one
// JSON line: {"pid", "requests": every HTTP request it made, "calls": N, "wall_ns", "cpu_ns"},
// cpu_ns being the process's user and system time (every thread) over the timed calls.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"syscall"
	"time"
)

func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

type loop struct {
	http     *http.Client
	url      string
	nextID   int
	requests int
}

func (l *loop) post(msg map[string]any) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, l.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", "2025-06-18")
	resp, err := l.http.Do(req)
	if err != nil {
		return err
	}
	l.requests++
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

func (l *loop) request(method string, params any) error {
	l.nextID++
	return l.post(map[string]any{"jsonrpc": "2.0", "id": l.nextID, "method": method, "params": params})
}

func (l *loop) echo(text string) error {
	return l.request("tools/call", map[string]any{"name": "echo", "arguments": map[string]any{"text": text}})
}

func run() error {
	url := flag.String("url", "", "server URL, https://HOST:PORT/mcp")
	ca := flag.String("ca", "", "CA certificate PEM to trust")
	warmup := flag.Int("warmup", 100, "untimed calls first")
	calls := flag.Int("calls", 1000, "timed calls")
	flag.Parse()
	pem, err := os.ReadFile(*ca)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", *ca)
	}
	// HTTP/1.1 only: one request is one Write, one response one Read or so.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	l := &loop{http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, url: *url}
	if err := l.request("initialize", map[string]any{
		"protocolVersion": "2025-06-18", "capabilities": map[string]any{},
		"clientInfo": map[string]string{"name": "tlsloop", "version": "1"}}); err != nil {
		return err
	}
	if err := l.post(map[string]any{"jsonrpc": "2.0", "method": "notifications/initialized"}); err != nil {
		return err
	}
	for i := 0; i < *warmup; i++ {
		if err := l.echo(fmt.Sprintf("warm %d", i)); err != nil {
			return err
		}
	}
	c0, t0 := cpuNs(), time.Now()
	for i := 0; i < *calls; i++ {
		if err := l.echo(fmt.Sprintf("hello %d", i)); err != nil {
			return err
		}
	}
	wall, c1 := time.Since(t0), cpuNs()
	tr.CloseIdleConnections()
	out, err := json.Marshal(map[string]any{"pid": os.Getpid(), "requests": l.requests,
		"calls": *calls, "wall_ns": wall.Nanoseconds(), "cpu_ns": c1 - c0})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tlsloop:", err)
		os.Exit(1)
	}
}
