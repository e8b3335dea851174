// Command arch prints the architecture it was built for and the machine the
// kernel reports to it: under qemu-user (binfmt_misc) an arm64 build prints
// "GOARCH=arm64 machine=aarch64" on an x86-64 node. localkube's tests run it
// as a pod from single-platform arm64 and armv7 images.
package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
)

// goarmValue is set with -ldflags -X for GOARCH=arm builds (the runtime does not export GOARM).
var goarmValue = "unknown"

func main() {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		fmt.Fprintln(os.Stderr, "uname:", err)
		os.Exit(1)
	}
	machine := make([]byte, 0, len(u.Machine))
	for _, c := range u.Machine { // int8 on some platforms, uint8 on others
		if c == 0 {
			break
		}
		machine = append(machine, byte(c))
	}
	goarm := ""
	if runtime.GOARCH == "arm" {
		goarm = " GOARM=" + goarmValue
	}
	fmt.Printf("GOARCH=%s%s machine=%s\n", runtime.GOARCH, goarm, machine)
}
