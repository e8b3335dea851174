// Command probe is the small image of localkube's end-to-end tests.
//
//	probe serve ADDR      HTTP server answering "hello from HOSTNAME path=PATH"
//	probe get URL         GET URL, print the body, exit 1 on failure
//	probe lookup NAME     resolve NAME with /etc/resolv.conf, print addresses
//	probe connect ADDR    open a TCP connection to HOST:PORT (3 s deadline) and print
//	                      "connect ADDR: RESULT after SECONDS s" (RESULT: connected,
//	                      refused, timeout or the error); exit 0 only when connected
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: probe serve ADDR | get URL | lookup NAME | connect ADDR")
		os.Exit(2)
	}
	arg := os.Args[2]
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
			fmt.Fprintf(w, "hello from %s path=%s\n", host, r.URL.Path)
		})
		log.Printf("probe serving on %s", arg)
		log.Fatal(http.ListenAndServe(arg, nil))
	case "get":
		client := http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "get:", err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		os.Stdout.Write(body)
		if resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, "get: status", resp.Status)
			os.Exit(1)
		}
	case "lookup":
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "lookup:", err)
			os.Exit(1)
		}
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "connect":
		start := time.Now()
		conn, err := net.DialTimeout("tcp", arg, 3*time.Second)
		took := time.Since(start).Seconds()
		result := "connected"
		switch {
		case err == nil:
			conn.Close()
		case errors.Is(err, syscall.ECONNREFUSED):
			result = "refused"
		case os.IsTimeout(err):
			result = "timeout"
		default:
			result = err.Error()
		}
		fmt.Printf("connect %s: %s after %.4f s\n", arg, result, took)
		if err != nil {
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}
