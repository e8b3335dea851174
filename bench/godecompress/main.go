// Command godecompress times the decompression of image layers with the decoders
// containerd 1.6 uses when no unpigz is installed: Go's compress/gzip, and
// klauspost/compress/zstd. bench/cold_start.py runs it for the offline table.
//
// Usage: godecompress -repeat 3 LAYER...   (each file gzip or zstd, told by its magic)
// Prints JSON: {"cpu_s": [...], "wall_s": [...], "bytes": N}, one entry per repeat.
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
)

func cpu() float64 {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		panic(err)
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}

func decompress(data []byte) (int64, error) {
	var r io.Reader
	switch {
	case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
		g, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return 0, err
		}
		r = g
	case bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		z, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			return 0, err
		}
		defer z.Close()
		r = z
	default:
		return 0, fmt.Errorf("neither gzip nor zstd")
	}
	return io.Copy(io.Discard, bufio.NewReader(r))
}

func main() {
	repeat := flag.Int("repeat", 3, "times to decompress all the layers")
	flag.Parse()
	var layers [][]byte
	for _, path := range flag.Args() {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		layers = append(layers, data)
	}
	out := struct {
		CPU   []float64 `json:"cpu_s"`
		Wall  []float64 `json:"wall_s"`
		Bytes int64     `json:"bytes"`
	}{}
	for i := 0; i < *repeat; i++ {
		c, t := cpu(), time.Now()
		out.Bytes = 0
		for j, data := range layers {
			n, err := decompress(data)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", flag.Arg(j), err)
				os.Exit(1)
			}
			out.Bytes += n
		}
		out.CPU = append(out.CPU, cpu()-c)
		out.Wall = append(out.Wall, time.Since(t).Seconds())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
